"""Entry point kept for ``python -m helpers.assets``; the registry lives in ``helpers.course.assets``."""
from .course.assets import main

if __name__ == "__main__":
    raise SystemExit(main())
