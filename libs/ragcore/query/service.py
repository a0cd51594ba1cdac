"""The query path: limit, cache, embed, search, generate, then one transaction for everything kept.

That transaction counts the query against the user's limit, stores the conversation and message, and
records the cached answer. The message row is also the intent of its two reports
(`send_query_result_to_users`, `update_user_statistics`): stored unreported, it is published by the
report relay (`ragcore.query.reports`) outside the API, so the reports exist exactly when the
message does and cost the answer nothing.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

import redis
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from ragcore import tracing
from ragcore.clients.embedder import Embedder
from ragcore.clients.vectorstore import Hit
from ragcore.db import (
    Sessions,
    begin_immediate,
    insert_for,
    rows_affected,
    session_scope,
    utcnow,
)
from ragcore.db.models import Conversation, Message, QueryCacheEntry
from ragcore.query import limits
from ragcore.query.cache import HotCache, cache_key, data_version
from ragcore.query.generator import Generator
from ragcore.query.schema import QueryAnswer, QueryRequest
from ragcore.settings import Settings
from ragcore.tasks.arguments import Source

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConversationNotFound(Exception):
    """The conversation does not exist, belongs to another user, or was archived."""


class UpstreamUnavailable(Exception):
    """A dependency of the answer (embedder, vector store, chat endpoint) failed."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"{what} unavailable: {type(cause).__name__}: {cause}")
        self.what = what


class Searcher(Protocol):
    def ensure_collection(self) -> None: ...

    def search(
        self, vector: list[float], top_k: int, filters: dict[str, Any] | None = None
    ) -> list[Hit]: ...


class TolerantHotCache:
    """The Redis copy of the query cache, which a Redis outage turns into misses, not errors.

    After a failure Redis is left alone for `pause` seconds, so a dead or hung Redis costs one
    timeout now and then rather than one per query; the database keeps serving cached answers.
    """

    def __init__(self, cache: HotCache, pause: float = 5.0) -> None:
        self._cache = cache
        self._pause = pause
        self._down_until = 0.0

    def get(self, key: str) -> dict[str, Any] | None:
        return self._call(lambda: self._cache.get(key))

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._call(lambda: self._cache.put(key, value))

    def _call(self, fn: Callable[[], T]) -> T | None:
        if time.monotonic() < self._down_until:
            return None
        try:
            return fn()
        except redis.RedisError as exc:
            self._down_until = time.monotonic() + self._pause
            log.warning("hot query cache unavailable for %.0fs: %s", self._pause, exc)
            return None


@dataclass(frozen=True)
class _Lookup:
    key: str
    version: int
    cached: dict[str, Any] | None
    from_hot: bool
    user_known: bool


