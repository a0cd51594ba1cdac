"""Re-queue, at once, the tasks a worker was running or holding when it died, whatever its name.

With the Redis broker, a late-acknowledged message whose worker was killed stays in the transport's
`unacked` hash until the visibility timeout (longer than the longest task: hours) has passed. A
worker
that starts under the same node name knows better: every task the ledger says it had STARTED and
never finished died with its previous life, and so did the messages its previous life last noted as
reserved (the worker's monitor notes them in Redis twice a second while they change). It puts those
messages back on their queue when it is ready, so a crashed full sync resumes on restart instead of
hours later, and the deliveries a notifications worker had reserved go out at once.

A worker replaced under another name (a pod replacement, a node loss) never comes back: instead
every live worker of its queue looks, at each heartbeat, for lost workers of that queue: their
heartbeat stopped (`worker_lost_after_seconds`, on the Redis server's clock). One Lua script claims
a lost worker atomically, only while its heartbeat is still older than the cut-off and nobody
else's claim holds, so however many live workers notice together, one re-queues its tasks, once,
and never those of a worker that beats again. The claim is a key that lapses like a heartbeat: the
heartbeat and the reserved note stay until the re-queue is done, so if the claimer fails half-way
(a Redis or database blip, its own death) the next live worker claims again, and re-queues what the
claim record says is left.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import orjson
from celery import signals
from sqlalchemy import select

from ragcore.broker import heartbeats, in_flight
from ragcore.broker import held as broker_held
from ragcore.db import session_scope
from ragcore.db.models import TaskRecord
from ragcore.tasks.states import TaskState

log = logging.getLogger(__name__)


def started_task_ids(hostname: str) -> set[str]:
    """What the ledger says `hostname` had STARTED and never finished."""
    with session_scope() as session:
        return set(
            session.scalars(
                select(TaskRecord.task_id).where(
                    TaskRecord.worker == hostname, TaskRecord.state == TaskState.STARTED
                )
            )
        )


def note_reserved(client: Any, hostname: str, task_ids: list[str], ttl: int) -> None:
    """What this worker holds now (running or reserved ahead), for its next life to re-queue."""
    if task_ids:
        client.set(broker_held.reserved_note_key(hostname), orjson.dumps(task_ids), ex=ttl)
    else:
        client.delete(broker_held.reserved_note_key(hostname))


def reserved_by(client: Any, hostname: str) -> set[str]:
    raw = client.get(broker_held.reserved_note_key(hostname))
    return set(orjson.loads(raw)) if raw else set()


def restore(channel: Any, task_ids: set[str], record: str | None = None) -> list[str]:
    """Move the unacked messages of `task_ids` back to their queues; returns the ids restored.

    With `record` (a lost worker's claim record, a set of ids still to re-queue), an id moves back
    only while the record lists it, and leaves the record in the same transaction: a claimer that
    dies half-way leaves exactly what it did not re-queue, and whoever claims again never takes back
    a message that a live worker received since.
    """
    restored: list[str] = []
    for tag, raw in channel.client.hscan_iter(channel.qos.unacked_key):
        message, _, _ = orjson.loads(raw)
        task_id = message.get("headers", {}).get("id")
        if task_id in task_ids and broker_held.move_back(
            channel, tag.decode() if isinstance(tag, bytes) else tag, task_id, record
        ):
            restored.append(task_id)
    return restored


_CLAIM_KEY = "ragcore:claim:{hostname}"
#: The ids a claimed worker held that are still to re-queue, and a marker that the set is complete.
_RECORD_KEY = "ragcore:claimed:{hostname}"
_COMPLETE = "-"

# KEYS: the queue's heartbeats, the claim. ARGV: the lost worker, the cut-off, the claimer, the
# claim's lifetime (ms). A claim holds while its claimer works; one that outlives it (its claimer
# died or failed) lapses, and the next live worker to notice claims again. The heartbeat entry and
# the reserved note stay until the re-queue is done.
_CLAIM = """
local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not beat or tonumber(beat) > tonumber(ARGV[2]) then return false end
return redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) and 1 or false
"""

#: How many claim lifetimes a claim record outlives its first claim: room for claims again after
#: failures, and a worker that came back (it beats again) does not keep a stale record for good.
_RECORD_CLAIMS = 10

# KEYS: the claim record, the reserved note. ARGV: the record's lifetime (ms), the completeness
# marker, then the ids the ledger says were STARTED there. Made once: a later claim re-queues what
# the record still lists, never the note again.
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  local held = cjson.decode(redis.call('GET', KEYS[2]) or '[]')
  for i = 2, #ARGV do table.insert(held, ARGV[i]) end
  redis.call('SADD', KEYS[1], unpack(held))
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return redis.call('SMEMBERS', KEYS[1])
"""

