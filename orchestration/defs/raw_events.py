"""Raw customer transactions, one daily partition at a time, landed in the catalog Postgres.

The asset is built by ``raw_events_asset`` for the calendar ``defs/daily.py`` makes when the code location loads;
other assets name it by ``RAW_EVENTS``, its key."""

import dagster as dg

from orchestration import raw_store
from orchestration.resources import RawDataResource, TesseraResource

RAW_EVENTS = dg.AssetKey("raw_events")


def raw_events_asset(calendar: dg.TimeWindowPartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key=RAW_EVENTS,
        partitions_def=calendar,
        group_name="pipeline",
        kinds={"postgres"},
        description="Synthetic customer transactions of one day (deterministic from the seed), replaced atomically.",
    )
    def raw_events(
        context: dg.AssetExecutionContext, tessera: TesseraResource, raw_data: RawDataResource
    ) -> dg.MaterializeResult:
        day = context.partition_time_window.start.date()
        frame = raw_data.generate(day, first_day=calendar.start.date())
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

    return raw_events
