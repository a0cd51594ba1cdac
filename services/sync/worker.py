"""Entrypoint of the `sync` worker image: `python -m services.sync.worker` or `celery -A services.sync.worker worker`."""

import sys

from ragcore.contracts import Queue
from ragcore.worker import create_worker_app, run_worker
from services.sync import tasks

app = create_worker_app(Queue.SYNC)
tasks.register(app)


def main() -> None:
    run_worker(app, Queue.SYNC, sys.argv[1:])


if __name__ == "__main__":
    main()
