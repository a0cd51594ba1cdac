"""What the query route answers besides `QueryAnswer` (whose model is the query service's own)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class LimitReached(BaseModel):
    detail: str
    daily_limit: int
    resets_at: datetime
