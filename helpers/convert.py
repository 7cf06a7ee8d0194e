"""Entry point kept for ``python -m helpers.convert``; the converter lives in ``helpers.caffe``."""
from .caffe.convert import main

if __name__ == "__main__":
    raise SystemExit(main())
