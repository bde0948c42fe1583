"""Shard key selection (JTBD-03 step 2): the chosen key's cardinality and immutability, judged by a
blocking asset check so features are never written under a bad key."""

import dagster as dg
import psycopg
from psycopg.types.json import Jsonb
from pydantic import Field

from orchestration import cardinality
from orchestration.defs.raw_profile import raw_profile
from orchestration.resources import TesseraResource
from orchestration.synthetic import ENTITY_ATTRIBUTES
from shardctl.store.shardmap import ShardMapError, ShardMapStore


class ShardKeyConfig(dg.Config):
    column: str = Field(default="entity_id", pattern=r"^[a-z_][a-z0-9_]*$", description="A raw_events column.")
    min_keys_per_shard: int = Field(default=50, ge=1, description="Distinct key values each shard needs at least.")


@dg.asset(deps=[raw_profile], group_name="pipeline", kinds={"postgres"})
def shard_key(config: ShardKeyConfig, tessera: TesseraResource) -> dg.MaterializeResult:
    """Measure the configured key over all raw data and record the choice in the catalog."""
    dsn = tessera.dsn()
    shards = _server_count(tessera)
    try:
        with psycopg.connect(dsn) as conn:
            distinct, mutable = cardinality.key_stats(conn, config.column)
            conn.execute(
                """INSERT INTO shard_key_choices (key_column, attributes, distinct_values, mutable_entities,
                                                  total_shards, min_keys_per_shard)
                   VALUES (%s, %s, %s, %s, %s, %s)""",
                (config.column, Jsonb(list(ENTITY_ATTRIBUTES)), distinct, mutable, shards, config.min_keys_per_shard),
            )
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    return dg.MaterializeResult(
        metadata={
            "key_column": config.column,
            "distinct_values": distinct,
            "mutable_values": mutable,
            "total_shards": shards,
            "keys_per_shard": round(distinct / shards, 1),
        }
    )


@dg.asset_check(asset=shard_key, blocking=True, description="The shard key spreads over the shards and is immutable.")
def shard_key_is_valid(tessera: TesseraResource) -> dg.AssetCheckResult:
    with psycopg.connect(tessera.dsn()) as conn:
        row = conn.execute(
            """SELECT key_column, distinct_values, mutable_entities, total_shards, min_keys_per_shard
               FROM shard_key_choices ORDER BY id DESC LIMIT 1"""
        ).fetchone()
    if row is None:
        return dg.AssetCheckResult(passed=False, description="no shard key has been chosen yet")
    column, distinct, mutable, shards, min_keys = row
    verdict = cardinality.judge_shard_key(column, distinct, mutable, shards, min_keys)
    return dg.AssetCheckResult(
        passed=verdict.passed,
        description=verdict.message,
        metadata={"key_column": column, "distinct_values": distinct, "mutable_values": mutable},
    )


def _server_count(tessera: TesseraResource) -> int:
    """Servers of the catalog's current epoch; before the first write, those the settings name."""
    try:
        return ShardMapStore(tessera.dsn()).current().server_count
    except (ShardMapError, psycopg.Error):
        count = tessera.configured_servers
    if count < 1:
        raise dg.Failure("no servers: run `shardctl stack up` or set TESSERA_SERVERS")
    return count
