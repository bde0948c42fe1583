"""Shard routing: ``Shard_Index = Hash(entity_id) % Total_Shards``.

The hash is the first 8 bytes of MD5 over the UTF-8 bytes of the entity id, read as an unsigned
big-endian 64-bit integer. MD5 is used for its ubiquity, not for security: every Python has it in
``hashlib`` and every PostgreSQL has ``md5()``, so the same value is computable in the application and
on the shards (migrations and checks filter rows in SQL). It is identical across processes, machines and
Python versions, unlike Python's salted ``hash()``.

PostgreSQL has no unsigned 64-bit type, so the SQL twin keeps the hash as a signed ``bigint`` (the same
64 bits, two's complement) and reduces it modulo the shard count in ``numeric``.
"""

from __future__ import annotations

import hashlib

HASH_BITS = 64
_TWO_POW_64 = 1 << HASH_BITS
_SIGN_BIT = 1 << (HASH_BITS - 1)


def entity_hash(entity_id: str) -> int:
    """The stable unsigned 64-bit hash of an entity id."""
    if not isinstance(entity_id, str):
        raise TypeError(f"entity_id must be str, got {type(entity_id).__name__}")
    return int.from_bytes(hashlib.md5(entity_id.encode("utf-8")).digest()[:8], "big")


def to_signed64(value: int) -> int:
    """The same 64 bits as PostgreSQL's signed ``bigint`` holds them."""
    return value - _TWO_POW_64 if value & _SIGN_BIT else value


def shard_for(entity_id: str, total_shards: int) -> int:
    """The shard an entity lives on, for a topology of ``total_shards`` shards."""
    if total_shards < 1:
        raise ValueError(f"total_shards must be >= 1, got {total_shards}")
    return entity_hash(entity_id) % total_shards


# The fixed count of logical shards, the unit the shard map places on servers (a power of two: a row on server
# ``hash % N`` before logical shards existed stays there for any power-of-two N; docs/architecture/logical.md).
TOTAL_LOGICAL_SHARDS = 256


def logical_shard_for(entity_id: str) -> int:
    """The logical shard an entity belongs to: ``Hash(entity_id) % TOTAL_LOGICAL_SHARDS``, fixed for ever."""
    return entity_hash(entity_id) % TOTAL_LOGICAL_SHARDS


# SQL twins: installed on every shard (and the catalog) by ``install_sql_functions``.
SQL_FUNCTIONS = """
CREATE OR REPLACE FUNCTION tessera_entity_hash(entity_id text) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN ('x' || substr(md5(entity_id), 1, 16))::bit(64)::bigint;

CREATE OR REPLACE FUNCTION tessera_shard_of_hash(h bigint, total_shards integer) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN mod(h::numeric + CASE WHEN h < 0 THEN 18446744073709551616 ELSE 0 END, total_shards)::integer;

CREATE OR REPLACE FUNCTION tessera_shard_for(entity_id text, total_shards integer) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN tessera_shard_of_hash(tessera_entity_hash(entity_id), total_shards);
"""


def install_sql_functions(conn) -> None:  # conn: psycopg.Connection
    """Create (or replace) the SQL twins of the routing functions in the connected database."""
    with conn.cursor() as cur:
        cur.execute(SQL_FUNCTIONS)
    conn.commit()
