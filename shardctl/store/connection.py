"""One connection to a server, whose failure to connect is a ``ServerUnreachableError`` naming ``host:port/db``
(never the DSN's password): what the CLI prints as one line, what callers that retry still catch as
``psycopg.OperationalError``."""

from __future__ import annotations

from typing import Any

import psycopg

from shardctl.errors import BadDsnError
from shardctl.store.errors import ServerUnreachableError


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection:
    """``psycopg.connect(dsn, **kwargs)``; an unreachable server or an unparsable DSN raise the store's errors."""
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.OperationalError as exc:
        raise ServerUnreachableError(dsn, exc) from exc
    except psycopg.ProgrammingError:
        raise BadDsnError from None  # libpq's message may quote the DSN, its password included
