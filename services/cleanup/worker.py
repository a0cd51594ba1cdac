"""Entrypoint of the `cleanup` worker image: `python -m services.cleanup.worker` or `celery -A
services.cleanup.worker worker`."""

import sys

from ragcore.tasks.contracts import Queue
from ragcore.worker.runtime import create_worker_app, run_worker
from services.cleanup import tasks

app = create_worker_app(Queue.CLEANUP)
tasks.register(app)


def main() -> None:
    run_worker(app, Queue.CLEANUP, sys.argv[1:])


if __name__ == "__main__":
    main()
