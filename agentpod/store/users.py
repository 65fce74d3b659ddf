"""Queries for users and their bearer-token sessions."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from agentpod.security.tokens import new_token, token_digest
from agentpod.store.base import utcnow
from agentpod.store.sqlite_inline import inline_reads
from agentpod.store.tables import AuthSession, User


class EmailTakenError(Exception):
    """Another account already uses this email."""


def normalize_email(email: str) -> str:
    """Emails are unique regardless of case: stored and looked up lower-cased."""
    return email.strip().lower()


async def create_user(db: AsyncSession, *, email: str, name: str, password_hash: str) -> User:
    """Insert a user; raises :class:`EmailTakenError` on a duplicate (race-free: the UNIQUE decides)."""
    user = User(email=normalize_email(email), name=name, password_hash=password_hash)
    db.add(user)
    try:
        await db.flush()
    except IntegrityError as exc:
        await db.rollback()
        raise EmailTakenError(email) from exc
    return user


async def get_user_by_email(db: AsyncSession, email: str) -> User | None:
    """The user with this email, any case."""
    return await db.scalar(select(User).where(User.email == normalize_email(email)))


async def issue_token(
    db: AsyncSession,
    user: User,
    *,
    ttl: timedelta,
    ip_address: str | None = None,
    user_agent: str | None = None,
) -> tuple[str, AuthSession]:
    """Create a session; returns the clear token (shown once) and the stored row."""
    token = new_token()
    now = utcnow()
    session = AuthSession(
        user_id=user.id,
        token_hash=token_digest(token),
        created_at=now,
        expires_at=now + ttl,
        ip_address=ip_address,
        user_agent=(user_agent or "")[:512] or None,
    )
    db.add(session)
    await db.flush()
    return token, session


# Every authenticated request runs this: built once, run with bound parameters (building the expression
# and its cache key per call was a tenth of a chat page's CPU).
_TOKEN_LOOKUP = (
    select(User, AuthSession)
    .join(AuthSession, AuthSession.user_id == User.id)
    .where(
        AuthSession.token_hash == bindparam("token_hash"),
        AuthSession.revoked_at.is_(None),
        AuthSession.expires_at > bindparam("now"),
        User.locked_at.is_(None),
    )
)


async def resolve_token(
    db: AsyncSession, token: str, *, now: datetime | None = None
) -> tuple[User, AuthSession] | None:
    """The user and session behind a live token: not expired, not revoked, account not locked."""
    now = now or utcnow()
    with inline_reads():
        row = (await db.execute(_TOKEN_LOOKUP, {"token_hash": token_digest(token), "now": now})).first()
    return (row[0], row[1]) if row else None


async def revoke_session(db: AsyncSession, session_id: str) -> None:
    """Revoke one session (sign-out, refresh)."""
    await db.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


async def revoke_all_sessions(db: AsyncSession, user_id: str) -> int:
    """Revoke every live session of a user; returns how many."""
    result = await db.execute(
        update(AuthSession)
        .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0)
