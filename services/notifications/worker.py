"""Entrypoint of the `notifications` worker image: `python -m services.notifications.worker` or
`celery -A services.notifications.worker worker`."""

import sys

from ragcore.tasks.contracts import Queue
from ragcore.worker.runtime import create_worker_app, run_worker
from services.notifications import tasks

app = create_worker_app(Queue.NOTIFICATIONS)
tasks.register(app)


def main() -> None:
    run_worker(app, Queue.NOTIFICATIONS, sys.argv[1:])


if __name__ == "__main__":
    main()
