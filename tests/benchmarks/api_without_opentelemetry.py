"""The API exactly as `python -m api.main` runs it, in a process that can import no OpenTelemetry
package but `opentelemetry-api`: the build without our tracing requirements, as a benchmark baseline
(tests.benchmarks.tracing_overhead).

    PYTHONPATH=libs:. python -m tests.benchmarks.api_without_opentelemetry

`opentelemetry-api` stays because FastAPI itself requires it (its `fastapi.telemetry` imports it
unconditionally): no build of the API is without it. Everything our requirements add (the SDK, the
exporter, the instrumentations, semantic conventions) raises ModuleNotFoundError on import, which
is what a library sees when a package is not installed; redis-py, which imports the metrics SDK
whenever it can, then loads none of it, as in a build without it.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from importlib import metadata
from importlib.machinery import ModuleSpec
from pathlib import PurePosixPath
from types import ModuleType

PACKAGE = "opentelemetry"
#: The one OpenTelemetry distribution a build of the API always has.
KEPT = "opentelemetry-api"


def kept_modules() -> frozenset[str]:
    """The modules `KEPT` installs, and the namespace packages above them."""
    names: set[str] = set()
    for file in metadata.files(KEPT) or ():
        path = PurePosixPath(str(file))
        if path.suffix != ".py" or path.parts[0] != PACKAGE:
            continue
        parts = path.with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.update(".".join(parts[:n]) for n in range(1, len(parts) + 1))
    return frozenset(names)


class LeftOut(importlib.abc.MetaPathFinder):
    """Refuses every OpenTelemetry module `KEPT` does not install."""

    def __init__(self) -> None:
        self.kept = kept_modules()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.partition(".")[0] == PACKAGE and fullname not in self.kept:
            raise ModuleNotFoundError(f"No module named {fullname!r} in this build", name=fullname)
        return None  # the usual finders import it


def leave_out() -> list[str]:
    """Install the finder first; the left-out modules already loaded (none, or the baseline would
    not be one)."""
    finder = LeftOut()
    sys.meta_path.insert(0, finder)
    return [m for m in sys.modules if m.partition(".")[0] == PACKAGE and m not in finder.kept]


if __name__ == "__main__":
    loaded = leave_out()
    assert not loaded, f"loaded before the API started: {loaded}"
    from api.main import main  # only now: what it imports finds the packages missing

    main()
