"""Entrypoint of the `user` worker image: `python -m services.user.worker` or `celery -A
services.user.worker worker`."""

import sys

from ragcore.tasks.contracts import Queue
from ragcore.worker.runtime import create_worker_app, run_worker
from services.user import tasks

app = create_worker_app(Queue.USER)
tasks.register(app)


def main() -> None:
    run_worker(app, Queue.USER, sys.argv[1:])


if __name__ == "__main__":
    main()
