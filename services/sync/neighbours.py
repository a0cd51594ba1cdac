"""The sync worker's neighbours: its Qdrant store and Ingest client, one per worker process, and
the rule that a failed write to Qdrant still invalidates cached answers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from celery import Celery

from ragcore.clients.breaker import breaker
from ragcore.clients.ingest import IngestClient
from ragcore.clients.transport import shared_http_client
from ragcore.clients.vectorstore import VectorStore
from ragcore.db import session_scope
from ragcore.query.cache import bump_data_version
from ragcore.settings import Settings
from ragcore.tasks import contracts
from ragcore.tasks.app import app_settings

log = logging.getLogger(__name__)


@lru_cache
def store(app: Celery) -> VectorStore:
    # One per worker process (created after the prefork fork, on first use), from its app's
    # settings.
    vectors = VectorStore(app_settings(app))
    vectors.ensure_collection()
    return vectors


def ingest(settings: Settings) -> IngestClient:
    return IngestClient(
        shared_http_client(settings.neighbours),
        settings.neighbours.ingest_url,
        settings.neighbours.ingest_token,
        breaker(contracts.INGEST, settings),
    )


@contextmanager
def writes_qdrant() -> Iterator[None]:
    """Whatever fails inside may have written to Qdrant already: cached answers must not outlive
    that."""
    try:
        yield
    except BaseException:
        try:
            with session_scope() as session:
                bump_data_version(session)
        except Exception:
            log.exception("could not bump the data version after a failed write to Qdrant")
        raise
