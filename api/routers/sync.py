"""Sync endpoints: start syncs, delete a document's embeddings, receive Ingest's change events."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.auth import SyncKey
from api.deps import CeleryDep, SessionDep, commit
from api.errors import BROKER_DOWN, ERROR_RESPONSES, NOT_STORED_RESPONSE
from api.schemas.sync import DocumentId, EventsAccepted, TaskAccepted
from ragcore import sync_events
from ragcore.tasks import contracts, dispatch
from ragcore.tasks.arguments import SyncEmbeddingsArgs

router = APIRouter(prefix="/api/v1/sync", tags=["sync"], responses=ERROR_RESPONSES)


@router.post("/trigger-full-sync", status_code=status.HTTP_202_ACCEPTED, responses=BROKER_DOWN)
def trigger_full_sync(_: SyncKey, celery: CeleryDep) -> TaskAccepted:
    """Re-copy everything from Ingest and drop what it no longer has."""
    return TaskAccepted(task_id=dispatch.send(celery, contracts.TRIGGER_FULL_SYNC))


@router.post("/trigger-sync", status_code=status.HTTP_202_ACCEPTED, responses=BROKER_DOWN)
def trigger_sync(
    _: SyncKey, celery: CeleryDep, body: SyncEmbeddingsArgs | None = None
) -> TaskAccepted:
    """Copy what changed since `since` (default: since the last successful incremental sync)."""
    kwargs = body.model_dump(mode="json", exclude_none=True) if body else {}
    return TaskAccepted(task_id=dispatch.send(celery, contracts.SYNC_EMBEDDINGS, kwargs))


@router.delete(
    "/document/{document_id:path}", status_code=status.HTTP_202_ACCEPTED, responses=BROKER_DOWN
)
def delete_document(document_id: DocumentId, _: SyncKey, celery: CeleryDep) -> TaskAccepted:
    """Remove every point of one document from Qdrant; a document id may contain `/` (sent as is, or
    as %2F)."""
    return TaskAccepted(
        task_id=dispatch.send(
            celery, contracts.DELETE_DOCUMENT_EMBEDDINGS, {"document_id": document_id}
        )
    )


@router.post("/events", status_code=status.HTTP_202_ACCEPTED, responses=NOT_STORED_RESPONSE)
def receive_events(
    body: sync_events.ChangeEvents, _: SyncKey, session: SessionDep
) -> EventsAccepted:
    """Store Ingest's change events in the durable sync queue (all or nothing), committed before the
    202."""
    stored = sync_events.store(session, body.events)
    commit(session)
    return EventsAccepted(stored=stored)
