"""Clients of the neighbours: the shared httpx transport, Ingest, Users, the embedder, Qdrant.

The names are re-exported lazily: every deployable imports `clients.transport`, and only those that
need them should load qdrant-client and numpy (import time, and what Pants puts in each image).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragcore.clients.embedder import Embedder, HashingEmbedder, OpenAIEmbedder
    from ragcore.clients.ingest import Chunk, DocumentNotFound, IngestClient, IngestError, Page
    from ragcore.clients.transport import is_retryable, make_http_client, shared_http_client
    from ragcore.clients.users import UsersClient
    from ragcore.clients.vectorstore import CollectionMismatch, Hit, VectorStore, point_id

_HOME = {
    **dict.fromkeys(["Embedder", "HashingEmbedder", "OpenAIEmbedder"], "embedder"),
    **dict.fromkeys(["Chunk", "DocumentNotFound", "IngestClient", "IngestError", "Page"], "ingest"),
    **dict.fromkeys(["is_retryable", "make_http_client", "shared_http_client"], "transport"),
    "UsersClient": "users",
    **dict.fromkeys(["CollectionMismatch", "Hit", "VectorStore", "point_id"], "vectorstore"),
}
__all__ = [
    "Chunk", "CollectionMismatch", "DocumentNotFound", "Embedder", "HashingEmbedder", "Hit",
    "IngestClient", "IngestError", "OpenAIEmbedder", "Page", "UsersClient", "VectorStore",
    "is_retryable", "make_http_client", "point_id", "shared_http_client",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOME[name]}"), name)
