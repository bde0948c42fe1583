"""Features per shard (JTBD-03 step 3): rolling per-entity features of each day, written through the
shardctl writer, with one asset check per shard (row counts, completeness, placement by ``shard_for``)."""

from datetime import date

import dagster as dg
import psycopg

from orchestration.defs.partitions import daily_partitions
from orchestration.defs.raw_events import raw_events
from orchestration.defs.shard_key import shard_key
from orchestration.feature_engineering import FEATURES, features_as_of
from orchestration.resources import TesseraResource
from shardctl.settings import load_settings
from shardctl.store.schema import FEATURE_TABLE, placement_query
from shardctl.store.writer import FeatureRow

# One check per shard of the topology the code location loads with (the stack's, else the default count).
LOADED_SHARDS = load_settings().total_shards or load_settings().stack.shards


def _shard_check_name(shard: int) -> str:
    return f"shard_{shard}_rows_and_placement"


@dg.asset(
    partitions_def=daily_partitions,
    # Same-day lineage: partition D needs raw D; its 30-day window also reads the earlier days landed so far.
    deps=[raw_events, shard_key],
    group_name="pipeline",
    kinds={"postgres"},
    description="Features as of the day for every entity active that day, upserted on the entity's shard.",
    check_specs=[
        dg.AssetCheckSpec(
            _shard_check_name(i),
            asset="customer_features",
            description=f"Shard {i} holds every active entity routed to it, and only those (tessera_shard_for in SQL).",
        )
        for i in range(LOADED_SHARDS)
    ],
)
def customer_features(context: dg.AssetExecutionContext, tessera: TesseraResource) -> dg.MaterializeResult:
    day = context.partition_time_window.start.date()
    settings = tessera.settings()
    computed = features_as_of(tessera.dsn(), day)
    rows = [FeatureRow(r["entity_id"], r["event_ts"], {f: r[f] for f in FEATURES}) for r in computed]
    with tessera.feature_store() as store:
        shards = store.shard_map.total_shards
        if shards != LOADED_SHARDS:  # its checks would judge a topology that is gone
            raise dg.Failure(
                f"the topology has {shards} shards but the code location was loaded with {LOADED_SHARDS}: "
                "reload the code location"
            )
        report = store.write(settings.feature_set, rows)
    per_shard = {i: report.rows_per_shard.get(i, 0) for i in range(shards)}
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(rows),
            "feature_set": settings.feature_set,
            "rows": len(rows),
            "shard_map_epoch": report.epoch,
            "inserted": report.inserted,
            "updated": report.updated,
            "unchanged": report.unchanged,
            "rows_per_shard": dg.MetadataValue.table(
                [dg.TableRecord({"shard": i, "rows_written": n}) for i, n in per_shard.items()],
                schema=dg.TableSchema(columns=[dg.TableColumn("shard", "int"), dg.TableColumn("rows_written", "int")]),
            ),
            **{f"shard_{i}_rows": n for i, n in per_shard.items()},
        },
        check_results=shard_check_results(tessera, day),
    )


def shard_check_results(tessera: TesseraResource, day: date | None) -> list[dg.AssetCheckResult]:
    """Per shard: rows stored, rows the routing function would put elsewhere (must be 0), and entities active
    on ``day`` (every day when None) that are routed here but have no features (must be 0). Judging only the
    partition's own entities keeps the check exact while other partitions run concurrently in a backfill."""
    settings = tessera.settings()
    dsns = tessera.shard_dsns()
    expected_sql = """SELECT tessera_shard_for(entity_id, %(n)s) AS shard, array_agg(DISTINCT entity_id)
                      FROM raw_events WHERE entity_id IS NOT NULL AND (%(day)s::date IS NULL OR event_date = %(day)s)
                      GROUP BY 1"""
    with psycopg.connect(tessera.dsn()) as conn:
        expected = {s: set(ids) for s, ids in conn.execute(expected_sql, {"n": len(dsns), "day": day})}
    results = []
    for i, dsn in enumerate(dsns):
        with psycopg.connect(dsn) as conn:
            total, misplaced, wrong_hash = conn.execute(placement_query(len(dsns), i)).fetchone()
            stored = {
                r[0]
                for r in conn.execute(
                    f"SELECT entity_id FROM {FEATURE_TABLE} WHERE feature_set = %s", (settings.feature_set,)
                )
            }
        missing = expected.get(i, set()) - stored
        passed = misplaced == 0 and wrong_hash == 0 and not missing
        description = (
            f"shard {i}: {len(stored):,} rows of {settings.feature_set}, all placed by shard_for"
            if passed
            else f"shard {i}: {misplaced:,} rows belong on another shard, {wrong_hash:,} with a wrong stored hash, "
            f"{len(missing):,} active entities without features (e.g. {sorted(missing)[:3]})"
        )
        results.append(
            dg.AssetCheckResult(
                check_name=_shard_check_name(i),
                passed=passed,
                description=description,
                metadata={
                    "rows": len(stored),
                    "all_feature_sets_rows": int(total),
                    "misplaced_rows": int(misplaced),
                    "missing_entities": len(missing),
                },
            )
        )
    return results
