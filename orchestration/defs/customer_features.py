"""Features per shard (JTBD-03 step 3): rolling per-entity features of each day, written through the
shardctl writer, with an asset check over every server of the shard map's current epoch (row counts,
completeness, placement by logical shard). The check reads the topology when it runs, not when the code
location loads, so a migration that adds or removes servers needs no reload.

The asset is built by ``customer_features_asset`` for the calendar ``defs/daily.py`` makes; other assets name it
by ``CUSTOMER_FEATURES``, its key."""

import time
from datetime import date

import dagster as dg
import psycopg

from orchestration.defs.raw_events import RAW_EVENTS
from orchestration.defs.shard_key import shard_key
from orchestration.feature_engineering import FEATURES, features_as_of
from orchestration.resources import TesseraResource
from shardctl.control.migration.journal import Journal
from shardctl.store.schema import FEATURE_TABLE, placement_query
from shardctl.store.shardmap import ShardMap, ShardMapStore
from shardctl.store.writer import FeatureRow

CUSTOMER_FEATURES = dg.AssetKey("customer_features")
PLACEMENT_CHECK = "rows_and_placement"


def customer_features_asset(calendar: dg.TimeWindowPartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key=CUSTOMER_FEATURES,
        partitions_def=calendar,
        # Same-day lineage: partition D needs raw D; its 30-day window also reads the earlier days landed so far.
        deps=[RAW_EVENTS, shard_key],
        group_name="pipeline",
        kinds={"postgres"},
        description="Features as of the day for every entity active that day, upserted on the entity's shard.",
        check_specs=[
            dg.AssetCheckSpec(
                PLACEMENT_CHECK,
                asset=CUSTOMER_FEATURES,
                description="Every server of the current epoch holds every active entity placed on it, and only those.",
            )
        ],
    )
    def customer_features(context: dg.AssetExecutionContext, tessera: TesseraResource) -> dg.MaterializeResult:
        return _write_day(tessera, context.partition_time_window.start.date())

    return customer_features


def _write_day(tessera: TesseraResource, day: date) -> dg.MaterializeResult:
    """The day's features written to their shards, with the placement check over every server. Each part's
    seconds go into the metadata: where a day's time goes as the data grows (bench/scale reads them)."""
    started = time.perf_counter()
    computed = features_as_of(tessera.dsn(), day)
    rows = [FeatureRow(r["entity_id"], r["event_ts"], {f: r[f] for f in FEATURES}) for r in computed]
    computed_at = time.perf_counter()
    with tessera.feature_store() as store:
        report = store.write(tessera.feature_set, rows)
        servers = store.shard_map.servers
    written_at = time.perf_counter()
    check = placement_check_result(tessera, day)
    seconds = {
        "seconds_features_query": computed_at - started,
        "seconds_write": written_at - computed_at,
        "seconds_placement_check": time.perf_counter() - written_at,
    }
    per_shard = {i: report.rows_per_shard.get(i, 0) for i in range(len(servers))}
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(rows),
            "feature_set": tessera.feature_set,
            "rows": len(rows),
            "shard_map_epoch": report.epoch,
            "inserted": report.inserted,
            "updated": report.updated,
            "unchanged": report.unchanged,
            "rows_per_shard": dg.MetadataValue.table(
                [dg.TableRecord({"shard": i, "server": servers[i], "rows_written": n}) for i, n in per_shard.items()],
                schema=dg.TableSchema(
                    columns=[
                        dg.TableColumn("shard", "int"),
                        dg.TableColumn("server", "string"),
                        dg.TableColumn("rows_written", "int"),
                    ]
                ),
            ),
            **{f"shard_{i}_rows": n for i, n in per_shard.items()},
            **{name: round(value, 3) for name, value in seconds.items()},
        },
        check_results=[check],
    )


