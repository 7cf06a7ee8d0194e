"""The course's machinery: where things live, what was measured, whether this machine is ready,
the downloads, and the runner. Nothing here is the lesson; every notebook leans on it.

- ``paths``: where weights, data and build outputs live (``COURSE_HOME``, Colab's Drive), which mode;
- ``fileio``: atomic writes (temporary file, then rename);
- ``results``: ``record(key, value)`` into ``build/results.json``;
- ``environment``: the checks of notebook 00 and ``start()`` at the top of every notebook;
- ``assets``: the registry of downloadable assets (cache-first, resumable, checksummed);
- ``runner``: ``python -m helpers.course``, the whole course headless.

Importing this package loads nothing heavy (no TensorFlow, no Keras).
"""
