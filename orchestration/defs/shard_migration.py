"""The shard migration job's slot. The online resharding issue replaces the op's body with the real
migration (copy, catch up, cut over by publishing a new shard-map epoch); until then it plans only and fails."""

import dagster as dg
from pydantic import Field

from orchestration.resources import TesseraResource


class MigrationConfig(dg.Config):
    target_shards: int = Field(ge=1, le=64, description="Shards the topology should have after the migration.")


@dg.op
def plan_shard_migration(context: dg.OpExecutionContext, config: MigrationConfig, tessera: TesseraResource) -> dict:
    """Report the move from the current topology to ``target_shards`` shards; fails clearly because the
    migration itself is not built yet (rather than pretending it ran)."""
    plan = {"current_shards": tessera.settings().total_shards, "target_shards": config.target_shards}
    context.log.info(f"shard migration plan: {plan}")
    raise dg.Failure("shard migration is not built yet (see the online resharding issue)", metadata=plan)


@dg.job(description="Online resharding: copy, catch up, cut over (slot; filled by the migration issue).")
def shard_migration() -> None:
    plan_shard_migration()
