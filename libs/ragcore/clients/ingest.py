"""Client of the Ingest system's embedding feed (SPEC §5)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from ragcore.clients.breaker import Breaker


class IngestError(Exception):
    """Ingest answered something that breaks the SPEC §5 contract."""


class DocumentNotFound(IngestError):
    """Ingest does not know the document (404)."""

    def __init__(self, document_id: str) -> None:
        super().__init__(f"Ingest does not know document {document_id!r}")
        self.document_id = document_id


@dataclass(frozen=True, slots=True)
class Chunk:
    """One embedded chunk of a document, as Ingest serves it."""

    id: str
    document_id: str
    text: str
    vector: list[float]
    metadata: dict[str, Any]
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the feed; `next_cursor` is None on the last page."""

    items: list[Chunk]
    next_cursor: str | None


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, the form SPEC §5 asks for `since`."""
    if moment.tzinfo is None:
        raise ValueError("a timestamp sent to Ingest needs a timezone")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _chunk(item: dict[str, Any]) -> Chunk:
    try:
        updated_at = datetime.fromisoformat(item["updated_at"])
        if updated_at.tzinfo is None:
            raise ValueError(f"updated_at {item['updated_at']!r} has no timezone")
        return Chunk(
            id=str(item["id"]),
            document_id=str(item["document_id"]),
            text=item["text"],
            vector=item["vector"],
            metadata=item.get("metadata") or {},
            updated_at=updated_at,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise IngestError(f"malformed item from Ingest: {exc!r}") from exc


class IngestClient:
    """Reads chunks and their vectors from Ingest over a caller-owned httpx client."""

    def __init__(
        self,
        client: httpx.Client,
        base_url: str,
        token: str | None = None,
        gate: Breaker | None = None,
    ) -> None:
        self._client = client
        self._gate = gate
        self._base = base_url.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def _get(self, path: str, params: dict[str, str | int] | None = None) -> Any:
        if self._gate is None:
            return self._fetch(path, params)
        # BreakerOpen while Ingest is down
        return self._gate.call(lambda: self._fetch(path, params))[0]

    def _fetch(self, path: str, params: dict[str, str | int] | None) -> Any:
        response = self._client.get(self._base + path, params=params, headers=self._headers)
        response.raise_for_status()
        return orjson.loads(response.content)

    def iter_pages(
        self, since: datetime | None = None, limit: int = 100, cursor: str | None = None
    ) -> Iterator[Page]:
        """Yield every page of chunks with `updated_at >= since`, following `next_cursor` (from
        `cursor`)."""
        params: dict[str, str | int] = {"limit": limit}
        if since is not None:
            params["since"] = format_timestamp(since)
        if cursor is not None:
            params["cursor"] = cursor
        while True:
            body = self._get("/api/v1/embeddings", params)
            try:
                page = Page(
                    items=[_chunk(item) for item in body["items"]],
                    next_cursor=body.get("next_cursor"),
                )
            except (KeyError, TypeError) as exc:
                raise IngestError(f"malformed page from Ingest: {exc!r}") from exc
            yield page
            if page.next_cursor is None:
                return
            params["cursor"] = page.next_cursor

    def document_embeddings(self, document_id: str) -> list[Chunk]:
        """Every chunk of one document; raises DocumentNotFound when Ingest answers 404."""
        try:
            body = self._get(f"/api/v1/documents/{quote(document_id, safe='')}/embeddings")
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 404:
                raise DocumentNotFound(document_id) from exc
            raise
        try:
            return [_chunk(item) for item in body["items"]]
        except (KeyError, TypeError) as exc:
            raise IngestError(f"malformed document answer from Ingest: {exc!r}") from exc
