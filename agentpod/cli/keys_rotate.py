"""``agentpod keys rotate``: re-encrypt every stored secret with the first key of the keyring.

Put the new key first in ``AGENTPOD_ENCRYPTION_KEYS`` (keeping the old ones after it), restart the
API and worker so new writes use it, run this, then drop the old keys. It is safe to run while the
system serves and to run again: only values sealed with another key are touched, in small batches,
and each is written with a compare-and-swap, so a key the user saves meanwhile is never overwritten.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentpod.security.encryption import DecryptionError, current_prefix, reencrypt
from agentpod.security.keyring import Keyring, load_keyring
from agentpod.settings import Settings, get_settings
from agentpod.store import opencode_config, providers
from agentpod.store.tables import ProviderCredential, UserOpencodeConfig

DEFAULT_BATCH = 200


@dataclass(frozen=True)
class _Column:
    """One column of ciphertexts, and how to name the context each value is sealed under."""

    model: Any
    column: str
    where: Callable[[Any], str]


def _provider_where(field: str) -> Callable[[Any], str]:
    return lambda row: providers.where(row.user_id, row.provider_id, field)


_COLUMNS = [
    *(
        _Column(ProviderCredential, column, _provider_where(field))
        for column, field in providers.ENCRYPTED_FIELDS.items()
    ),
    _Column(UserOpencodeConfig, "secrets_encrypted", lambda row: opencode_config.secrets_where(row.user_id)),
]


@dataclass
class Rotation:
    """What a run did."""

    rotated: int = 0
    failed: list[str] = field(default_factory=list)


def _stale(target: _Column, keyring: Keyring) -> Any:
    column = getattr(target.model, target.column)
    prefix = current_prefix(keyring)
    # substr, not LIKE: key ids may contain '_', which LIKE reads as a wildcard.
    return column.is_not(None) & (func.substr(column, 1, len(prefix)) != prefix)


async def pending(sessions: async_sessionmaker[AsyncSession], keyring: Keyring) -> int:
    """How many stored values are sealed with a key other than the first."""
    total = 0
    async with sessions() as db:
        for target in _COLUMNS:
            total += await db.scalar(select(func.count()).select_from(target.model).where(_stale(target, keyring))) or 0
    return total


async def rotate(
    sessions: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    *,
    batch_size: int = DEFAULT_BATCH,
    advance: Callable[[int], None] = lambda done: None,
) -> Rotation:
    """Re-encrypt every stale value with the first key; values that cannot be decrypted are reported."""
    result = Rotation()
    for target in _COLUMNS:
        model, column = target.model, getattr(target.model, target.column)
        after = ""
        while True:
            async with sessions() as db:
                rows = (
                    await db.scalars(
                        select(model)
                        .where(_stale(target, keyring), model.id > after)
                        .order_by(model.id)
                        .limit(batch_size)
                    )
                ).all()
                if not rows:
                    break
                for row in rows:
                    old = getattr(row, target.column)
                    try:
                        new = reencrypt(keyring, old, where=target.where(row))
                    except DecryptionError as error:
                        result.failed.append(f"{model.__tablename__}.{target.column} of row {row.id}: {error}")
                        continue
                    # Compare-and-swap: a value rewritten meanwhile is already sealed with the first key.
                    changed = await db.execute(
                        update(model)
                        .where(model.id == row.id, column == old)
                        .values({target.column: new})
                        .execution_options(synchronize_session=False)
                    )
                    result.rotated += int(getattr(changed, "rowcount", 0) or 0)
                await db.commit()
                after = rows[-1].id
            advance(len(rows))
    return result


async def rotate_command(settings: Settings, *, batch_size: int = DEFAULT_BATCH, console: Console | None = None) -> int:
    """The command: count, rotate with a progress bar, report. Exit code 1 if a value failed."""
    from agentpod.store.engine import create_engine, session_factory
    from agentpod.store.migrate import assert_schema_current

    console = console or Console()
    keyring = load_keyring(settings)
    key_id = keyring.primary[0]
    engine = create_engine(settings.resolved_database_url)
    try:
        await assert_schema_current(engine)
        sessions = session_factory(engine)
        total = await pending(sessions, keyring)
        if total == 0:
            console.print(f"Nothing to do: every stored secret is sealed with key {key_id!r}.")
            return 0
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(f"Re-encrypting with key {key_id!r}", total=total)
            result = await rotate(
                sessions, keyring, batch_size=batch_size, advance=lambda done: progress.advance(task, done)
            )
    finally:
        await engine.dispose()
    console.print(f"Re-encrypted {result.rotated} secret(s) with key {key_id!r}.")
    if result.failed:
        console.print(f"[red]{len(result.failed)} value(s) could not be decrypted and were left as they are:[/red]")
        for line in result.failed:
            console.print(f"  {line}", markup=False)
        console.print("Keep their keys in the keyring, or have the users enter those secrets again.")
        return 1
    console.print(f"Every stored secret now uses key {key_id!r}: the other keys can leave the keyring.")
    return 0


def run(batch_size: int = DEFAULT_BATCH) -> int:
    """Entry point for ``agentpod keys rotate``."""
    return asyncio.run(rotate_command(get_settings(), batch_size=batch_size))
