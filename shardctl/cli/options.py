"""What every `shardctl` command group shares: the root group's error rule, the common options, the settings and
the catalog DSN. Imports only click and ``shardctl.errors`` at load (`shardctl --help` stays light); the rest
when a command runs."""

from __future__ import annotations

import os
from typing import TypeVar

import click

from shardctl.errors import SettingsError, ShardctlError, first_line

SettingsT = TypeVar("SettingsT")


class UnexpectedError(click.ClickException):
    """A failure no ``ShardctlError`` describes: a bug, or a case shardctl does not handle yet. The user gets one
    line naming a file (mode 0600) that holds the traceback, so the bug keeps its traceback and the terminal
    stays readable; exit 70 (EX_SOFTWARE) tells it apart from an expected failure's 1."""

    exit_code = 70

    def __init__(self, exc: BaseException):
        import tempfile
        import traceback

        fd, path = tempfile.mkstemp(prefix="shardctl-error-", suffix=".log")
        with os.fdopen(fd, "w") as log:
            traceback.print_exception(exc, file=log)
        self.traceback_file = path
        super().__init__(
            f"unexpected {type(exc).__name__}: {first_line(exc)} (a bug, or a case shardctl does not handle yet; "
            f"the traceback is in {path})"
        )


class ShardctlGroup(click.Group):
    """The root group: an expected failure (a ``ShardctlError``) is its message on stderr and exit 1; anything
    else is a bug, whose one line names the file its traceback was written to (``UnexpectedError``)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ShardctlError as exc:
            raise click.ClickException(str(exc).strip() or type(exc).__name__) from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            raise UnexpectedError(exc) from exc


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
force_option = click.option("--force", is_flag=True, help="Do not ask for confirmation.")
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where servers keep their data (default: $TESSERA_DATA_DIR or ./.tessera).",
)


def read_settings(kind: type[SettingsT]) -> SettingsT:
    """``kind()`` read from the environment and settings file; a value that does not validate is a
    ``SettingsError`` naming the field and the rule, never the value (a DSN's password may be in it)."""
    from pydantic import ValidationError

    try:
        return kind()
    except ValidationError as exc:
        said = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"bad {kind.__name__}: {said}") from None


def catalog_dsn() -> str:
    """The catalog, connected to as the control plane (``TESSERA_CONTROL__DB_*``; unset: as the DSN says)."""
    from shardctl.control.settings import ControlSettings
    from shardctl.credentials import with_credentials
    from shardctl.settings import StoreSettings
    from shardctl.store.shardmap import ShardMapError

    dsn = read_settings(StoreSettings).catalog_dsn
    if not dsn:
        raise ShardMapError("no catalog DSN: set TESSERA_CATALOG_DSN or run `shardctl stack up`")
    return with_credentials(dsn, read_settings(ControlSettings).db_credentials())
