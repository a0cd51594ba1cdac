"""Liveness and readiness."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import SettingsDep
from ragcore.db import get_engine
from ragcore.logs import request_id_var
from ragcore.redis_clients import redis_client

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(settings: SettingsDep) -> JSONResponse:
    """Redis and the database answer; 503 naming what failed (and the request id) otherwise."""
    checks: dict[str, str] = {}
    try:
        redis_client(settings.redis, settings.redis.broker, read_timeout=2).ping()
        checks["redis"] = "ok"
    except Exception as exc:  # what it said is logged under the request id, never answered
        log.warning("readiness: redis unreachable: %s", exc)
        checks["redis"] = "unreachable"
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        log.warning("readiness: database unreachable: %s", exc)
        checks["database"] = "unreachable"
    if all(v == "ok" for v in checks.values()):
        return JSONResponse(status_code=200, content={"status": "ready", "checks": checks})
    return JSONResponse(
        status_code=503,
        content={"status": "unavailable", "checks": checks, "request_id": request_id_var.get()},
    )
