"""Python side of celeriac's interop tests.

``celeriac_interop.tasks`` holds a stock Celery 5.7 app (``app``) configured
entirely from ``CELERIAC_INTEROP_*`` environment variables, and the task set
shared with the Rust test worker.  See ``tests/python/README.md``.

This package deliberately imports nothing at import time; use
``celery -A celeriac_interop.tasks`` or ``from celeriac_interop.tasks import app``.
"""
