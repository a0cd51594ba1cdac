"""A Qdrant stand-in: the REST subset qdrant-client uses for VectorStore, over the embedded
qdrant_edge engine.

It lets several processes (API, sync worker) share one persisted collection on a machine without a
Qdrant server. Each collection is an EdgeShard under DATA/collections/<name>/. Production runs real
Qdrant through the same VectorStore code.

    python -m ragcore_dev.standins.qdrant --port 6333 --data DIR [--api-key KEY]

Served: GET /, /healthz, /readyz, /livez; GET /collections; GET|PUT|DELETE /collections/{name}; GET
/collections/{name}/exists; PUT /collections/{name}/index, DELETE .../index/{field}; PUT .../points
(upsert, `points` or `batch`); POST .../points/delete (ids or filter); POST .../points/payload (set
payload keys, on ids or by filter); POST .../points/query and .../points/search (nearest, with
filter); POST .../points/scroll; POST .../points/count. Control: POST
/_control/collections/{name}/optimize builds the HNSW index (blocking: qdrant_edge holds the GIL
while optimising, so it is never started behind a client's back), plus the shared faults/requests.
"""

from __future__ import annotations

import argparse
import itertools
import re
import shutil
import threading
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson
import qdrant_edge as qe

from ragcore_dev.standins.server import (
    App,
    HTTPError,
    Request,
    Response,
    Running,
    json_response,
    run_until_signalled,
    start_in_thread,
)

_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_\-.]*")
_DISTANCES = {d: getattr(qe.Distance, d) for d in ("Cosine", "Euclid", "Dot", "Manhattan")}
_SCHEMA_TYPES = {
    t.lower(): getattr(qe.PayloadSchemaType, t)
    for t in ("Keyword", "Integer", "Float", "Geo", "Text", "Bool", "Datetime", "Uuid")
}
_SCHEMA_NAMES = {schema: name for name, schema in _SCHEMA_TYPES.items()}


class Collection:
    """One collection: its shard and the vector parameters it was created with."""

    def __init__(self, name: str, path: Path, shard: qe.EdgeShard, meta: dict[str, Any]) -> None:
        self.name = name
        self.path = path
        self.shard = shard
        self.size: int = meta["size"]
        self.distance: str = meta["distance"]
        self.created_at: str = meta["created_at"]
        self._operations = itertools.count(1)

    @classmethod
    def create(cls, name: str, path: Path, size: int, distance: str) -> Collection:
        if path.exists():
            shutil.rmtree(path)  # an earlier create died before writing collection.json
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=size, distance=_DISTANCES[distance])
        )
        shard = qe.EdgeShard.create(str(path / "shard"), config)
        meta = {
            "size": size,
            "distance": distance,
            "created_at": datetime.now(UTC).isoformat(),
        }
        # Written last: its presence marks a complete collection.
        (path / "collection.json").write_bytes(orjson.dumps(meta))
        return cls(name, path, shard, meta)

    @classmethod
    def load(cls, path: Path) -> Collection:
        meta = orjson.loads((path / "collection.json").read_bytes())
        return cls(path.name, path, qe.EdgeShard.load(str(path / "shard")), meta)

    def update(self, operation: qe.UpdateOperation, wait: bool) -> dict[str, Any]:
        """Apply synchronously; `wait=false` only changes the status word, as the work is already
        done."""
        try:
            self.shard.update(operation)
        except ValueError as exc:
            raise HTTPError(400, f"Wrong input: {exc}") from exc
        return {
            "operation_id": next(self._operations),
            "status": "completed" if wait else "acknowledged",
        }

    def info(self) -> dict[str, Any]:
        info = self.shard.info()
        return {
            "status": "green",
            "optimizer_status": "ok",
            "indexed_vectors_count": info.indexed_vectors_count,
            "points_count": info.points_count,
            "segments_count": info.segments_count,
            "config": {
                "params": {
                    "vectors": {"size": self.size, "distance": self.distance},
                    "shard_number": 1,
                    "replication_factor": 1,
                    "write_consistency_factor": 1,
                    "on_disk_payload": True,
                },
                # Qdrant's defaults, reported because the client's model requires them; the shard
                # uses its own.
                "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000},
                "optimizer_config": {
                    "deleted_threshold": 0.2,
                    "vacuum_min_vector_number": 1000,
                    "default_segment_number": 0,
                    "flush_interval_sec": 5,
                },
                "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
            },
            "payload_schema": {
                field: {"data_type": _SCHEMA_NAMES[index.data_type], "points": index.points}
                for field, index in info.payload_schema.items()
            },
            "created_at": self.created_at,
        }

    def check_vector(self, vector: Any) -> list[float]:
        """The unnamed dense vector of a point or query, with Qdrant's dimension error."""
        if isinstance(vector, dict):
            if set(vector) != {""}:
                raise HTTPError(400, "Wrong input: the stand-in serves one unnamed dense vector")
            vector = vector[""]
        if not isinstance(vector, list):
            raise HTTPError(400, "Wrong input: a vector must be a list of numbers")
        if len(vector) != self.size:
            raise HTTPError(
                400,
                "Wrong input: Vector dimension error: "
                f"expected dim: {self.size}, got {len(vector)}",
            )
        return vector


