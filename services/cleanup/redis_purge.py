"""Redis housekeeping: stale hot-cache entries and results of failed tasks, found with SCAN.

SCAN walks the keyspace in small steps, so Redis keeps serving the broker while we look (KEYS would
block it for the whole walk); MATCH keeps us to keys we own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import redis

from ragcore.query.cache import HotCache

#: Celery's Redis result backend stores a task's result under this prefix (groups use another).
RESULT_PREFIX = "celery-task-meta-"

# Delete each key whose stored result says FAILURE, reading and deleting in one atomic step so a
# result rewritten meanwhile (a re-run under the same id) is judged by its new value. pcall: a key
# of another type or a value that is not JSON is left alone instead of aborting the batch.
_DELETE_FAILED = """
local removed = 0
for _, key in ipairs(KEYS) do
  local raw = redis.pcall('GET', key)
  if type(raw) == 'string' then
    local ok, meta = pcall(cjson.decode, raw)
    if ok and type(meta) == 'table' and meta['status'] == 'FAILURE' then
      removed = removed + redis.call('DEL', key)
    end
  end
end
return removed
"""


def glob_escape(text: str) -> str:
    """`text` as a literal inside a SCAN MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _batches(client: redis.Redis, match: str, size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for key in client.scan_iter(match=match, count=size):
        batch.append(key)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def purge_stale_cache(
    cache: HotCache, current_version: int, batch_size: int = 500
) -> dict[str, int]:
    """Delete hot entries built for a data version older than `current_version`: never served
    again."""
    scanned = removed = 0
    for batch in _batches(cache.client, glob_escape(cache.prefix) + "v*", batch_size):
        scanned += len(batch)
        stale = [
            key
            for key in batch
            if (version := cache.version_of(key)) is not None and version < current_version
        ]
        if stale:
            removed += cache.client.unlink(*stale)
    return {"scanned": scanned, "removed": removed, "data_version": current_version}


def purge_failed_results(client: redis.Redis, batch_size: int = 500) -> dict[str, int]:
    """Delete stored results whose status is FAILURE; successful, pending and other results stay."""
    delete_failed = client.register_script(_DELETE_FAILED)
    scanned = removed = 0
    for batch in _batches(client, glob_escape(RESULT_PREFIX) + "*", batch_size):
        scanned += len(batch)
        removed += int(delete_failed(keys=batch))
    return {"scanned": scanned, "removed": removed}
