"""``agentpod keys``: the encryption keyring."""

from __future__ import annotations

import typer

app = typer.Typer(help="Encryption keys for provider credentials.", no_args_is_help=True)


@app.command()
def generate(key_id: str = typer.Option("k1", help="Id to give the key (kept in every ciphertext).")) -> None:
    """Print a new random AES-256 keyring entry for AGENTPOD_ENCRYPTION_KEYS."""
    from agentpod.security.keyring import generate_entry, parse_key

    entry = generate_entry(key_id)
    parse_key(entry)  # a typo'd key id is reported here, not at the next start-up
    typer.echo(entry)


@app.command()
def rotate(batch_size: int = typer.Option(200, min=1, help="Rows re-encrypted per transaction.")) -> None:
    """Re-encrypt every stored secret with the first key of AGENTPOD_ENCRYPTION_KEYS (progress bar)."""
    from agentpod.cli.keys_rotate import run

    raise typer.Exit(run(batch_size=batch_size))
