"""The query's request and answer (SPEC §3), shared by the API and the benchmarks."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator

from ragcore.tasks.contracts import Args, Source

#: Qdrant matches exact keyword, integer and boolean values.
FilterValue = str | int | bool
#: A payload field: `document_id`, or a metadata field such as `category` or `chunk_index`.
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class QueryRequest(Args):
    """Unknown fields and NUL characters are refused (Args), like every other request body."""

    user_id: str = Field(min_length=1, max_length=256)
    query: str = Field(min_length=1, max_length=4000)
    conversation_id: str | None = Field(None, min_length=1, max_length=64)
    top_k: int = Field(5, ge=1, le=50)
    filters: dict[str, FilterValue] | None = Field(None, max_length=16)

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must contain a non-whitespace character")
        return value

    @field_validator("filters")
    @classmethod
    def _field_names(cls, value: dict[str, FilterValue] | None) -> dict[str, FilterValue] | None:
        for name in value or {}:
            if not _FIELD.match(name):
                raise ValueError(f"filter field {name!r} is not a field name (letters, digits, _; at most 128)")
        return value


class QueryAnswer(BaseModel):
    answer: str
    sources: list[Source]
    conversation_id: str
    message_id: str
    tokens_used: int
    processing_time_ms: float
    cached: bool
