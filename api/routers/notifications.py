"""System notifications to users (admin key): sent by `send_system_notification`, one content per
Idempotency-Key."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, HTTPException, status

from api.auth import AdminKey
from api.deps import CeleryDep, SessionDep, commit
from api.errors import BROKER_DOWN, ERROR_RESPONSES, ErrorBody
from api.schemas.sync import TaskAccepted
from ragcore import notification_keys
from ragcore.tasks import contracts, dispatch
from ragcore.tasks.arguments import SystemNotificationArgs

router = APIRouter(
    prefix="/api/v1/notifications", tags=["notifications"], responses=ERROR_RESPONSES
)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **BROKER_DOWN,
        409: {
            "model": ErrorBody,
            "description": "This idempotency_key was already used for other content",
        },
    },
)
def send_notification(
    body: SystemNotificationArgs, _: AdminKey, session: SessionDep, celery: CeleryDep
) -> TaskAccepted:
    """Send a notification to `user_ids`. Without `idempotency_key` the task id is the key; a key
    already sent with other content is a 409 (Users would drop it as a duplicate), the same
    content again is sent again and counted once."""
    payload = body.model_dump(mode="json", exclude_none=True)
    task_id = str(uuid.uuid4())
    if body.idempotency_key is not None:
        content = body.model_dump(mode="json", exclude={"idempotency_key"})
        try:
            notification_keys.claim(session, body.idempotency_key, content, task_id)
        except notification_keys.KeyReused as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        commit(session)  # the key stands for this content before any worker sends it
    return TaskAccepted(
        task_id=dispatch.send(celery, contracts.SEND_SYSTEM_NOTIFICATION, payload, task_id=task_id)
    )
