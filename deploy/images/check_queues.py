"""Run inside the API image: each running worker image consumes its own queue, and only it.

deploy/images/build-and-check starts the four worker images against a private Redis, then runs
this with the API image's Python (`/opt/app/bin/python`, which has ragcore and Celery), the broker
in RAGCORE_REDIS_URL. It proves, from outside the workers, that:
  - each worker consumes exactly one queue, and together they consume all four;
  - each worker registers only its own queue's tasks (its image holds no other service);
  - a canary sent by name to each queue is run by the worker of that queue, and no other.
"""

from __future__ import annotations

import sys
import time

from ragcore.tasks.app import create_app
from ragcore.tasks.contracts import BY_NAME, CANARIES, Queue


def main() -> int:
    app = create_app("images-check")
    inspect = app.control.inspect(timeout=3)
    deadline = time.monotonic() + 180
    consuming: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        consuming = {
            node: sorted(q["name"] for q in queues)
            for node, queues in (inspect.active_queues() or {}).items()
        }
        if len(consuming) >= len(Queue):
            break
        time.sleep(1)
    print(f"workers consuming: {consuming}")
    problems = []
    node_of = {queues[0]: node for node, queues in consuming.items() if len(queues) == 1}
    if sorted(node_of) != sorted(q.value for q in Queue) or len(consuming) != len(Queue):
        problems.append(f"expected one worker per queue, each on its own queue: {consuming}")

    registered = inspect.registered() or {}
    for queue, node in node_of.items():
        foreign = [
            name
            for name in registered.get(node, [])
            if name in BY_NAME and BY_NAME[name].queue.value != queue
        ]
        own = [
            name
            for name in registered.get(node, [])
            if name in BY_NAME and BY_NAME[name].queue.value == queue
        ]
        print(f"{node}: registers {len(own)} task(s) of {queue}, {len(foreign)} of other queues")
        if foreign or not own:
            problems.append(f"{node} registers tasks of other queues {foreign} or none of its own")

    sent = {q: app.send_task(CANARIES[q].name, kwargs={"echo": f"image-{q.value}"}) for q in Queue}
    for queue, result in sent.items():
        try:
            answer = result.get(timeout=60)
        except Exception as exc:  # - reported, and the check fails
            problems.append(
                f"canary of {queue.value} did not complete: {type(exc).__name__}: {exc}"
            )
            continue
        ran_on = result.worker  # result_extended: the node that ran it
        print(f"canary {CANARIES[queue].name}: ran on {ran_on}, answered queue={answer['queue']}")
        if answer["queue"] != queue.value or ran_on != node_of.get(queue.value):
            problems.append(
                f"canary of {queue.value} ran on {ran_on} ({answer}), "
                f"not on {node_of.get(queue.value)}"
            )

    for problem in problems:
        print(f"FAIL {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