# KEYS: the queue's heartbeats, the reserved note, the claim record, the claim. ARGV: the lost
# worker, the cut-off. The heartbeat goes unless it beat again meanwhile.
_DONE = """
local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
if beat and tonumber(beat) <= tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
"""


def claim_lost(
    client: Any, queue: str, hostname: str, cutoff: float, claimer: str, lifetime: float
) -> bool:
    """Whether this caller is the one to re-queue what `hostname` held (its heartbeat is older than
    `cutoff`, and nobody else's claim holds); the claim lapses after `lifetime` seconds."""
    return bool(
        client.eval(
            _CLAIM,
            2,
            heartbeats.BEATS_KEY.format(queue=queue),
            _CLAIM_KEY.format(hostname=hostname),
            hostname,
            cutoff,
            claimer,
            max(1, int(lifetime * 1000)),
        )
    )


def claim_record(client: Any, hostname: str, started: set[str], lifetime: float) -> set[str]:
    """What the claim of `hostname` still has to re-queue: its reserved note and `started`, noted
    by the first claim, what later claims found left (`lifetime`: the claim's)."""
    ids = client.eval(
        _RECORD,
        2,
        _RECORD_KEY.format(hostname=hostname),
        broker_held.reserved_note_key(hostname),
        max(1, int(lifetime * 1000 * _RECORD_CLAIMS)),
        _COMPLETE,
        *sorted(started),
    )
    return {i.decode() if isinstance(i, bytes) else i for i in ids} - {_COMPLETE}


def release_claim(client: Any, hostname: str, claimer: str) -> None:
    """A claimer that failed lets the next beat claim again at once (otherwise the claim lapses)."""
    key = _CLAIM_KEY.format(hostname=hostname)
    if client.get(key) == claimer.encode():
        client.delete(key)


def requeue_lost(
    app: Any, client: Any, queue: str, lost_after: float, claimer: str
) -> dict[str, list[str]]:
    """Re-queue what the lost workers of `queue` held; returns the ids restored per worker
    claimed. A failure leaves the worker lost and its claim record as it is, to be claimed again."""
    now = heartbeats.server_time(client)
    cutoff = now - lost_after
    restored: dict[str, list[str]] = {}
    for hostname, last in heartbeats.lost_workers(client, queue, cutoff):
        if not claim_lost(client, queue, hostname, cutoff, claimer, lost_after):
            continue  # another live worker is on it, or it beats again
        record = _RECORD_KEY.format(hostname=hostname)
        try:
            # The ledger is read by the first claim only: once a record exists, it is the list.
            started = set() if client.exists(record) else started_task_ids(hostname)
            held = claim_record(client, hostname, started, lost_after)
            with app.connection_for_write() as conn:
                restored[hostname] = restore(conn.default_channel, held, record) if held else []
            in_flight.note_in_flight(client, queue, hostname, [])
            client.eval(
                _DONE,
                4,
                heartbeats.BEATS_KEY.format(queue=queue),
                broker_held.reserved_note_key(hostname),
                record,
                _CLAIM_KEY.format(hostname=hostname),
                hostname,
                cutoff,
            )
        except Exception:
            log.exception("re-queueing what lost worker %s held failed: claimed again", hostname)
            with contextlib.suppress(Exception):
                release_claim(client, hostname, claimer)
            continue
        log.warning(
            "worker %s lost (last heartbeat %.0fs ago): re-queued %d task(s): %s",
            hostname,
            now - last,
            len(restored[hostname]),
            restored[hostname],
        )
    return restored


def connect() -> None:
    @signals.worker_ready.connect(weak=False, dispatch_uid="recovery.worker_ready")
    def _recover(sender: Any, **_: Any) -> None:
        try:
            with sender.app.connection_for_write() as conn:
                left = started_task_ids(sender.hostname) | reserved_by(
                    conn.default_channel.client, sender.hostname
                )
                if not left:
                    return
                restored = restore(conn.default_channel, left)
            log.warning(
                "re-queued %d task(s) left by this worker's previous run: %s",
                len(restored),
                restored,
            )
        except Exception:  # recovery is best effort: the visibility timeout still redelivers later
            log.exception("recovery of the previous run's tasks failed")
