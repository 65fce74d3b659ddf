"""``agentpod keys``: the encryption keyring."""

from __future__ import annotations

import typer

app = typer.Typer(help="Encryption keys for provider credentials.", no_args_is_help=True)


@app.command()
def generate(key_id: str = typer.Option("k1", help="Id to give the key (kept in every ciphertext).")) -> None:
    """Print a new random AES-256 keyring entry for AGENTPOD_ENCRYPTION_KEYS."""
    from security.keyring import generate_entry, parse_key

    entry = generate_entry(key_id)
    parse_key(entry)  # a typo'd key id is reported here, not at the next start-up
    typer.echo(entry)
