"""Cardinality profile of all raw data (JTBD-03 step 1): shown as tables in the UI, stored for later runs."""

from typing import Literal

import dagster as dg
from pydantic import Field

from orchestration import cardinality
from orchestration.defs.raw_events import RAW_EVENTS
from orchestration.resources import TesseraResource


class ProfileConfig(dg.Config):
    method: Literal["auto", "exact", "hll"] = Field(
        default="auto",
        description="exact (count DISTINCT), hll (merged sketches), or auto: exact up to exact_max_rows rows",
    )
    exact_max_rows: int = Field(
        default=500_000, ge=0, description="With auto: up to this many raw rows the profile counts exactly."
    )


def _table(rows: list[dict[str, object]], types: dict[str, str]) -> dg.TableMetadataValue:
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in types.items()])
    return dg.MetadataValue.table([dg.TableRecord(r) for r in rows], schema=schema)


@dg.asset(deps=[RAW_EVENTS], group_name="pipeline", kinds={"postgres"})
def raw_profile(config: ProfileConfig, tessera: TesseraResource) -> dg.MaterializeResult:
    """Distinct counts (exact, or merged HyperLogLog sketches for large data), null fractions, top values,
    and whether each candidate key keeps its entity attributes immutable."""
    dsn = tessera.dsn()
    previous = cardinality.previous_profile(dsn)
    profile = cardinality.profile_raw(dsn, config.exact_max_rows, None if config.method == "auto" else config.method)
    profile_id = cardinality.store_profile(dsn, profile)
    entity = profile.column("entity_id")
    return dg.MaterializeResult(
        metadata={
            "profile": _table(
                cardinality.column_rows(profile),
                {"column": "string", "distinct": "int", "null_pct": "float", "top_values": "string"},
            ),
            "candidate_keys": _table(
                cardinality.candidate_rows(profile),
                {"candidate_key": "string", "distinct": "int", "immutable": "bool", "mutable_values": "int"},
            ),
            "total_rows": profile.total_rows,
            "method": profile.method,
            "entity_id_distinct": int(entity.distinct),
            "profile_id": profile_id,
            "previous_total_rows": previous["total_rows"] if previous else 0,
        }
    )