# --- REST JSON -> qdrant_edge ---------------------------------------------------------------------


def maybe_filter(spec: Any) -> qe.Filter | None:
    return None if spec is None else to_filter(spec)


def to_filter(spec: Any) -> qe.Filter:
    if not isinstance(spec, dict):
        raise HTTPError(400, "Wrong input: a filter must be an object")
    min_should = spec.get("min_should")
    return qe.Filter(
        must=_conditions(spec.get("must")),
        should=_conditions(spec.get("should")),
        must_not=_conditions(spec.get("must_not")),
        min_should=qe.MinShould(
            _conditions(min_should["conditions"]) or [], min_should["min_count"]
        )
        if min_should
        else None,
    )


def _conditions(spec: Any) -> list[Any] | None:
    if spec is None:
        return None
    return [_condition(c) for c in (spec if isinstance(spec, list) else [spec])]


def _condition(spec: dict[str, Any]) -> Any:
    if "key" in spec:
        return qe.FieldCondition(
            key=spec["key"],
            match=_match(spec["match"]) if spec.get("match") is not None else None,
            range=_range(spec["range"]) if spec.get("range") is not None else None,
            values_count=qe.ValuesCount(**spec["values_count"])
            if spec.get("values_count")
            else None,
            is_empty=spec.get("is_empty"),
            is_null=spec.get("is_null"),
        )
    if "has_id" in spec:
        return qe.HasIdCondition(set(spec["has_id"]))
    if "is_empty" in spec:
        return qe.IsEmptyCondition(spec["is_empty"]["key"])
    if "is_null" in spec:
        return qe.IsNullCondition(spec["is_null"]["key"])
    if "has_vector" in spec:
        return qe.HasVectorCondition(spec["has_vector"])
    if "nested" in spec:
        return qe.NestedCondition(spec["nested"]["key"], to_filter(spec["nested"]["filter"]))
    if {"must", "should", "must_not", "min_should"} & spec.keys():
        return to_filter(spec)
    raise HTTPError(400, f"Wrong input: the stand-in does not support the condition {sorted(spec)}")


def _match(spec: dict[str, Any]) -> Any:
    if "value" in spec:
        return qe.MatchValue(spec["value"])
    if "any" in spec:
        return qe.MatchAny(spec["any"])
    if "except" in spec:
        return qe.MatchExcept(spec["except"])
    if "text" in spec:
        return qe.MatchText(spec["text"])
    if "phrase" in spec:
        return qe.MatchPhrase(spec["phrase"])
    raise HTTPError(400, f"Wrong input: the stand-in does not support the match {sorted(spec)}")


def _range(spec: dict[str, Any]) -> Any:
    bounds = {k: spec[k] for k in ("gt", "gte", "lt", "lte") if spec.get(k) is not None}
    if any(isinstance(v, str) for v in bounds.values()):
        return qe.RangeDateTime(**bounds)
    return qe.RangeFloat(**bounds)


def _with_payload(spec: Any, default: bool) -> Any:
    if spec is None:
        return default
    if isinstance(spec, bool | list):
        return spec
    if isinstance(spec, dict) and "include" in spec:
        return qe.PayloadSelector.Include(spec["include"])
    if isinstance(spec, dict) and "exclude" in spec:
        return qe.PayloadSelector.Exclude(spec["exclude"])
    raise HTTPError(400, "Wrong input: with_payload must be a bool, a list of fields or a selector")


