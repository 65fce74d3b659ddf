"""``agentpod sandboxes``: operator tools for sandboxes."""

from __future__ import annotations

import asyncio

import typer

app = typer.Typer(help="Sandboxes.", no_args_is_help=True)


@app.command("import-docker")
def import_docker() -> None:
    """Turn existing `agentpod.*`-labelled containers into rows and workflows (idempotent)."""
    from agentpod.cli.sandbox_import import import_from_docker

    report = asyncio.run(import_from_docker())
    typer.echo(
        f"imported {report.imported}, already known {report.known}, "
        f"skipped {report.skipped} (unlabelled or unknown owner)"
    )
    for line in report.problems:
        typer.echo(f"  - {line}", err=True)