def placement_check_result(tessera: TesseraResource, day: date | None) -> dg.AssetCheckResult:
    """The check over every server of the current epoch (``shard_check_results`` per server, combined)."""
    per_server = shard_check_results(tessera, day)
    failed = [r for r in per_server if not r["passed"]]
    return dg.AssetCheckResult(
        check_name=PLACEMENT_CHECK,
        passed=not failed,
        description="; ".join(r["description"] for r in (failed or per_server)),
        metadata={
            "servers": dg.MetadataValue.table(
                [dg.TableRecord({k: v for k, v in r.items() if k != "description"}) for r in per_server],
                schema=dg.TableSchema(
                    columns=[
                        dg.TableColumn("server", "string"),
                        dg.TableColumn("passed", "bool"),
                        dg.TableColumn("rows", "int"),
                        dg.TableColumn("all_feature_sets_rows", "int"),
                        dg.TableColumn("misplaced_rows", "int"),
                        dg.TableColumn("missing_entities", "int"),
                    ]
                ),
            ),
            "misplaced_rows": sum(r["misplaced_rows"] for r in per_server),
            "missing_entities": sum(r["missing_entities"] for r in per_server),
        },
    )


def shard_check_results(tessera: TesseraResource, day: date | None) -> list[dict]:
    """Per server of the current epoch: rows stored, rows of logical shards placed elsewhere (0 unless a
    migration is running: its targets hold copies until the cutover, its sources until the cleanup), rows
    whose stored logical shard or hash their id does not give (0), and entities active on ``day`` (every day
    when None) placed here without features (0). Judging only the partition's own entities keeps the check
    exact while other partitions run concurrently in a backfill."""
    shard_map = ShardMapStore(tessera.dsn()).current()
    migrating = _migration_running(tessera.dsn())
    expected = _expected_entities(tessera.dsn(), shard_map, day)
    results = []
    for i, (server, dsn) in enumerate(zip(shard_map.servers, shard_map.dsns, strict=True)):
        with psycopg.connect(dsn) as conn:
            total, misplaced, wrong_shard, wrong_hash = conn.execute(
                placement_query(shard_map.logical_shards_of(i))
            ).fetchone()
            stored = {
                r[0]
                for r in conn.execute(
                    f"SELECT entity_id FROM {FEATURE_TABLE} WHERE feature_set = %s", (tessera.feature_set,)
                )
            }
        missing = expected.get(i, set()) - stored
        passed = (misplaced == 0 or migrating) and wrong_shard == 0 and wrong_hash == 0 and not missing
        in_flight = f" ({misplaced:,} of them copies of a running migration)" if migrating and misplaced else ""
        description = (
            f"{server}: {len(stored):,} rows of {tessera.feature_set}, all on their logical shards' server{in_flight}"
            if passed
            else f"{server}: {misplaced:,} rows belong on another server, {wrong_shard + wrong_hash:,} with a wrong "
            f"stored logical shard or hash, {len(missing):,} active entities without features "
            f"(e.g. {sorted(missing)[:3]})"
        )
        results.append(
            {
                "server": server,
                "passed": passed,
                "rows": len(stored),
                "all_feature_sets_rows": int(total),
                "misplaced_rows": int(misplaced),
                "missing_entities": len(missing),
                "description": description,
            }
        )
    return results


def _expected_entities(catalog_dsn: str, shard_map: ShardMap, day: date | None) -> dict[int, set[str]]:
    """Entities active on ``day`` (every day when None), by the index of the server the placement names."""
    sql = """SELECT DISTINCT entity_id FROM raw_events
             WHERE entity_id IS NOT NULL AND (%(day)s::date IS NULL OR event_date = %(day)s)"""
    expected: dict[int, set[str]] = {}
    with psycopg.connect(catalog_dsn) as conn:
        for (entity_id,) in conn.execute(sql, {"day": day}):
            expected.setdefault(shard_map.server_index_for(entity_id), set()).add(entity_id)
    return expected


def _migration_running(catalog_dsn: str) -> bool:
    """Whether the catalog's journal has a running migration (a catalog that never migrated has no journal; one
    created after the last `shardctl shards prepare` has no grant for the pipeline yet: judged strictly)."""
    try:
        return Journal(catalog_dsn).running() is not None
    except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege):
        return False
