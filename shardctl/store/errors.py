"""Typed errors of the feature store, so callers map them to responses (bad input -> 4xx, shard -> 503)."""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

from shardctl.errors import StoreError, first_line


def describe_dsn(dsn: str) -> str:
    """``host:port/db`` of a DSN, never its password (error messages end up in logs and responses)."""
    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "(unparsable DSN)"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', '5432')}/{parts.get('dbname', '')}"


class BadFeatureRowError(StoreError, ValueError):
    """A row of a write batch is invalid; nothing of the batch was written on any shard."""

    def __init__(self, index: int, entity_id: object, reason: str):
        super().__init__(f"bad feature row #{index} (entity_id={entity_id!r}): {reason}")
        self.index = index
        self.entity_id = entity_id
        self.reason = reason


class BadEntityIdError(StoreError, ValueError):
    """A read asked for an entity id that cannot exist (not a non-empty string)."""


class ShardUnavailableError(StoreError, RuntimeError):
    """A shard could not be reached or failed the request; callers answer 503 for its entities."""

    def __init__(self, shard: int, dsn: str, cause: BaseException | str):
        super().__init__(f"shard {shard} ({describe_dsn(dsn)}) is unavailable: {cause}")
        self.shard = shard
        self.cause = cause


class FeatureWriteError(StoreError, RuntimeError):
    """A write batch failed on a shard before commit; every shard rolled back, the batch can be re-run."""

    def __init__(self, message: str, failures: dict[int, BaseException] | None = None):
        super().__init__(message)
        self.failures = failures or {}


class PartialCommitError(FeatureWriteError):
    """Every shard merged, but a commit failed after others had committed: re-run the batch (idempotent)."""

    def __init__(self, committed: list[int], failures: dict[int, BaseException]):
        super().__init__(
            f"batch committed on shards {committed} but not on {sorted(failures)}: "
            f"re-run the same batch to complete it (writes are idempotent)",
            failures,
        )
        self.committed = committed


class ServerUnreachableError(StoreError, psycopg.OperationalError):
    """A Postgres server could not be connected to (down, refused, bad credentials); named by ``host:port/db``
    only. Still a ``psycopg.OperationalError``, so code that retries those keeps doing so."""

    def __init__(self, dsn: str, cause: BaseException):
        super().__init__(f"cannot connect to {describe_dsn(dsn)}: {first_line(cause)}")
