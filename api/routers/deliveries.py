"""Failed deliveries to neighbours: list them and re-drive them."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/deliveries", tags=["deliveries"])
