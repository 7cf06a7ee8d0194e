"""``python -m helpers.course``: run the course's notebooks headless (see ``helpers.course.runner``)."""
from .runner import main

raise SystemExit(main())
