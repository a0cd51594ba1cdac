"""Locust's users for tests.benchmarks.load: closed-loop query clients that note every answer's id.

Run by tests.benchmarks.load (`locust -f` in its own process, because locust patches the standard
library with gevent); it imports nothing of ragcore for the same reason. Settings come from the
environment: LOAD_QUERY_KEY, LOAD_RUN (a prefix for user ids) and LOAD_RESULTS (the JSON file that
receives locust's totals and the `message_id` of every successful query when the run stops).
"""

from __future__ import annotations

import itertools
import json
import os
import random
from typing import Any

from locust import FastHttpUser, constant, events, task
from locust.env import Environment

#: Words and aspects of the Ingest stand-in's corpus (ragcore_dev.standins.ingest), so queries are
#: the kind the corpus answers; random triples make nearly every query a cache miss.
WORDS = "amber anchor aurora basalt beacon bronze canyon cedar cobalt coral delta ember".split()
ASPECTS = "history design costs safety maintenance regulation training outlook".split()
#: Queries per user id: below the free tier's 100 a day, so no client meets its daily limit (429).
QUERIES_PER_USER_ID = 50

_clients = itertools.count()
_message_ids: list[str] = []


class QueryClient(FastHttpUser):
    # Closed loop: each client sends its next query as soon as the previous one is answered.
    wait_time = constant(0)

    def on_start(self) -> None:
        self.number = next(_clients)
        self.sent = 0
        self.headers = {"X-API-Key": os.environ["LOAD_QUERY_KEY"]}

    @task
    def query(self) -> None:
        user_id = f"{os.environ['LOAD_RUN']}-{self.number}-{self.sent // QUERIES_PER_USER_ID}"
        self.sent += 1
        words = random.sample(WORDS, 2)
        text = f"{words[0]} {words[1]} {random.choice(ASPECTS)}"
        body = {"user_id": user_id, "query": text, "top_k": 3}
        with self.client.post(
            "/api/v1/query/", json=body, headers=self.headers, name="query", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")
                return
            answer: dict[str, Any] = response.json()
            if not answer.get("sources"):
                response.failure("an answer without sources")
                return
            _message_ids.append(answer["message_id"])
            response.success()


@events.test_stop.add_listener
def write_results(environment: Environment, **_: object) -> None:
    # After the clients stopped, unlike `--csv`, whose last write may miss the final requests.
    total = environment.stats.total
    stats = {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "rps": total.total_rps,
        "p50_ms": total.get_response_time_percentile(0.5),
        "p99_ms": total.get_response_time_percentile(0.99),
        "errors": [f"{e.occurrences} × {e.error}" for e in environment.stats.errors.values()],
    }
    with open(os.environ["LOAD_RESULTS"], "w") as out:
        json.dump({"stats": stats, "message_ids": _message_ids}, out)
