"""Benchmark: query latency through the real API built without OpenTelemetry, with tracing off, and
with it on; same run, same data.

    PYTHONPATH=libs:. python -m tests.benchmarks.tracing_overhead [--rounds 9 --block-size 40]

Three API processes share PostgreSQL, a private Redis and the Qdrant stand-in (a separate process);
Beat's relay publishes the reports in the background, as deployed:

- `absent`, the baseline: `api.main` in a process that can import no OpenTelemetry package but
  `opentelemetry-api`, which FastAPI itself requires: the build without our tracing requirements
  (`tests.benchmarks.api_without_opentelemetry`);
- `off`: `python -m api.main` as the image runs it, no OTEL_* set (our code imports no
  OpenTelemetry module; redis-py imports its metrics SDK because it is installed);
- `on`: the same, exporting every span with OTLP/HTTP to a collector stand-in (a separate process),
  through the batch span processor, sampling everything.

Every query is new (a cache miss: embed, search, generate, one transaction). Blocks rotate over the
three APIs, the order shifting per round, so drift in the machine's load falls on all; the first
round warms them up and is not kept. Printed: each mode's p50, p95 and mean, its p50 over the
baseline's and the median of its per-round p50 ratios; how many OpenTelemetry modules each kind of
process has loaded once the app is built.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

from ragcore.clients.vectorstore import VectorStore
from ragcore.settings import get_settings
from ragcore_dev.processes import Deployable, deployable_env, free_port, wait_http_ok
from ragcore_dev.standins.ingest import Corpus, Document
from tests.benchmarks.common import load_corpus, percentile
from tests.support.stack import QUERY_KEY, Stack, running_stack

MODES = ("absent", "off", "on")
BASELINE = "absent"
#: The module each mode's API runs.
MODULES = {
    "absent": "tests.benchmarks.api_without_opentelemetry",
    "off": "api.main",
    "on": "api.main",
}
#: Run in a child process with a mode's environment: the OpenTelemetry modules loaded once the app
#: is built (what its start-up imports, the Redis client's included).
LOADED = """
import sys
from tests.benchmarks import api_without_opentelemetry
if sys.argv[1] == "absent":
    api_without_opentelemetry.leave_out()
from api.main import create_app
create_app()
print(sum(1 for m in sys.modules if m.partition(".")[0] == "opentelemetry"))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=5)
    # A multiple of 3: each mode in each position of a round as often.
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--block-size", type=int, default=40)
    args = parser.parse_args()

    qdrant_port, collector_port = free_port(), free_port()
    qdrant = Deployable(
        "ragcore_dev.standins.qdrant",
        deployable_env(),
        ("--port", str(qdrant_port), "--data", tempfile.mkdtemp(prefix="bench-qdrant-")),
    )
    collector = Deployable(
        "ragcore_dev.standins.collector", deployable_env(), ("--port", str(collector_port))
    )
    qdrant.start()
    collector.start()
    try:
        wait_http_ok(f"http://127.0.0.1:{qdrant_port}/healthz", 60, qdrant)
        wait_http_ok(f"http://127.0.0.1:{collector_port}/_control/spans", 60, collector)
        unlimited = '{"free": 1000000000, "pro": 1000000000, "enterprise": 1000000000}'
        with running_stack(
            qdrant_url=f"http://127.0.0.1:{qdrant_port}",
            qdrant_collection="bench",
            log_level="WARNING",
            tier_daily_limits=unlimited,
            beat_schedule="{}",
        ) as stack:
            run(stack, args, f"http://127.0.0.1:{collector_port}")
    finally:
        collector.stop()
        qdrant.stop()


def start_api(stack: Stack, mode: str, **otel: str) -> str:
    port = free_port()
    api = Deployable(MODULES[mode], {**stack.env(api_port=str(port)), **otel})
    stack.deployables.append(api.start())
    url = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{url}/healthz", 60, api)
    return url


class Bench:
    def __init__(self, apis: dict[str, httpx.Client], docs: list[Document], chunks: int) -> None:
        self.apis, self.docs, self.chunks = apis, docs, chunks
        self.count = 0

    def ask(self, mode: str) -> float:
        self.count += 1
        doc = self.docs[self.count % len(self.docs)]
        # The trailing word makes every question new (a cache miss) without moving it off its chunk.
        body = {
            "user_id": f"user-{self.count % 50}",
            "query": f"{doc.query(self.count % self.chunks)} q{self.count}",
        }
        started = time.perf_counter()
        response = self.apis[mode].post("/api/v1/query/", json=body)
        elapsed = (time.perf_counter() - started) * 1000
        assert response.status_code == 200, response.text
        return elapsed

    def rounds(self, rounds: int, block: int) -> dict[str, list[list[float]]]:
        blocks: dict[str, list[list[float]]] = {mode: [] for mode in MODES}
        for r in range(-1, rounds):
            for i in range(len(MODES)):
                mode = MODES[(r + i) % len(MODES)]
                timings = [self.ask(mode) for _ in range(block)]
                if r >= 0:
                    blocks[mode].append(timings)
        return blocks


def run(stack: Stack, args: argparse.Namespace, collector: str) -> None:
    settings = get_settings()
    corpus = Corpus(args.documents, args.chunks, dim=settings.qdrant.vector_size)
    store = VectorStore(settings)
    print(
        f"corpus: {load_corpus(store, corpus)} chunks in Qdrant; "
        f"{args.rounds} rounds of {args.block_size} queries per mode"
    )
    store.close()
    stack.start("services.beat.main")  # the report relay, as deployed
    urls = {
        "absent": start_api(stack, "absent"),
        "off": start_api(stack, "off"),
        "on": start_api(
            stack,
            "on",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=collector,
            OTEL_SERVICE_NAME="ragcore-api-bench",
        ),
    }
    for mode in ("absent", "off"):
        loaded = subprocess.run(
            [sys.executable, "-c", LOADED, mode],
            env=stack.env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        print(f"  {mode}: {loaded} OpenTelemetry modules loaded once the app is built")
    apis = {
        mode: httpx.Client(base_url=url, headers={"X-API-Key": QUERY_KEY}, timeout=30)
        for mode, url in urls.items()
    }
    blocks = Bench(apis, list(corpus.documents().values()), args.chunks).rounds(
        args.rounds, args.block_size
    )
    spans = len(httpx.get(f"{collector}/_control/spans", timeout=30).json()["spans"])
    base = [t for b in blocks[BASELINE] for t in b]
    for mode, mode_blocks in blocks.items():
        s = [t for b in mode_blocks for t in b]
        paired = statistics.median(
            percentile(b, 0.5) / percentile(o, 0.5)
            for b, o in zip(mode_blocks, blocks[BASELINE], strict=True)
        )
        p50 = percentile(s, 0.5)
        print(
            f"  tracing {mode:>6}: p50 {p50:6.2f} ms  p95 {percentile(s, 0.95):6.2f} ms  "
            f"mean {statistics.fmean(s):6.2f} ms  "
            f"p50/{BASELINE} {p50 / percentile(base, 0.5):.3f}  "
            f"median per-round p50 ratio {paired:.3f}"
        )
    print(f"spans exported by the traced API: {spans}")


if __name__ == "__main__":
    main()
