"""The deliveries the console lists and acts on: the filter of the JSON API's bulk actions, read
from a page's query string or an action's form."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, Request
from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api.schemas.deliveries import CRITERIA, DeliveryFilter
from ragcore.db import rows_affected
from ragcore.db.models import FailedDelivery
from ragcore.deliveries import UNRESOLVED, DeliveryStatus
from ragcore.tasks import contracts

STATUSES = ("any", DeliveryStatus.WAITING.value, DeliveryStatus.FAILED.value)
NAMES = sorted(name for n in contracts.neighbours() for name in contracts.deliveries_to(n))
FIELDS = (*CRITERIA, "status")


def _message(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or 'filter'}: {e['msg']}" for e in exc.errors()
    )


def parse(values: Mapping[str, Any]) -> DeliveryFilter | str:
    """The filter the values give, or what is wrong with them. No criterion but a status lists
    every delivery of that status (a bulk action still refuses it: see `bulk`)."""
    given = {k: values[k] for k in FIELDS if values.get(k)}
    status = given.get("status", "any")
    if status not in STATUSES:
        return f"status: {status!r} is not one of {', '.join(STATUSES)}"
    if not any(k in given for k in CRITERIA):
        return DeliveryFilter.model_construct(status=status, **dict.fromkeys(CRITERIA))
    try:
        return DeliveryFilter.model_validate(given)
    except ValidationError as exc:
        return _message(exc)


def bulk(values: Mapping[str, Any]) -> DeliveryFilter | str:
    """The filter of a bulk action, validated as POST /api/v1/deliveries/redrive validates it."""
    try:
        return DeliveryFilter.model_validate({k: values[k] for k in FIELDS if values.get(k)})
    except ValidationError as exc:
        return _message(exc)


def query_string(f: DeliveryFilter) -> str:
    return urlencode(
        {
            k: v.isoformat() if hasattr(v, "isoformat") else getattr(v, "value", v)
            for k, v in f.model_dump(include=set(FIELDS)).items()
            if v is not None
        }
    )


def matching(session: Session, f: DeliveryFilter, limit: int) -> tuple[list[FailedDelivery], int]:
    """The newest `limit` deliveries the filter takes, and how many it takes in all."""
    where = f.criteria().where()
    total = session.scalar(select(func.count()).select_from(FailedDelivery).where(*where)) or 0
    rows = session.scalars(
        select(FailedDelivery).where(*where).order_by(FailedDelivery.id.desc()).limit(limit)
    ).all()
    return list(rows), int(total)


def discard_one(session: Session, delivery_id: int) -> bool:
    """Discard one failed or waiting delivery; False when it is neither (or unknown)."""
    return bool(
        rows_affected(
            session,
            update(FailedDelivery)
            .where(FailedDelivery.id == delivery_id, FailedDelivery.status.in_(list(UNRESOLVED)))
            .values(status=DeliveryStatus.DISCARDED, next_attempt_at=None),
        )
    )


def _from_query(request: Request) -> DeliveryFilter | str:
    return parse(request.query_params)


FilterDep = Annotated[DeliveryFilter | str, Depends(_from_query)]