class QueryService:
    """Answers queries; one per process, shared by its threads."""

    def __init__(
        self,
        settings: Settings,
        store: Searcher,
        embedder: Embedder,
        generator: Generator,
        hot: TolerantHotCache | None = None,
        sessions: Sessions = session_scope,
    ) -> None:
        self._settings = settings
        self._store = store
        self._embedder = embedder
        self._generator = generator
        self._hot = hot
        self._sessions = sessions
        self._store_ready = False
        self._ready_lock = threading.Lock()

    def answer(self, request: QueryRequest, reports: bool = True) -> QueryAnswer:
        """Answer `request` and store it; `reports=False` stores it as reported already (benchmarks
        only)."""
        with tracing.span("query.answer", top_k=request.top_k):
            # The query's span: its reports, published later, continue this trace and link to it.
            return self._answer(request, reports, tracing.current_traceparent())

    def _answer(self, request: QueryRequest, reports: bool, traceparent: str | None) -> QueryAnswer:
        started = time.perf_counter()
        now = utcnow()
        with tracing.span("query.lookup"), self._sessions() as session:
            user_known = limits.check(session, request.user_id, self._settings, now)
            if request.conversation_id is not None:
                self._require_conversation(session, request.user_id, request.conversation_id)
            lookup = self._lookup(session, request, user_known)
        result = lookup.cached if lookup.cached is not None else self._compute(request)
        cached = lookup.cached is not None
        answer = QueryAnswer(
            answer=result["answer"],
            sources=[Source.model_validate(s) for s in result["sources"]],
            conversation_id=request.conversation_id or str(uuid.uuid4()),
            message_id=str(uuid.uuid4()),
            # A cached answer spent no tokens: usage counts generation, and there was none.
            tokens_used=0 if cached else result["tokens_used"],
            processing_time_ms=round((time.perf_counter() - started) * 1000, 3),
            cached=cached,
        )
        # The answer's one transaction.
        with tracing.span("query.store", cached=cached), self._sessions() as session:
            self._store_answer(session, request, answer, lookup, result, now, reports, traceparent)
        if self._hot is not None and not lookup.from_hot:
            self._hot.put(lookup.key, result)
        return answer

    def _require_conversation(self, session: Session, user_id: str, conversation_id: str) -> None:
        found = session.scalar(
            select(Conversation.id).where(
                Conversation.id == conversation_id,
                Conversation.user_id == user_id,
                Conversation.archived_at.is_(None),
            )
        )
        if found is None:
            raise ConversationNotFound(
                f"no open conversation {conversation_id!r} for user {user_id!r}"
            )

    def _lookup(self, session: Session, request: QueryRequest, user_known: bool) -> _Lookup:
        version = data_version(session)
        key = cache_key(version, request.query, request.top_k, request.filters)
        if self._hot is not None:
            hot = self._hot.get(key)
            if hot is not None:
                return _Lookup(key, version, hot, True, user_known)
        row = session.scalar(
            select(QueryCacheEntry.response).where(QueryCacheEntry.cache_key == key)
        )
        return _Lookup(key, version, row, False, user_known)

    def _compute(self, request: QueryRequest) -> dict[str, Any]:
        with tracing.span("query.embed"):
            vector = self._call(
                "the embedding service", lambda: self._embedder.embed([request.query])[0]
            )
        with tracing.span("query.vector_search", top_k=request.top_k):
            hits: Sequence[Hit] = self._call(
                "the vector store (Qdrant)", lambda: self._search(vector, request)
            )
        with tracing.span("query.generate"):
            generated = self._call(
                "the chat service", lambda: self._generator.generate(request.query, hits)
            )
        sources = [
            {
                "document_id": h.document_id,
                "chunk_id": h.chunk_id,
                "score": h.score,
                "text": h.text,
                "metadata": h.metadata,
            }
            for h in hits
        ]
        return {
            "answer": generated.answer,
            "sources": sources,
            "tokens_used": generated.tokens_used,
        }

    def _search(self, vector: list[float], request: QueryRequest) -> list[Hit]:
        if not self._store_ready:
            with self._ready_lock:
                # Before the first sync there is no collection: create it empty rather than fail.
                self._store.ensure_collection()
                self._store_ready = True
        return self._store.search(vector, request.top_k, request.filters)

    @staticmethod
    def _call(what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            log.exception("%s failed", what)
            raise UpstreamUnavailable(what, exc) from exc

    def _store_answer(
        self,
        session: Session,
        request: QueryRequest,
        answer: QueryAnswer,
        lookup: _Lookup,
        result: dict[str, Any],
        now: datetime,
        reports: bool,
        traceparent: str | None,
    ) -> None:
        begin_immediate(session)  # SQLite: the write lock, polled for finely (ragcore.db)
        limits.consume(session, request.user_id, self._settings, now, lookup.user_known)
        _open_conversation(session, request, answer, now)
        # INSERTs on the session's connection (here and below): the ORM's unit of work and bulk
        # paths cost more CPU than the statements themselves, and nothing reads these rows back.
        session.connection().execute(
            insert(Message).values(
                id=answer.message_id,
                conversation_id=answer.conversation_id,
                user_id=request.user_id,
                query=request.query,
                answer=answer.answer,
                sources=[s.model_dump(mode="json") for s in answer.sources],
                tokens_used=answer.tokens_used,
                processing_time_ms=answer.processing_time_ms,
                created_at=now,
                reported_at=None if reports else now,
                traceparent=traceparent,
            )
        )
        _cache_answer(session, request.query, answer.cached, lookup, result, now)


def _open_conversation(
    session: Session, request: QueryRequest, answer: QueryAnswer, now: datetime
) -> None:
    """Start the answer's conversation, or mark the open one it continues as updated."""
    if request.conversation_id is None:
        session.connection().execute(
            insert(Conversation).values(
                id=answer.conversation_id,
                user_id=request.user_id,
                created_at=now,
                updated_at=now,
            )
        )
        return
    touched = rows_affected(
        session,
        update(Conversation)
        .where(
            Conversation.id == answer.conversation_id,
            Conversation.user_id == request.user_id,
            Conversation.archived_at.is_(None),
        )
        .values(updated_at=now)
        .execution_options(synchronize_session=False),
    )
    if touched == 0:  # archived since the first look
        raise ConversationNotFound(
            f"no open conversation {answer.conversation_id!r} for user {request.user_id!r}"
        )


def _cache_answer(
    session: Session,
    query: str,
    cached: bool,
    lookup: _Lookup,
    result: dict[str, Any],
    now: datetime,
) -> None:
    """Count a hit on the cached answer, or cache a new one (a concurrent twin's row stands)."""
    if cached:
        session.execute(
            update(QueryCacheEntry)
            .where(QueryCacheEntry.cache_key == lookup.key)
            .values(hits=QueryCacheEntry.hits + 1)
            .execution_options(synchronize_session=False)
        )
        return
    session.connection().execute(
        insert_for(session)(QueryCacheEntry)
        .values(
            cache_key=lookup.key,
            data_version=lookup.version,
            query=query,
            response=result,
            hits=0,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["cache_key"])
    )
