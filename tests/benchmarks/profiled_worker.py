"""Any benchmark's worker entrypoint with cProfile in its pool process (diagnosis only).

    PYTHONPATH=libs:. python -m tests.benchmarks.profiled_worker --profile=OUT.prof \
        --profile-module=MODULE [WORKER ARGS]

Imports MODULE (e.g. `services.notifications.worker`, `tests.benchmarks.bare_worker`) and runs its
`main()`; each forked pool process profiles itself from its start and writes OUT.prof.<pid> when it
exits (a warm shutdown). Read with `python -m pstats`.
"""

from __future__ import annotations

import cProfile
import importlib
import os
import sys
from typing import Any

from celery import signals


def _option(name: str) -> str:
    """Take `--name=value` out of the worker's arguments."""
    arg = next(a for a in sys.argv if a.startswith(f"--{name}="))
    sys.argv.remove(arg)
    return arg.split("=", 1)[1]


_out = _option("profile")
_module = importlib.import_module(_option("profile-module"))
_profiler = cProfile.Profile()


@signals.worker_process_init.connect(weak=False)
def _start(**_: Any) -> None:
    _profiler.enable()


@signals.worker_process_shutdown.connect(weak=False)
def _dump(**_: Any) -> None:
    _profiler.disable()
    _profiler.dump_stats(f"{_out}.{os.getpid()}")


if __name__ == "__main__":
    _module.main()
