"""The outbox relay in a process of its own (benchmark only): publishes every `--interval` s until SIGTERM.

    PYTHONPATH=libs:. python -m tests.benchmarks.relay_process --interval 0.05

Nothing can wake it across processes, so it polls (one indexed SELECT per interval).
"""

from __future__ import annotations

import argparse
import signal
import threading

from ragcore.celery_app import create_app
from ragcore.outbox import Relay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    app = create_app("relay")
    relay = Relay(app, interval=args.interval)
    relay.start()
    stop.wait()
    relay.stop()
    app.close()


if __name__ == "__main__":
    main()
