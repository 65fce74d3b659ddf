"""``agentpod db``: schema migrations."""

from __future__ import annotations

import typer

app = typer.Typer(help="Database schema.", no_args_is_help=True)


@app.command()
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Migrate the database to the latest schema (idempotent)."""
    from agentpod.store.migrate import upgrade as run_upgrade

    url = run_upgrade(revision)
    typer.echo(f"database at {revision}: {url}")


@app.command()
def current() -> None:
    """Print the schema revision the database is at."""
    import asyncio

    from agentpod.store.engine import create_engine
    from agentpod.store.migrate import current_revision

    async def _read() -> str | None:
        engine = create_engine()
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    typer.echo(asyncio.run(_read()) or "(empty database)")


@app.command()
def revision(message: str = typer.Argument(..., help="What the migration does.")) -> None:
    """Autogenerate the next migration from the models (against a scratch SQLite database)."""
    import asyncio
    import tempfile
    from pathlib import Path

    from agentpod.store.engine import create_engine
    from agentpod.store.migrate import autogenerate_revision, head_revision

    head = head_revision() or "0000"
    rev_id = f"{int(head[:4]) + 1:04d}"

    async def _run(path: Path) -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await autogenerate_revision(engine, message, rev_id)
        finally:
            await engine.dispose()

    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(_run(Path(scratch) / "scratch.db"))
    typer.echo(f"wrote migration {rev_id}; review it (and test it on PostgreSQL) before committing")
