"""Entrypoint of the `sync` worker image: `python -m services.sync.worker` or `celery -A
services.sync.worker worker`."""

import sys

from ragcore.tasks.contracts import Queue
from ragcore.worker.runtime import create_worker_app, run_worker
from services.sync import tasks

app = create_worker_app(Queue.SYNC)
tasks.register(app)


def main() -> None:
    run_worker(app, Queue.SYNC, sys.argv[1:])


if __name__ == "__main__":
    main()
