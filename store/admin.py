"""`regdiff-admin`: operator commands that talk to the database directly (never over HTTP).

    regdiff-admin keys create --tenant acme   # prints the new key alone on its last line, once
    regdiff-admin keys list [--tenant acme]
    regdiff-admin keys revoke key_...

Also `python -m store.admin ...`. It reads the same REGDIFF_* settings as the api, so it
reaches the same database (run `alembic upgrade head` first on a new one).
"""

from __future__ import annotations

from typing import Annotated

import typer

from store import keys as store_keys
from store.db import session_scope
from store.tables import as_utc

app = typer.Typer(help="regdiff operator commands", no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(help="API keys: create, list, revoke", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def create(tenant: Annotated[str, typer.Option(help="the tenant the key acts as")]) -> None:
    """Mint a key for TENANT. It is shown once, on the last line; only its SHA-256 is stored."""
    try:
        store_keys.check_tenant(tenant)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tenant") from None
    with session_scope() as session:
        row, key = store_keys.create_key(session=session, tenant=tenant)
        key_id = row.id
    typer.echo(f"created {key_id} for tenant {tenant}; store the key now, it is not shown again:", err=True)
    typer.echo(key)


@keys_app.command("list")
def list_(tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None) -> None:
    """Key ids, tenants and dates (never the keys, which are not stored)."""
    with session_scope() as session:
        rows = store_keys.list_keys(session=session, tenant=tenant)
        lines = [
            f"{r.id}\t{r.tenant}\t{as_utc(r.created_at).isoformat(timespec='seconds')}\t"
            + (f"revoked {as_utc(r.revoked_at).isoformat(timespec='seconds')}" if r.revoked_at else "active")
            for r in rows
        ]
    typer.echo("id\ttenant\tcreated\tstatus")
    for line in lines:
        typer.echo(line)


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="the key's id (see `keys list`)")]) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    with session_scope() as session:
        done = store_keys.revoke_key(session=session, key_id=key_id)
    if not done:
        typer.echo(f"no active key with id {key_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


if __name__ == "__main__":
    app()
