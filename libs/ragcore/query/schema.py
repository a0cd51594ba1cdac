"""The query's request and answer (SPEC §3), shared by the API and the benchmarks."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints, field_validator

from ragcore.tasks.arguments import Args, Source

#: Qdrant matches exact keyword, integer (64-bit signed) and boolean values; a keyword is at most as
#: long as a document id. The integer bound is written `< 2**63`: the OpenAPI document carries
#: bounds as doubles, which state 2**63 exactly and 2**63 - 1 not at all.
FilterValue = (
    Annotated[str, Field(max_length=512)] | Annotated[int, Field(ge=-(2**63), lt=2**63)] | bool
)
#: A payload field: `document_id`, or a metadata field such as `category` or `chunk_index`.
FilterField = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
#: The query needs a character that is not whitespace (and, like all text, no NUL).
_HAS_TEXT = r"^[^\x00]*[^\s\x00][^\x00]*$"


def _only_field_names(schema: dict[str, Any]) -> None:
    # pydantic states the key pattern as patternProperties; without this, other keys look allowed.
    for branch in schema.get("anyOf", []):
        if branch.get("type") == "object":
            branch["additionalProperties"] = False


class QueryRequest(Args):
    """Unknown fields and NUL characters are refused (Args), like every other request body."""

    user_id: str = Field(min_length=1, max_length=256)
    # The pattern is for the schema only: whitespace is judged by str.strip() below, as Python knows
    # it.
    query: str = Field(min_length=1, max_length=4000, json_schema_extra={"pattern": _HAS_TEXT})
    conversation_id: str | None = Field(None, min_length=1, max_length=64)
    top_k: int = Field(5, ge=1, le=50)
    filters: dict[FilterField, FilterValue] | None = Field(
        None, max_length=16, json_schema_extra=_only_field_names
    )

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must contain a non-whitespace character")
        return value


class QueryAnswer(BaseModel):
    answer: str
    sources: list[Source]
    conversation_id: str
    message_id: str
    tokens_used: int
    processing_time_ms: float
    cached: bool
