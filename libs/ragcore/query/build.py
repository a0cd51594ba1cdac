"""The query service of one process, wired from the settings."""

from __future__ import annotations

from ragcore.clients.embedder import Embedder, HashingEmbedder, OpenAIEmbedder
from ragcore.clients.transport import shared_http_client
from ragcore.clients.vectorstore import VectorStore
from ragcore.query.cache import HotCache
from ragcore.query.generator import ChatGenerator, ExtractiveGenerator, Generator
from ragcore.query.service import QueryService, TolerantHotCache
from ragcore.redis_clients import redis_client
from ragcore.settings import Settings

#: The hot cache is an optimisation: never let a slow Redis hold a query longer than this.
HOT_CACHE_TIMEOUT_SECONDS = 0.5


def make_embedder(settings: Settings) -> Embedder:
    """The configured OpenAI-compatible endpoint, else the local embedder the Ingest stand-in
    uses."""
    if settings.models.embedding_url:
        return OpenAIEmbedder(
            shared_http_client(settings.neighbours),
            settings.models.embedding_url,
            settings.models.embedding_model,
            settings.models.embedding_token,
        )
    return HashingEmbedder(settings.qdrant.vector_size)


def make_generator(settings: Settings) -> Generator:
    """The configured chat endpoint, else the extractive answer that needs no model."""
    if settings.models.chat_url:
        return ChatGenerator(
            shared_http_client(settings.neighbours),
            settings.models.chat_url,
            settings.models.chat_model,
            settings.models.chat_token,
        )
    return ExtractiveGenerator()


def build_service(settings: Settings) -> QueryService:
    client = redis_client(
        settings.redis, settings.redis.cache, read_timeout=HOT_CACHE_TIMEOUT_SECONDS
    )
    hot = TolerantHotCache(
        HotCache(client, settings.redis.cache_prefix, settings.redis.cache_ttl_seconds)
    )
    return QueryService(
        settings, VectorStore(settings), make_embedder(settings), make_generator(settings), hot
    )
