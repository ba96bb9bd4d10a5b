"""``headrace tokens``: create, list and revoke the service's bearer tokens (roles and tenants).

The store is ``--store PATH``, else ``$HEADRACE_TOKENS``, else ``tokens.json`` under ``$HEADRACE_HOME``,
the file a running ``headrace serve`` reads (it notices changes at the next request). Creating and
revoking are appended to the audit log like the service's own changes.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import click

from engine.cli.common import friendly

_STORE = click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False),
    help="The token store (default: HEADRACE_TOKENS, else $HEADRACE_HOME/tokens.json).",
)


@click.group()
def tokens() -> None:
    """The service's bearer tokens: each has a role (viewer, operator, admin) and tenants."""


@tokens.command()
@click.option(
    "--role",
    type=click.Choice(["viewer", "operator", "admin"]),
    required=True,
    help="viewer: reads its tenants' runs; operator: also submits, cancels, resumes; admin: also "
    "manages tokens and schedules.",
)
@click.option(
    "--tenant",
    "tenants",
    multiple=True,
    required=True,
    help="A tenant the token acts for (repeatable; '*' for every tenant).",
)
@click.option(
    "--expires", metavar="WHEN", help="A duration from now (30d, 12h, 2w) or a date; default: never."
)
@click.option("--name", default="", help="Who or what holds the token (shown by `tokens list`).")
@_STORE
@friendly
def create(
    role: str, tenants: tuple[str, ...], expires: str | None, name: str, store_path: str | None
) -> None:
    """Create a token and print it once, alone on the last line (only its hash is stored)."""
    from engine.audit import AuditLog, actor
    from engine.service.tokens import TokenStore, parse_expiry

    store = TokenStore(store_path)
    until = parse_expiry(expires) if expires else None
    token, entry = store.create(role, tenants, expires=until, name=name)
    AuditLog().append(
        "token_created",
        {"token": entry.id, "role": entry.role, "tenants": list(entry.tenants), "by": actor(), "via": "cli"},
    )
    when = f", expires {_utc(until)} UTC" if until else ""
    click.echo(f"token {entry.id} ({role}; tenants {', '.join(entry.tenants)}{when}) in {store.path}")
    click.echo("keep it now: it is not stored and cannot be shown again")
    click.echo(token)


@tokens.command("list")
@_STORE
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@friendly
def list_tokens(store_path: str | None, as_json: bool) -> None:
    """Every token's id, name, role, tenants, creation, expiry and state (never the token)."""
    from engine.service.tokens import TokenStore

    entries = [e.public() for e in TokenStore(store_path).entries()]
    if as_json:
        click.echo(json.dumps(entries))
        return
    if not entries:
        click.echo("no tokens (create one with `headrace tokens create --role ROLE --tenant T`)")
        return
    click.echo(
        f"{'ID':<12}  {'ROLE':<8}  {'STATE':<7}  {'CREATED (UTC)':<19}  {'EXPIRES (UTC)':<19}  TENANTS  NAME"
    )
    for e in entries:
        expires = _utc(e["expires"]) if e["expires"] else "never"  # type: ignore[arg-type]
        tenants = ",".join(e["tenants"])  # type: ignore[arg-type]
        click.echo(
            f"{e['id']:<12}  {e['role']:<8}  {e['state']:<7}  {_utc(e['created']):<19}  "  # type: ignore[arg-type]
            f"{expires:<19}  {tenants}  {e['name']}"
        )


@tokens.command()
@click.argument("token_id")
@_STORE
@friendly
def revoke(token_id: str, store_path: str | None) -> None:
    """Revoke a token by its id: a running server refuses it (401) from its next request."""
    from engine.audit import AuditLog, actor
    from engine.service.tokens import TokenStore

    store = TokenStore(store_path)
    entry = store.revoke(token_id)
    AuditLog().append("token_revoked", {"token": entry.id, "role": entry.role, "by": actor(), "via": "cli"})
    click.echo(f"token {entry.id} revoked")


def _utc(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
