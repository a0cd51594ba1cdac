"""Tasks of the `sync` queue."""

from celery import Celery


def register(app: Celery) -> None:
    """Register this queue's tasks on `app`."""
