"""The classic in-process `celery_worker` (a thread) for the tests here: pytest-celery 1.x's own
fixture of that name, which shadows it, runs a worker container."""

from celery.contrib.pytest import celery_worker  # noqa: F401
