"""The query path: answer a question from Qdrant, store it, and queue its reports."""

from ragcore.query.build import build_service
from ragcore.query.generator import ChatGenerator, ExtractiveGenerator, Generated
from ragcore.query.limits import LimitExceeded
from ragcore.query.schema import QueryAnswer, QueryRequest
from ragcore.query.service import (
    ConversationNotFound,
    QueryService,
    UpstreamUnavailable,
)

__all__ = [
    "ChatGenerator",
    "ConversationNotFound",
    "ExtractiveGenerator",
    "Generated",
    "LimitExceeded",
    "QueryAnswer",
    "QueryRequest",
    "QueryService",
    "UpstreamUnavailable",
    "build_service",
]
