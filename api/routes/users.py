"""The signed-in user's own profile."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentUser
from api.errors import ERROR_RESPONSES
from api.schemas.auth import UserOut

router = APIRouter(prefix="/api/users", tags=["users"], responses=ERROR_RESPONSES)


@router.get("/me")
async def me(user: CurrentUser) -> UserOut:
    """Who the token belongs to."""
    return UserOut.model_validate(user)
