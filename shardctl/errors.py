"""shardctl's one error family. Every failure shardctl expects (bad input, a refused change, a server that is down
or not set up) derives from ``ShardctlError``, through the base of the layer that raises it, so the CLI prints
exactly those as one line and lets anything else (a bug) show its traceback.

A layer's classes keep the builtin base they had (``class PlanError(ControlError, ValueError)``), so callers that
catch ``ValueError`` or ``RuntimeError`` keep working. Base module: imports nothing of shardctl, any layer may
import it.
"""

from __future__ import annotations


class ShardctlError(Exception):
    """An expected failure of shardctl; its message says what happened and, when it can, what to do."""


class SettingsError(ShardctlError, ValueError):
    """Settings or credentials that cannot work (base helpers: settings, credentials, Java)."""


class BadDsnError(SettingsError):
    """A DSN libpq cannot parse. The message never quotes it: libpq's own may quote a part of it, a password too."""

    def __init__(self) -> None:
        super().__init__("cannot parse a DSN: give key=value pairs or a postgresql:// URL")


class StoreError(ShardctlError):
    """The store layer (``shardctl/store``): shard map, schema, writes, reads, the model registry."""


class ModelLifecycleError(StoreError):
    """The model registry and its promotions (``shardctl models``)."""


class ControlError(ShardctlError):
    """The control plane (``shardctl/control``): roles, Patroni's REST API, the migration engine."""


class LocalStackError(ShardctlError):
    """The local stack (``shardctl/stack``, its HA clusters included): binaries, servers, their lifecycle."""


class BackupError(ShardctlError):
    """Backups and restores (``shardctl/backup``): WAL archiving, base backups, restore points, restores."""


def first_line(what: BaseException | str) -> str:
    """The first non-empty line of an error (or of a program's output), for a one-line message.

    A database error's DETAIL and HINT lines follow its first line. Never ``IndexError`` on an empty message (as
    ``str(exc).splitlines()[0]`` gives): an error that says nothing gives its type's name, empty text ``""``."""
    for line in str(what).splitlines():
        if line.strip():
            return line.strip()
    return "" if isinstance(what, str) else type(what).__name__
