"""What the dead-letter routes answer."""

from __future__ import annotations

import base64
from datetime import datetime

from pydantic import BaseModel, Field

from ragcore.db.models import DeadLetter
from ragcore.deadletters import Reason


class DeadLetterOut(BaseModel):
    id: int
    queue: str
    reason: Reason
    task_name: str | None = Field(description="The task the message named, if it named one")
    task_id: str | None = Field(description="The last one's task id, if it had one")
    detail: str = Field(description="Why no worker could run it")
    body: str = Field(description="The raw body's first bytes as UTF-8 (others as U+FFFD)")
    body_base64: str = Field(description="The same bytes, exactly")
    body_bytes: int = Field(description="The whole body's size")
    body_truncated: bool
    count: int = Field(description="How many times this message came")
    first_seen_at: datetime
    last_seen_at: datetime

    @classmethod
    def of(cls, row: DeadLetter) -> DeadLetterOut:
        return cls(
            id=row.id,
            queue=row.queue,
            reason=Reason(row.reason),
            task_name=row.task_name,
            task_id=row.task_id,
            detail=row.detail,
            body=row.body.decode("utf-8", "replace"),
            body_base64=base64.b64encode(row.body).decode(),
            body_bytes=row.body_bytes,
            body_truncated=len(row.body) < row.body_bytes,
            count=row.count,
            first_seen_at=row.first_seen_at,
            last_seen_at=row.last_seen_at,
        )


class DeadLetterPage(BaseModel):
    dead_letters: list[DeadLetterOut]
    next_cursor: int | None = Field(
        description="Pass as `cursor` for the next page; null at the end"
    )
