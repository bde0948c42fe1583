"""`shardctl keys`: the prediction service's API keys (create, list, revoke), as the control plane.

`create` prints the key once, alone on stdout (so `KEY="$(shardctl keys create NAME)"` captures exactly it; what
it is goes to stderr), or inside `--json`'s object: it is never shown again, and the catalog keeps only its
SHA-256 digest. `list` and `revoke` never print a key or its digest. Only click is imported at load (`shardctl
--help` stays light); the rest when a command runs.
"""

from __future__ import annotations

import json

import click

from shardctl.cli.options import catalog_dsn, force_option, json_option

SCOPES = ("predict", "models:read", "metrics")  # shardctl.store.api_keys.SCOPES (not imported at load)


class _RateType(click.ParamType):
    """``N/s``, ``N/min`` or ``N/h``, checked when the command line is parsed (a usage error, exit 2)."""

    name = "N/s|N/min|N/h"

    def convert(self, value, param, ctx):
        from shardctl.store.api_keys import ApiKeyError, parse_rate

        try:
            return parse_rate(value)
        except ApiKeyError as exc:
            self.fail(str(exc), param, ctx)


def _store():
    """The key table as the control plane; a write first creates the table (and serving's grant) if missing."""
    from shardctl.store.api_keys import KeyStore

    return KeyStore(catalog_dsn())


def _describe(key) -> str:
    rate = str(key.rate) if key.rate else "the service's default"
    return f"key {key.name!r} (id {key.key_id}): scopes {', '.join(sorted(key.scopes))}; rate limit {rate}"


@click.group()
def keys() -> None:
    """API keys of the prediction service: create (shown once), list, revoke."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    type=click.Choice(SCOPES),
    multiple=True,
    default=("predict",),
    show_default=True,
    help="What the key may do (repeat for several).",
)
@click.option("--rate-limit", "rate", type=_RateType(), default=None, help="Its own limit (default: the service's).")
@json_option
def keys_create(name: str, scopes: tuple[str, ...], rate, as_json: bool) -> None:
    """Create the key NAME and print it, once: store it now, it cannot be shown again."""
    from shardctl.store.connection import connect
    from shardctl.store.grants import grant_catalog_privileges

    store = _store()
    store.ensure_schema()
    with connect(store.dsn, autocommit=True, connect_timeout=5) as conn:
        grant_catalog_privileges(conn)  # a catalog made before the key table: serving may read it now
    key, token = store.create(name, scopes, rate)
    if as_json:
        click.echo(json.dumps(key.as_json() | {"key": token}, indent=2))
        return
    click.echo(f"created {_describe(key)}. The key is shown this once (stdout): store it now.", err=True)
    click.echo(token)


@keys.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Revoked keys too.")
@json_option
def keys_list(include_revoked: bool, as_json: bool) -> None:
    """Keys by name, id, scopes, rate limit and dates; never a key or its digest."""
    listed = _store().list(include_revoked=include_revoked)
    if as_json:
        click.echo(json.dumps({"keys": [k.as_json() for k in listed]}, indent=2))
        return
    if not listed:
        click.echo("no API keys" + ("" if include_revoked else " (active; --all shows revoked ones)"))
        return
    click.echo(f"{'name':<24} {'id':<12}  {'scopes':<30} {'rate limit':<11} {'created':<16}  revoked")
    for k in listed:
        revoked = f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "-"
        click.echo(
            f"{k.name:<24} {k.key_id:<12}  {','.join(sorted(k.scopes)):<30} {k.rate or 'default'!s:<11} "
            f"{k.created_at:%Y-%m-%d %H:%M}  {revoked}"
        )


@keys.command("revoke")
@click.argument("name_or_id")
@force_option
@json_option
def keys_revoke(name_or_id: str, force: bool, as_json: bool) -> None:
    """Revoke the active key NAME_OR_ID: every serving worker refuses it within its refresh interval
    (`TESSERA_SERVING__AUTH_REFRESH_SECONDS`). There is no undo: create a new key instead."""
    if not force:
        click.confirm(f"Revoke the API key {name_or_id!r}? Clients using it get 401 from now on", abort=True)
    key = _store().revoke(name_or_id)
    click.echo(json.dumps(key.as_json(), indent=2) if as_json else f"revoked {_describe(key)}")
