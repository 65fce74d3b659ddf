"""The ``agentpod`` command: run the stack, migrate the database, operate the system."""

from __future__ import annotations

import typer

from agentpod.cli import archive, db, keys, sandboxes, serve

app = typer.Typer(help="AgentPod control plane.", no_args_is_help=True, add_completion=False)
app.add_typer(db.app, name="db")
app.add_typer(keys.app, name="keys")
app.add_typer(sandboxes.app, name="sandboxes")
app.add_typer(archive.app, name="archive")
serve.register(app)


@app.command()
def openapi() -> None:
    """Write the OpenAPI document to docs/openapi.json (the mobile app's client is generated from it)."""
    from api.openapi_export import write

    typer.echo(f"wrote {write()}")


def main() -> None:
    """Console-script entry point."""
    app()
