"""``agentpod db``: schema migrations."""

from __future__ import annotations

import typer

app = typer.Typer(help="Database schema.", no_args_is_help=True)


@app.command()
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Migrate the database to the latest schema (idempotent)."""
    from store.migrate import upgrade as run_upgrade

    url = run_upgrade(revision)
    typer.echo(f"database at {revision}: {url}")


@app.command()
def current() -> None:
    """Print the schema revision the database is at."""
    import asyncio

    from store.engine import create_engine
    from store.migrate import current_revision

    async def _read() -> str | None:
        engine = create_engine()
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    typer.echo(asyncio.run(_read()) or "(empty database)")
