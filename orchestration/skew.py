"""Online/offline skew: the features serving reads from the shards now against the historical builder's
features as of now, for a sample of entities. Training uses the second, serving the first: if they differ,
the model is scored on inputs it was not trained on. Feast leaves this check to its users; we run it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
import psycopg

from orchestration.feature_engineering import FEATURES
from orchestration.point_in_time import FEATURE_TS, get_historical_features

MISSING_ONLINE = "<no row online>"
MISSING_OFFLINE = "<no event offline>"


@dataclass
class SkewReport:
    compared: int
    mismatches: dict[str, list[str]] = field(default_factory=dict)  # entity -> differing features

    @property
    def passed(self) -> bool:
        return not self.mismatches

    def description(self, limit: int = 10) -> str:
        if self.passed:
            return f"{self.compared} sampled entities: online features equal the historical builder's as of now"
        named = "; ".join(f"{e}: {', '.join(f)}" for e, f in sorted(self.mismatches.items())[:limit])
        more = f" (and {len(self.mismatches) - limit} more)" if len(self.mismatches) > limit else ""
        return f"{len(self.mismatches)} of {self.compared} sampled entities differ online vs offline: {named}{more}"


def sample_entities(catalog_dsn: str, size: int, seed: int = 0) -> list[str]:
    """A deterministic sample of the entities that have raw events (a hash order, not the first ids)."""
    with psycopg.connect(catalog_dsn) as conn:
        rows = conn.execute(
            """SELECT entity_id FROM (SELECT DISTINCT entity_id FROM raw_events WHERE entity_id IS NOT NULL) e
               ORDER BY md5(entity_id || %s::text) LIMIT %s""",
            (seed, size),
        ).fetchall()
    return [r[0] for r in rows]


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None or (isinstance(b, float) and math.isnan(b)):
        return (a is None) == (b is None or (isinstance(b, float) and math.isnan(b)))
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)
    return a == b


def compare(online: Mapping[str, tuple[datetime, Mapping[str, Any]]], offline: pd.DataFrame) -> SkewReport:
    """``online``: entity -> (event_ts, features) as the shards hold them; ``offline``: the historical builder's
    rows (entity_id, feature_ts, FEATURES). The feature timestamps are compared too: a stale online row shows."""
    report = SkewReport(compared=len(offline))
    for row in offline.to_dict("records"):
        entity = row["entity_id"]
        stored = online.get(entity)
        offline_missing = pd.isna(row[FEATURE_TS])
        if stored is None or offline_missing:
            if not (stored is None and offline_missing):
                report.mismatches[entity] = [MISSING_ONLINE if stored is None else MISSING_OFFLINE]
            continue
        event_ts, features = stored
        differ = [f for f in FEATURES if not _same(features.get(f), _plain(row[f]))]
        if pd.Timestamp(event_ts) != row[FEATURE_TS]:
            differ.append("event_ts")
        if differ:
            report.mismatches[entity] = differ
    return report


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def skew_report(
    catalog_dsn: str, online: Mapping[str, tuple[datetime, Mapping[str, Any]]], entity_ids: Sequence[str], now: datetime
) -> SkewReport:
    """Compare ``online`` rows of ``entity_ids`` with the historical features as of ``now``."""
    offline = get_historical_features(catalog_dsn, pd.DataFrame({"entity_id": list(entity_ids), "as_of": now}))
    return compare(online, offline)
