"""Bodies of the auth endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import EmailStr, Field

from api.schemas.base import RequestBody, ResponseBody

Password = Annotated[str, Field(min_length=8, max_length=256, description="8 to 256 characters.")]


class SignUpRequest(RequestBody):
    """Create an account."""

    email: Annotated[EmailStr, Field(max_length=320)]
    password: Password
    name: Annotated[str, Field(min_length=1, max_length=200)]


class SignInRequest(RequestBody):
    """Exchange email and password for a token."""

    email: Annotated[EmailStr, Field(max_length=320)]
    password: Annotated[str, Field(min_length=1, max_length=256)]


class UserOut(ResponseBody):
    """A user's public profile."""

    id: str
    email: str
    name: str
    email_verified: bool
    image: str | None
    created_at: datetime


class TokenResponse(ResponseBody):
    """A bearer token (shown once) and who it belongs to."""

    token: str
    token_type: str = "bearer"
    expires_at: datetime
    user: UserOut
