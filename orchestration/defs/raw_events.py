"""Raw customer transactions, one daily partition at a time, landed in the catalog Postgres."""

import dagster as dg

from orchestration import raw_store
from orchestration.defs.partitions import daily_partitions
from orchestration.resources import TesseraResource
from orchestration.settings import PipelineSettings
from orchestration.synthetic import generate_day


@dg.asset(
    partitions_def=daily_partitions,
    group_name="pipeline",
    kinds={"postgres"},
    description="Synthetic customer transactions of one day (deterministic from the seed), replaced atomically.",
)
def raw_events(context: dg.AssetExecutionContext, tessera: TesseraResource) -> dg.MaterializeResult:
    day = context.partition_time_window.start.date()
    pipeline = PipelineSettings()
    frame = generate_day(
        day, start_date=pipeline.start_date, seed=pipeline.seed, rows=pipeline.rows_per_day, entities=pipeline.entities
    )
    dsn = tessera.dsn()
    raw_store.ensure_schema(dsn)
    rows = raw_store.replace_partition(dsn, day, frame)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "rows": rows,
            "entities": int(frame["entity_id"].nunique()),
            "amount_total": float(frame["amount"].sum()),
            "churned_share": float(frame.drop_duplicates("entity_id")["churned"].mean()),
        }
    )
