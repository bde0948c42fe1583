"""Cardinality profile of all raw data (JTBD-03 step 1): shown as a Markdown table, stored for later runs."""

import dagster as dg

from orchestration import profiling
from orchestration.defs.raw_data import raw_events
from orchestration.resources import TesseraResource


class ProfileConfig(dg.Config):
    method: str | None = None  # "exact" or "hll"; default: exact up to settings.pipeline.exact_profile_max_rows


@dg.asset(deps=[raw_events], group_name="pipeline", kinds={"postgres"})
def raw_profile(config: ProfileConfig, tessera: TesseraResource) -> dg.MaterializeResult:
    """Distinct counts (exact, or merged HyperLogLog sketches for large data), null fractions, top values,
    and whether each candidate key keeps its entity attributes immutable."""
    if config.method not in (None, "exact", "hll"):
        raise dg.Failure(f"profile method must be 'exact' or 'hll', got {config.method!r}")
    dsn = tessera.dsn()
    previous = profiling.previous_profile(dsn)
    profile = profiling.profile_raw(dsn, tessera.settings().pipeline.exact_profile_max_rows, config.method)
    profile_id = profiling.store_profile(dsn, profile)
    entity = profile.column("entity_id")
    return dg.MaterializeResult(
        metadata={
            "profile": dg.MetadataValue.md(profiling.markdown_table(profile)),
            "total_rows": profile.total_rows,
            "method": profile.method,
            "entity_id_distinct": int(entity.distinct),
            "profile_id": profile_id,
            "previous_total_rows": previous["total_rows"] if previous else 0,
        }
    )


defs = dg.Definitions(assets=[raw_profile])
