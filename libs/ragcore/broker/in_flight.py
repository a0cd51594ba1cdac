"""In-flight notes: which tasks each worker of a queue holds (running or reserved ahead), and the
one list per queue that KEDA reads beside the waiting list."""

from __future__ import annotations

import json

import redis

#: The tasks each worker of a queue holds, by worker, as JSON lists.
HELD_KEY = "ragcore:held:{queue}"
#: One element per task the workers of a queue hold: the list KEDA reads beside the waiting list.
IN_FLIGHT_KEY = "ragcore:inflight:{queue}"

# KEDA's redis scaler reads a list's length only, so the held tasks of all workers of a queue are
# kept as one list, rebuilt atomically whenever one worker's share changes.
_NOTE_IN_FLIGHT = """
if ARGV[2] == '[]' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('DEL', KEYS[2])
local held = redis.call('HVALS', KEYS[1])
for _, ids in ipairs(held) do redis.call('RPUSH', KEYS[2], unpack(cjson.decode(ids))) end
return redis.call('LLEN', KEYS[2])
"""


def note_in_flight(client: redis.Redis, queue: str, hostname: str, task_ids: list[str]) -> int:
    """Record the tasks `hostname` holds of `queue`; returns how many the queue's workers hold in
    all."""
    keys = [HELD_KEY.format(queue=queue), IN_FLIGHT_KEY.format(queue=queue)]
    return int(client.eval(_NOTE_IN_FLIGHT, 2, *keys, hostname, json.dumps(sorted(task_ids))))


def in_flight(client: redis.Redis, queue: str) -> int:
    return int(client.llen(IN_FLIGHT_KEY.format(queue=queue)))
