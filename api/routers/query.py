"""The query endpoint: answer from Qdrant, then report in the background."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/query", tags=["query"])