def _with_vector(spec: Any) -> bool:
    # The one vector is unnamed: a list of names asks for it when it names "".
    return "" in spec if isinstance(spec, list) else bool(spec)


def _scored(points: list[qe.ScoredPoint]) -> list[dict[str, Any]]:
    return [
        {
            "id": p.id,
            "version": p.version,
            "score": p.score,
            "payload": p.payload,
            "vector": p.vector,
        }
        for p in points
    ]


# --- the app
# ----------------------------------------------------------------------------------------


class QdrantApp(App):
    name = "qdrant"

    def __init__(self, data_dir: str | Path, api_key: str | None = None) -> None:
        super().__init__(api_key)
        self.root = Path(data_dir) / "collections"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._collections = {
            path.name: Collection.load(path)
            for path in sorted(self.root.iterdir())
            if (path / "collection.json").exists()
        }
        c = "/collections/{name}"
        for method, path, handler in [
            ("GET", "/", self.root_banner),
            ("GET", "/healthz", self.health),
            ("GET", "/readyz", self.health),
            ("GET", "/livez", self.health),
            ("GET", "/collections", self.list_collections),
            ("GET", c, self.get_collection),
            ("GET", c + "/exists", self.collection_exists),
            ("PUT", c, self.create_collection),
            ("DELETE", c, self.delete_collection),
            ("PUT", c + "/index", self.create_index),
            ("DELETE", c + "/index/{field}", self.delete_index),
            ("PUT", c + "/points", self.upsert),
            ("POST", c + "/points/delete", self.delete_points),
            ("POST", c + "/points/payload", self.set_payload),
            ("POST", c + "/points/query", self.query),
            ("POST", c + "/points/search", self.search),
            ("POST", c + "/points/scroll", self.scroll),
            ("POST", c + "/points/count", self.count),
            ("POST", "/_control/collections/{name}/optimize", self.control_optimize),
        ]:
            self.route(method, path, handler)

    def authorized(self, request: Request) -> bool:
        # Qdrant takes its key as `api-key`; a bearer token works too.
        return (
            self.token is None
            or request.headers.get("api-key") == self.token
            or super().authorized(request)
        )

    def error(self, status: int, message: str) -> Response:
        return json_response({"status": {"error": message}, "time": 0.0}, status)

    def close(self) -> None:
        with self._lock:
            for collection in self._collections.values():
                collection.shard.flush()
                collection.shard.close()
            self._collections.clear()

    @staticmethod
    def _ok(result: Any, started: float) -> Response:
        return json_response(
            {"result": result, "status": "ok", "time": time.perf_counter() - started}
        )

    def _get(self, name: str) -> Collection:
        with self._lock:
            collection = self._collections.get(name)
        if collection is None:
            raise HTTPError(404, f"Not found: Collection `{name}` doesn't exist!")
        return collection

    def _body(self, request: Request) -> dict[str, Any]:
        body = request.json()
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise HTTPError(400, "Wrong input: the body must be a JSON object")
        return body

    def root_banner(self, _: Request) -> Response:
        # Claims the client's own version: it speaks the REST subset that client version uses.
        return json_response(
            {
                "title": "qdrant - vector search engine (ragcore stand-in)",
                "version": version("qdrant-client"),
            }
        )

    def health(self, _: Request) -> Response:
        return Response(200, b"healthz check passed", "text/plain")

    def list_collections(self, _: Request) -> Response:
        started = time.perf_counter()
        with self._lock:
            names = sorted(self._collections)
        return self._ok({"collections": [{"name": n} for n in names]}, started)

    def get_collection(self, request: Request) -> Response:
        started = time.perf_counter()
        return self._ok(self._get(request.params["name"]).info(), started)

    def collection_exists(self, request: Request) -> Response:
        started = time.perf_counter()
        with self._lock:
            exists = request.params["name"] in self._collections
        return self._ok({"exists": exists}, started)

    def create_collection(self, request: Request) -> Response:
        started = time.perf_counter()
        name = request.params["name"]
        if not _NAME.fullmatch(name):
            raise HTTPError(400, f"Wrong input: invalid collection name {name!r}")
        vectors = self._body(request).get("vectors")
        if not isinstance(vectors, dict) or "size" not in vectors:
            raise HTTPError(
                400, "Wrong input: the stand-in serves one unnamed dense vector: give vectors.size"
            )
        distance = vectors.get("distance")
        if distance not in _DISTANCES:
            raise HTTPError(400, f"Wrong input: unknown distance {distance!r}")
        with self._lock:
            if name in self._collections:
                raise HTTPError(409, f"Wrong input: Collection `{name}` already exists!")
            self._collections[name] = Collection.create(
                name, self.root / name, int(vectors["size"]), distance
            )
        return self._ok(True, started)

    def delete_collection(self, request: Request) -> Response:
        started = time.perf_counter()
        with self._lock:
            collection = self._collections.pop(request.params["name"], None)
        if collection is not None:
            collection.shard.close()
            shutil.rmtree(collection.path)
        return self._ok(collection is not None, started)

    def create_index(self, request: Request) -> Response:
        started = time.perf_counter()
        collection = self._get(request.params["name"])
        body = self._body(request)
        schema = body.get("field_schema")
        type_name = schema.get("type") if isinstance(schema, dict) else schema
        if "field_name" not in body or type_name not in _SCHEMA_TYPES:
            raise HTTPError(
                400,
                f"Wrong input: need field_name and a field_schema among {sorted(_SCHEMA_TYPES)}",
            )
        operation = qe.UpdateOperation.create_field_index(
            body["field_name"], _SCHEMA_TYPES[type_name]
        )
        return self._ok(collection.update(operation, request.query.get("wait") == "true"), started)

    def delete_index(self, request: Request) -> Response:
        started = time.perf_counter()
        collection = self._get(request.params["name"])
        operation = qe.UpdateOperation.delete_field_index(request.params["field"])
        return self._ok(collection.update(operation, request.query.get("wait") == "true"), started)

    def upsert(self, request: Request) -> Response:
        started = time.perf_counter()
        collection = self._get(request.params["name"])
        body = self._body(request)
        check = collection.check_vector
        try:
            if "points" in body:
                points = [
                    qe.Point(p["id"], check(p["vector"]), p.get("payload")) for p in body["points"]
                ]
            elif "batch" in body:
                batch = body["batch"]
                ids, vectors = batch["ids"], batch["vectors"]
                if isinstance(vectors, dict):
                    if set(vectors) != {""}:
                        raise HTTPError(
                            400, "Wrong input: the stand-in serves one unnamed dense vector"
                        )
                    vectors = vectors[""]
                payloads = batch.get("payloads") or [None] * len(ids)
                if not (isinstance(vectors, list) and len(vectors) == len(ids) == len(payloads)):
                    raise HTTPError(
                        400,
                        "Wrong input: batch ids, vectors and payloads must have the same length",
                    )
                points = [
                    qe.Point(i, check(v), p)
                    for i, v, p in zip(ids, vectors, payloads, strict=False)
                ]
            else:
                raise HTTPError(400, "Wrong input: give `points` or `batch`")
        except (KeyError, TypeError, ValueError) as exc:
            raise HTTPError(400, f"Wrong input: {exc}") from exc
        return self._ok(
            collection.update(
                qe.UpdateOperation.upsert_points(points), request.query.get("wait") == "true"
            ),
            started,
        )

    def delete_points(self, request: Request) -> Response:
        started = time.perf_counter()
        collection = self._get(request.params["name"])
        body = self._body(request)
        if "points" in body:
            operation = qe.UpdateOperation.delete_points(body["points"])
        elif "filter" in body:
            operation = qe.UpdateOperation.delete_points_by_filter(to_filter(body["filter"]))
        else:
            raise HTTPError(400, "Wrong input: give `points` or `filter`")
        return self._ok(collection.update(operation, request.query.get("wait") == "true"), started)

    def set_payload(self, request: Request) -> Response:
        started = time.perf_counter()
        collection = self._get(request.params["name"])
        body = self._body(request)
        payload = body.get("payload")
        if not isinstance(payload, dict) or body.get("key"):
            raise HTTPError(400, "Wrong input: give a `payload` object (top-level keys only)")
        if "points" in body:
            operation = qe.UpdateOperation.set_payload(body["points"], payload)
        elif "filter" in body:
            operation = qe.UpdateOperation.set_payload_by_filter(to_filter(body["filter"]), payload)
        else:
            raise HTTPError(400, "Wrong input: give `points` or `filter`")
        return self._ok(collection.update(operation, request.query.get("wait") == "true"), started)

    def _nearest(
        self, collection: Collection, body: dict[str, Any], vector: Any, default_limit: int
    ) -> list[qe.ScoredPoint]:
        if body.get("prefetch") or body.get("using"):
            raise HTTPError(
                400, "Wrong input: the stand-in serves plain nearest queries on the unnamed vector"
            )
        params = body.get("params") or {}
        return collection.shard.query(
            qe.QueryRequest(
                limit=int(body.get("limit") or default_limit),
                offset=body.get("offset"),
                query=qe.Query.Nearest(collection.check_vector(vector)),
                filter=maybe_filter(body.get("filter")),
                score_threshold=body.get("score_threshold"),
                with_payload=_with_payload(body.get("with_payload"), False),
                with_vector=_with_vector(body.get("with_vector")),
                params=qe.SearchParams(
                    hnsw_ef=params.get("hnsw_ef"), exact=bool(params.get("exact"))
                )
                if params
                else None,
            )
        )

    def query(self, request: Request) -> Response:
        started = time.perf_counter()
        collection = self._get(request.params["name"])
        body = self._body(request)
        query = body.get("query")
        if isinstance(query, dict) and "nearest" in query:
            query = query["nearest"]
        if not isinstance(query, list):
            raise HTTPError(
                400, "Wrong input: the stand-in serves `query` as a vector or {nearest: vector}"
            )
        return self._ok({"points": _scored(self._nearest(collection, body, query, 10))}, started)

    def search(self, request: Request) -> Response:
        started = time.perf_counter()
        collection = self._get(request.params["name"])
        body = self._body(request)
        vector = body.get("vector")
        if isinstance(vector, dict) and "vector" in vector:
            if vector.get("name"):
                raise HTTPError(400, "Wrong input: the stand-in serves one unnamed dense vector")
            vector = vector["vector"]
        return self._ok(_scored(self._nearest(collection, body, vector, 10)), started)

    def scroll(self, request: Request) -> Response:
        started = time.perf_counter()
        collection = self._get(request.params["name"])
        body = self._body(request)
        if body.get("order_by"):
            raise HTTPError(400, "Wrong input: the stand-in does not scroll with order_by")
        records, next_offset = collection.shard.scroll(
            qe.ScrollRequest(
                offset=body.get("offset"),
                limit=int(body.get("limit") or 10),
                filter=maybe_filter(body.get("filter")),
                with_payload=_with_payload(body.get("with_payload"), True),
                with_vector=_with_vector(body.get("with_vector")),
            )
        )
        points = [{"id": r.id, "payload": r.payload, "vector": r.vector} for r in records]
        return self._ok({"points": points, "next_page_offset": next_offset}, started)

    def count(self, request: Request) -> Response:
        started = time.perf_counter()
        collection = self._get(request.params["name"])
        body = self._body(request)
        count = collection.shard.count(
            qe.CountRequest(exact=body.get("exact", True), filter=maybe_filter(body.get("filter")))
        )
        return self._ok({"count": count}, started)

    def control_optimize(self, request: Request) -> Response:
        collection = self._get(request.params["name"])
        started = time.perf_counter()
        optimized = collection.shard.optimize()
        return json_response({"optimized": optimized, "seconds": time.perf_counter() - started})


def start_qdrant(
    data_dir: str | Path, api_key: str | None = None, port: int = 0
) -> Running[QdrantApp]:
    """Serve `data_dir` on 127.0.0.1 in a background thread; stopping flushes and closes every
    shard."""
    return start_in_thread(QdrantApp(data_dir, api_key), port=port)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6333)
    parser.add_argument(
        "--data", required=True, help="directory holding the collections (created if missing)"
    )
    parser.add_argument(
        "--api-key", default=None, help="require this key (`api-key` header or bearer token)"
    )
    args = parser.parse_args()
    run_until_signalled(QdrantApp(args.data, args.api_key), args.host, args.port)


if __name__ == "__main__":
    main()
