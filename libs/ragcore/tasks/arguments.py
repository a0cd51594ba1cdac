"""The arguments of every task: one pydantic model per contract, validated when a task is sent and
again when it runs; unknown fields, NUL characters and times without a timezone are refused."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, model_validator


def _reject_nul(value: Any) -> Any:
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("text must not contain NUL characters")  # PostgreSQL cannot store them
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_nul(key)
            _reject_nul(item)
    elif isinstance(value, list):
        for item in value:
            _reject_nul(item)
    return value


#: The NUL rule as a JSON-schema pattern, so the OpenAPI document states it too.
NO_NUL = "^[^\\x00]*$"


def _state_no_nul(schema: dict[str, Any], *_: Any) -> None:
    """Every string without a pattern or format of its own gets NO_NUL in the model's JSON
    schema."""
    if schema.get("type") == "string" and not {"pattern", "format", "enum", "const"} & set(schema):
        schema["pattern"] = NO_NUL
    for value in schema.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                _state_no_nul(item)


#: RFC 3339, what OpenAPI's "date-time" says; pydantic alone also takes numbers (epoch seconds) and
#: more.
_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
)


def _rfc3339(value: Any) -> Any:
    if isinstance(value, int | float) or (isinstance(value, str) and not _RFC3339.fullmatch(value)):
        raise ValueError("a time is an RFC 3339 string with a timezone, e.g. 2026-01-01T00:00:00Z")
    return value


#: A time as the contracts take it (SPEC §5: ISO 8601 with a timezone), never a number.
Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


class Args(BaseModel):
    """Base of every argument model: unknown fields are refused, not silently dropped."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_state_no_nul)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        return _reject_nul(data)


class NoArgs(Args):
    pass


class SyncEmbeddingsArgs(Args):
    batch_size: int = Field(256, ge=1, le=500)
    since: Timestamp | None = None


class DocumentArgs(Args):
    document_id: str = Field(min_length=1, max_length=512)


class Source(BaseModel):
    document_id: str
    chunk_id: str
    score: float
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class QueryResultArgs(Args):
    user_id: str = Field(min_length=1)
    conversation_id: str = Field(min_length=1)
    message_id: str = Field(min_length=1)
    query: str
    answer: str
    sources: list[Source]
    tokens_used: int = Field(ge=0)
    processing_time_ms: float = Field(ge=0)


class SystemNotificationArgs(Args):
    notification_type: str = Field(min_length=1, max_length=64)
    title: str = Field(min_length=1, max_length=200)
    message: str = Field(min_length=1, max_length=10_000)
    user_ids: list[str] = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: The Users system de-duplicates by this; the sender chooses it (SPEC §5). One key, one
    #: content: a key ragcore sent with other content is refused (ragcore.notification_keys).
    idempotency_key: str | None = Field(None, min_length=1, max_length=256, pattern=NO_NUL)


class UsageStatisticsArgs(Args):
    #: The hour to report (its start); by default the last complete hour. Pinned on retries and
    #: re-drives, so a report that fails is sent again for the same period under the same key.
    period_start: Timestamp | None = None


class DaysArgs(Args):
    days: int = Field(ge=1, le=3650)


class CleanupQueryCacheArgs(DaysArgs):
    days: int = Field(30, ge=1, le=3650)


class CleanupConversationsArgs(DaysArgs):
    days: int = Field(90, ge=1, le=3650)


class UserArgs(Args):
    user_id: str = Field(min_length=1, max_length=256)


class CanaryArgs(Args):
    echo: str = "ok"
    #: Test-only: run this long, reporting progress (capped below the canary's soft time limit).
    sleep_seconds: float = Field(0, ge=0, le=8)
    #: Test-only: fail permanently (a traceback to show, or hide).
    fail: bool = False
