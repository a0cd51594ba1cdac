from typing import Any, cast

import pytest
import redis
from sqlalchemy import func, select

from ragcore.clients.embedder import HashingEmbedder
from ragcore.clients.vectorstore import Hit
from ragcore.db import Sessions
from ragcore.db.models import Base, Conversation, Message, QueryCacheEntry, User
from ragcore.query import (
    ConversationNotFound,
    ExtractiveGenerator,
    LimitExceeded,
    QueryRequest,
    QueryService,
    UpstreamUnavailable,
)
from ragcore.query.cache import HotCache, bump_data_version
from ragcore.query.service import TolerantHotCache
from ragcore.settings import QdrantSettings, Settings, TierSettings

SETTINGS = Settings(
    qdrant=QdrantSettings(vector_size=64),
    tiers=TierSettings(daily_limits={"free": 3}, thresholds={"free": 0}, default="free"),
)


class Store:
    """A stand-in vector store: returns fixed hits and counts searches."""

    def __init__(self, hits: list[Hit]) -> None:
        self.hits = hits
        self.searches = 0
        self.fail = False

    def ensure_collection(self) -> None:
        pass

    def search(
        self, vector: list[float], top_k: int, filters: dict[str, Any] | None = None
    ) -> list[Hit]:
        if self.fail:
            raise ConnectionError("qdrant down")
        self.searches += 1
        return self.hits[:top_k]


class DictRedis:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.down = False

    def get(self, key: str) -> bytes | None:
        if self.down:
            raise redis.ConnectionError("down")
        return self.data.get(key)

    def set(self, key: str, value: bytes, ex: int) -> None:
        if self.down:
            raise redis.ConnectionError("down")
        self.data[key] = value


@pytest.fixture
def store() -> Store:
    return Store(
        [
            Hit(
                "doc-1",
                "doc-1/c0",
                0.9,
                "Harbor safety is checked daily. Cranes are old.",
                {"category": "x"},
            )
        ]
    )


@pytest.fixture
def hot() -> DictRedis:
    return DictRedis()


@pytest.fixture
def service(sessions: Sessions, store: Store, hot: DictRedis) -> QueryService:
    return QueryService(
        SETTINGS,
        store,
        HashingEmbedder(64),
        ExtractiveGenerator(),
        TolerantHotCache(HotCache(cast(redis.Redis, hot), "t:", 60), pause=0.0),
        sessions=sessions,
    )


def count(sessions: Sessions, model: type[Base]) -> int:
    with sessions() as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


def unreported(sessions: Sessions) -> int:
    with sessions() as session:
        return session.execute(
            select(func.count()).select_from(Message).where(Message.reported_at.is_(None))
        ).scalar_one()


def test_an_answer_is_stored_as_a_message_whose_reports_are_pending(
    service: QueryService, sessions: Sessions
) -> None:
    answer = service.answer(QueryRequest(user_id="u", query="harbor safety"))
    assert answer.answer == "Harbor safety is checked daily. [1]"
    assert [s.chunk_id for s in answer.sources] == ["doc-1/c0"] and not answer.cached
    with sessions() as session:
        message = session.get(Message, answer.message_id)
        assert message is not None
        assert (
            message.conversation_id == answer.conversation_id
            and message.tokens_used == answer.tokens_used
        )
        assert (
            message.processing_time_ms == answer.processing_time_ms and message.reported_at is None
        )
        assert message.sources == [s.model_dump(mode="json") for s in answer.sources]


def test_a_repeated_query_is_cached_until_the_data_version_changes(
    service: QueryService, sessions: Sessions, store: Store, hot: DictRedis
) -> None:
    first = service.answer(QueryRequest(user_id="u", query="harbor safety"))
    again = service.answer(QueryRequest(user_id="u", query="  Harbor   SAFETY "))
    assert again.cached and again.answer == first.answer and again.tokens_used == 0
    assert store.searches == 1
    hot.data.clear()  # the database record serves when Redis lost its copy
    assert service.answer(QueryRequest(user_id="u2", query="harbor safety")).cached
    with sessions() as session:
        bump_data_version(session)
    assert not service.answer(QueryRequest(user_id="u2", query="harbor safety")).cached
    assert store.searches == 2
    with sessions() as session:
        assert sorted(session.scalars(select(QueryCacheEntry.hits))) == [0, 2]


def test_a_conversation_continues_and_an_unknown_one_is_refused_before_any_work(
    service: QueryService, sessions: Sessions, store: Store
) -> None:
    first = service.answer(QueryRequest(user_id="u", query="harbor"))
    second = service.answer(
        QueryRequest(user_id="u", query="cranes", conversation_id=first.conversation_id)
    )
    assert second.conversation_id == first.conversation_id
    searches = store.searches
    for user, conversation in (("u", "nope"), ("other-user", first.conversation_id)):
        with pytest.raises(ConversationNotFound):
            service.answer(QueryRequest(user_id=user, query="cranes", conversation_id=conversation))
    assert store.searches == searches
    assert count(sessions, Conversation) == 1 and count(sessions, Message) == 2


def test_over_the_limit_nothing_is_stored_or_reported(
    service: QueryService, sessions: Sessions
) -> None:
    for i in range(3):
        service.answer(QueryRequest(user_id="u", query=f"q{i}"))
    with pytest.raises(LimitExceeded):
        service.answer(QueryRequest(user_id="u", query="one more"))
    assert count(sessions, Message) == 3 and unreported(sessions) == 3
    with sessions() as session:
        user = session.get(User, "u")
        assert user is not None and user.queries_today == 3


def test_without_reports_the_message_is_stored_as_reported(
    service: QueryService, sessions: Sessions
) -> None:
    service.answer(QueryRequest(user_id="u", query="harbor"), reports=False)
    assert count(sessions, Message) == 1 and unreported(sessions) == 0


def test_a_vector_store_failure_is_an_upstream_error_and_stores_nothing(
    service: QueryService, sessions: Sessions, store: Store
) -> None:
    store.fail = True
    with pytest.raises(UpstreamUnavailable, match="vector store"):
        service.answer(QueryRequest(user_id="u", query="harbor"))
    assert count(sessions, Message) == 0


def test_a_redis_outage_only_costs_the_hot_cache(service: QueryService, hot: DictRedis) -> None:
    hot.down = True
    service.answer(QueryRequest(user_id="u", query="harbor"))
    # from the database record
    assert service.answer(QueryRequest(user_id="u", query="harbor")).cached
