"""Request and response models of `api.routers.deliveries`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.schemas.tasks import TaskName
from ragcore.deliveries import UNRESOLVED, DeliveryCriteria, DeliveryStatus
from ragcore.tasks.arguments import NO_NUL, Timestamp


class FailedDeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    task_name: str
    task_id: str
    payload: dict[str, Any]
    error: str
    attempts: int
    status: str
    created_at: datetime
    redriven_at: datetime | None
    redrive_task_id: str | None
    next_attempt_at: datetime | None
    waiting_since: datetime | None


class FailedDeliveries(BaseModel):
    deliveries: list[FailedDeliveryOut]
    total: int


class Redriven(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    task_id: str = Field(validation_alias="redrive_task_id")
    status: str


#: A bulk action needs at least one of these, not null: an empty filter would take every delivery.
CRITERIA = ("task_name", "failed_after", "failed_before", "error_contains")


def _state_some_criterion(schema: dict[str, Any]) -> None:
    # The OpenAPI document states the rule that `_some_criterion` enforces.
    schema["anyOf"] = [
        {"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in CRITERIA
    ]


class DeliveryFilter(BaseModel):
    """Which failed or waiting deliveries a bulk action takes; at least one criterion."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_state_some_criterion)

    task_name: TaskName | None = Field(None, description="Only deliveries of this task")
    failed_after: Timestamp | None = Field(None, description="First failed at or after this time")
    failed_before: Timestamp | None = Field(None, description="First failed before this time")
    # No NUL: PostgreSQL cannot compare text with it.
    error_contains: str | None = Field(
        None,
        min_length=1,
        max_length=500,
        pattern=NO_NUL,
        description="Error text contains this (any case)",
    )
    status: Literal["failed", "waiting", "any"] = Field(
        "any", description="failed (an operator's), waiting (automatic), or both"
    )

    @field_validator("failed_after", "failed_before")
    @classmethod
    def _in_utc(cls, moment: datetime | None) -> datetime | None:
        try:
            return moment.astimezone(UTC) if moment is not None else None
        except OverflowError:
            raise ValueError("out of range once in UTC") from None

    @model_validator(mode="after")
    def _some_criterion(self) -> DeliveryFilter:
        if all(getattr(self, name) is None for name in CRITERIA):
            raise ValueError(f"give at least one of {', '.join(CRITERIA)}")
        return self

    def criteria(self) -> DeliveryCriteria:
        return DeliveryCriteria(
            statuses=UNRESOLVED if self.status == "any" else {DeliveryStatus(self.status)},
            task_name=self.task_name.value if self.task_name is not None else None,
            failed_after=self.failed_after,
            failed_before=self.failed_before,
            error_contains=self.error_contains,
        )


class BulkResult(BaseModel):
    matched: int = Field(description="Deliveries the filter took")
