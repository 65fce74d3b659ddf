"""Sign-up, sign-in, refresh and sign-out with opaque bearer tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Request, Response, status

from agentpod.security.passwords import hash_password, verify_password
from agentpod.store import users
from agentpod.store.tables import AuthSession, User
from api.audit import AuditEntry, audit
from api.deps import Auth, ClientIp, DbSession, SettingsDep
from api.errors import ERROR_RESPONSES, Conflict, Forbidden, Unauthorized
from api.schemas.auth import SignInRequest, SignUpRequest, TokenResponse, UserOut

router = APIRouter(prefix="/api/auth", tags=["auth"], responses=ERROR_RESPONSES)


async def _token_response(
    db: DbSession, user: User, settings: SettingsDep, ip: str | None, request: Request
) -> TokenResponse:
    token, session = await users.issue_token(
        db,
        user,
        ttl=timedelta(hours=settings.auth_token_ttl_hours),
        ip_address=ip,
        user_agent=request.headers.get("user-agent"),
    )
    await db.commit()
    return TokenResponse(token=token, expires_at=session.expires_at, user=UserOut.model_validate(user))


@router.post("/sign-up", status_code=status.HTTP_201_CREATED)
async def sign_up(
    body: SignUpRequest,
    db: DbSession,
    settings: SettingsDep,
    ip: ClientIp,
    request: Request,
    entry: Annotated[AuditEntry, audit("auth.signup", entity="user", public=True)],
) -> TokenResponse:
    """Create an account and sign it in."""
    password_hash = await hash_password(body.password)
    try:
        user = await users.create_user(db, email=body.email, name=body.name, password_hash=password_hash)
    except users.EmailTakenError:
        raise Conflict("an account with this email already exists", code="email_taken") from None
    entry.user_id = user.id
    return await _token_response(db, user, settings, ip, request)


@router.post("/sign-in")
async def sign_in(
    body: SignInRequest,
    db: DbSession,
    settings: SettingsDep,
    ip: ClientIp,
    request: Request,
    entry: Annotated[AuditEntry, audit("auth.login", entity="user", public=True)],
) -> TokenResponse:
    """Exchange email and password for a token. Unknown email and wrong password look identical."""
    user = await users.get_user_by_email(db, body.email)
    # End the read before the password check: waiting for a free hashing thread can take seconds in a
    # burst, and sign-ins holding their connections meanwhile emptied the pool for every other request.
    # (A commit, not a rollback: it keeps ``user`` loaded.)
    await db.commit()
    # An unknown email is checked against a dummy hash: the same work, so timing tells nothing.
    if not await verify_password(user.password_hash if user else None, body.password) or user is None:
        raise Unauthorized("wrong email or password", code="invalid_credentials")
    if user.locked_at is not None:
        raise Forbidden("this account is being deleted", code="account_locked")
    entry.user_id = user.id
    return await _token_response(db, user, settings, ip, request)


@router.post("/refresh", dependencies=[audit("auth.token_refresh", entity="user")])
async def refresh(auth: Auth, db: DbSession, settings: SettingsDep, ip: ClientIp, request: Request) -> TokenResponse:
    """Swap the current token for a fresh one; the old token stops working at once."""
    user, session = auth
    await users.revoke_session(db, session.id)
    return await _token_response(db, user, settings, ip, request)


@router.post("/sign-out", status_code=status.HTTP_204_NO_CONTENT, dependencies=[audit("auth.logout", entity="user")])
async def sign_out(auth: Auth, db: DbSession) -> Response:
    """Revoke the current token."""
    session: AuthSession = auth[1]
    await users.revoke_session(db, session.id)
    await db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
