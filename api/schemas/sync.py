"""What the sync routes take and answer (SPEC §3); the names are the OpenAPI schema names."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from pydantic import BaseModel

from ragcore.tasks.arguments import NO_NUL

#: Any document id Ingest may send, `/` included (the route takes the rest of the path).
DocumentId = Annotated[str, Path(min_length=1, max_length=512, pattern=NO_NUL)]


class TaskAccepted(BaseModel):
    task_id: str


class EventsAccepted(BaseModel):
    stored: int
