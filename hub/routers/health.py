"""Liveness and readiness; no authentication."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str


@router.get("/health", response_model=Health, summary="Liveness")
async def health() -> Health:
    return Health(status="ok")
