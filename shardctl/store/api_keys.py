"""API keys of the prediction service, kept in the catalog (``tessera_api_keys``): named, dated, scoped, each with
an optional rate limit of its own, revocable. ``shardctl keys`` creates, lists and revokes them; each serving
worker holds the active ones in memory (``shardctl.store.key_ring``) and checks requests against them.

A key is ``tsr_<id>_<secret>``: ``id`` (12 hex digits) finds its row, ``secret`` is 256 random bits. The catalog
stores the key's SHA-256 digest, never the key, and the key is shown once, when it is created. Why a plain
SHA-256 and not a password hash (bcrypt, scrypt, argon2): those slow down guessing a low-entropy secret a human
chose; a 256-bit random secret has nothing to guess (2^256 tries), so a deliberately slow hash would only add
its ~100 ms to every request. SHA-256 is preimage-resistant, so a leaked table gives no working key.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import psycopg

from shardctl.errors import StoreError
from shardctl.store.connection import connect

PREDICT = "predict"  # POST /v1/predictions (single and batch)
MODELS_READ = "models:read"  # GET /v1/models/...
METRICS = "metrics"  # GET /metrics (Prometheus)
SCOPES = (PREDICT, MODELS_READ, METRICS)
PREFIX = "tsr"
_ID_HEX = 12
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,62}$")
_RATE = re.compile(r"^\s*([1-9][0-9]{0,8})\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}

SCHEMA = """
CREATE TABLE IF NOT EXISTS tessera_api_keys (
    key_id         text        PRIMARY KEY,
    name           text        NOT NULL,
    digest         bytea       NOT NULL,
    scopes         text[]      NOT NULL,
    rate_limit     integer     CHECK (rate_limit > 0),
    rate_period_s  integer     CHECK (rate_period_s > 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    CHECK ((rate_limit IS NULL) = (rate_period_s IS NULL))
);
CREATE UNIQUE INDEX IF NOT EXISTS tessera_api_keys_active_name ON tessera_api_keys (name) WHERE revoked_at IS NULL;
"""


class ApiKeyError(StoreError, ValueError):
    """A key that cannot be created or revoked as asked (bad name, scope or rate, unknown or duplicate key)."""


class Rate(NamedTuple):
    """At most ``limit`` requests per ``period_s`` seconds (a fixed window, ``serving/rate_limit.py``)."""

    limit: int
    period_s: int

    def __str__(self) -> str:
        unit = {1: "s", 60: "min", 3600: "h"}.get(self.period_s)
        return f"{self.limit}/{unit}" if unit else f"{self.limit}/{self.period_s}s"


def parse_rate(text: str) -> Rate:
    """``"100/s"``, ``"600/min"``, ``"10000/h"``: a request count per second, minute or hour."""
    found = _RATE.match(text or "")
    if not found:
        raise ApiKeyError(f"rate limit {text!r}: give N/s, N/min or N/h with N a positive whole number")
    return Rate(int(found.group(1)), _PERIODS[found.group(2)])


@dataclass(frozen=True, slots=True)  # slots: its fields are read on every request (serving.auth)
class ApiKey:
    """A key as the catalog knows it: never the secret (shown once at creation), never its digest."""

    key_id: str
    name: str
    scopes: frozenset[str]
    rate: Rate | None  # None: the service's default limit
    created_at: datetime
    revoked_at: datetime | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "key_id": self.key_id,
            "scopes": sorted(self.scopes),
            "rate_limit": str(self.rate) if self.rate else None,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def digest_of(token: str | bytes) -> bytes:
    """The SHA-256 digest the catalog keeps of a key (why SHA-256: the module's docstring)."""
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


def new_token() -> tuple[str, str]:
    """A fresh key and its id: ``tsr_<12 hex>_<43 url-safe chars: 256 random bits>``."""
    key_id = secrets.token_hex(_ID_HEX // 2)
    return f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}", key_id


def key_id_of(token: bytes) -> bytes | None:
    """The id part of a key as a client sent it, or None if it is not shaped like one."""
    parts = token.split(b"_", 2)
    if len(parts) != 3 or parts[0] != PREFIX.encode() or len(parts[1]) != _ID_HEX or not parts[2]:
        return None
    return parts[1]


def _check(name: str, scopes: tuple[str, ...]) -> None:
    if not _NAME.match(name or ""):
        raise ApiKeyError(
            f"key name {name!r}: 1-63 characters, letters, digits and . _ @ - (starting with a letter or digit)"
        )
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ApiKeyError(f"scopes {', '.join(unknown) or '(none)'}: choose among {', '.join(SCOPES)}")


_COLUMNS = "key_id, name, scopes, rate_limit, rate_period_s, created_at, revoked_at"


def _key_of(row: tuple) -> ApiKey:
    key_id, name, scopes, limit, period, created, revoked = row
    return ApiKey(key_id, name, frozenset(scopes), Rate(limit, period) if limit else None, created, revoked)


@contextmanager
def _table() -> Iterator[None]:
    """A catalog from before the key table: say so, and what creates it (reads never run DDL)."""
    try:
        yield
    except psycopg.errors.UndefinedTable:
        raise ApiKeyError("the catalog has no API keys yet: `shardctl keys create` makes the first") from None


class KeyStore:
    """The key table in the catalog; each call opens a short connection (the control plane's, to change it)."""

    def __init__(self, catalog_dsn: str):
        self.dsn = catalog_dsn

    def ensure_schema(self) -> None:
        with connect(self.dsn) as conn:
            conn.execute(SCHEMA)

    def create(self, name: str, scopes: tuple[str, ...], rate: Rate | None = None) -> tuple[ApiKey, str]:
        """A new key named ``name`` (unique among the active ones): its record, and the key itself, which
        exists nowhere else from now on (only its digest is stored)."""
        scopes = tuple(dict.fromkeys(scopes))
        _check(name, scopes)
        token, key_id = new_token()
        try:
            with connect(self.dsn) as conn:
                row = conn.execute(
                    f"INSERT INTO tessera_api_keys (key_id, name, digest, scopes, rate_limit, rate_period_s) "
                    f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                    (key_id, name, digest_of(token), list(scopes), *(rate or (None, None))),
                ).fetchone()
        except psycopg.errors.UniqueViolation:
            raise ApiKeyError(f"an active key is already named {name!r}: revoke it or choose another name") from None
        return _key_of(row), token

    def list(self, *, include_revoked: bool = False) -> list[ApiKey]:
        where = "" if include_revoked else "WHERE revoked_at IS NULL"
        with connect(self.dsn) as conn, _table():
            rows = conn.execute(f"SELECT {_COLUMNS} FROM tessera_api_keys {where} ORDER BY created_at, name")
            return [_key_of(r) for r in rows.fetchall()]

    def revoke(self, name_or_id: str) -> ApiKey:
        """Revoke the active key of that name (or id); serving refuses it within its refresh interval."""
        with connect(self.dsn) as conn, _table():
            row = conn.execute(
                f"UPDATE tessera_api_keys SET revoked_at = now() WHERE revoked_at IS NULL "
                f"AND (name = %s OR key_id = %s) RETURNING {_COLUMNS}",
                (name_or_id, name_or_id),
            ).fetchone()
        if row is None:
            raise ApiKeyError(f"no active key is named {name_or_id!r} (or has that id): see `shardctl keys list`")
        return _key_of(row)

    def active_digests(self, conn: psycopg.Connection) -> list[tuple[bytes, ApiKey]]:
        """Every active key's digest beside its record (what a serving worker verifies against), on ``conn``."""
        rows = conn.execute(f"SELECT digest, {_COLUMNS} FROM tessera_api_keys WHERE revoked_at IS NULL").fetchall()
        return [(bytes(r[0]), _key_of(r[1:])) for r in rows]
