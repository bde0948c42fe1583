"""Historical retrieval: features as they were at each (entity, as-of time), and the training-set builder.

``get_historical_features`` is Feast's historical retrieval on our offline data (the raw events in the
catalog): for each row of an entity frame it runs the same feature definition the daily partitions write to
the shards (``feature_engineering.features_query``), anchored at the entity's newest event with
``event_ts <= as_of``. ``build_training_set`` joins labels to those features and to any extra timed feature
source point in time (the newest value known at or before the as-of time), and refuses what would leak.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import psycopg

from orchestration.feature_engineering import FEATURES, features_query
from orchestration.labels import LABEL, utc_times
from orchestration.sql_frames import query_frame

FEATURE_TS = "feature_ts"  # the newest event a row's features were computed from
PAIRS = "SELECT entity_id, as_of FROM pg_temp.tessera_pit_entities"


class LeakageError(ValueError):
    """A feature would carry information from after its row's as-of time (or the label itself)."""


def _entity_pairs(entity_frame: pd.DataFrame) -> pd.DataFrame:
    missing = {"entity_id", "as_of"} - set(entity_frame.columns)
    if missing:
        raise ValueError(f"the entity frame needs columns entity_id and as_of; missing {sorted(missing)}")
    as_of = pd.to_datetime(entity_frame["as_of"])
    if as_of.dt.tz is None:
        raise ValueError("as_of must be timezone-aware (a naive time is ambiguous against event_ts)")
    return pd.DataFrame({"entity_id": entity_frame["entity_id"].astype(str), "as_of": utc_times(as_of)})


def get_historical_features(catalog_dsn: str, entity_frame: pd.DataFrame) -> pd.DataFrame:
    """``entity_frame`` (entity_id, as_of, any other columns) with ``feature_ts`` and the FEATURES as of each
    row's as_of, computed from events with ``event_ts <= as_of`` only; an entity with no event by then gets
    nulls (as Feast returns them)."""
    pairs = _entity_pairs(entity_frame)
    unique = pairs.drop_duplicates()
    with psycopg.connect(catalog_dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE tessera_pit_entities (entity_id text NOT NULL, as_of timestamptz NOT NULL)")
        with cur.copy("COPY tessera_pit_entities (entity_id, as_of) FROM STDIN") as copy:
            for entity_id, as_of in unique.itertuples(index=False):
                copy.write_row((entity_id, as_of.to_pydatetime()))
        cur.execute("ANALYZE tessera_pit_entities")
        computed = query_frame(conn, features_query(PAIRS))
    computed = computed.rename(columns={"event_ts": FEATURE_TS})
    if (computed[FEATURE_TS] > computed["as_of"]).any():  # the SQL cannot do this; the guard says why it matters
        raise LeakageError("a historical feature row was computed from an event after its as-of time")
    out = entity_frame.drop(columns=[c for c in (FEATURE_TS, *FEATURES) if c in entity_frame.columns])
    out = out.assign(entity_id=pairs["entity_id"].array, as_of=pairs["as_of"].array)
    return out.merge(computed, on=["entity_id", "as_of"], how="left")


@dataclass(frozen=True)
class TimedFeatures:
    """An extra feature source: value columns with the time each value became known (``feature_ts``).

    Like a Feast feature view's source: a row may serve an as-of time t only if ``feature_ts <= t``.
    """

    name: str
    frame: pd.DataFrame  # entity_id, feature_ts, value columns


@dataclass
class TrainingSet:
    frame: pd.DataFrame  # as_of, entity_id, churned, feature_ts, features...
    features: list[str]
    excluded: dict[str, str]  # feature -> why it is not in the set


def _check_source(source: TimedFeatures, taken: set[str]) -> list[str]:
    columns = [c for c in source.frame.columns if c not in ("entity_id", FEATURE_TS)]
    if FEATURE_TS not in source.frame.columns:
        raise LeakageError(
            f"feature source {source.name!r} has no {FEATURE_TS!r} column: without the time each value became "
            "known it cannot be joined point in time"
        )
    if LABEL in columns or "as_of" in columns:
        raise LeakageError(f"feature source {source.name!r} carries {LABEL!r} or 'as_of': a feature may not read them")
    clash = taken.intersection(columns)
    if clash:
        raise ValueError(f"feature source {source.name!r} repeats feature names {sorted(clash)}")
    return columns


def _as_of_join(base: pd.DataFrame, source: TimedFeatures, columns: list[str]) -> pd.DataFrame:
    """Each base row gets the source's newest row with feature_ts <= as_of (never a later one)."""
    right = source.frame[["entity_id", FEATURE_TS, *columns]].copy()
    right[FEATURE_TS] = utc_times(right[FEATURE_TS])
    right = right.rename(columns={FEATURE_TS: f"_{source.name}_ts"}).sort_values(f"_{source.name}_ts")
    left = base.sort_values("as_of")
    joined = pd.merge_asof(
        left,
        right,
        left_on="as_of",
        right_on=f"_{source.name}_ts",
        by="entity_id",
        direction="backward",
        allow_exact_matches=True,
    )
    return joined.drop(columns=[f"_{source.name}_ts"])


def build_training_set(catalog_dsn: str, labels: pd.DataFrame, extra: Sequence[TimedFeatures] = ()) -> TrainingSet:
    """Labels joined point in time to the store's features and to ``extra`` sources.

    A value known only after a row's as-of time never reaches that row; a feature no row can know at its
    as-of time (e.g. one computed from next week's events) is excluded with the reason; a source without
    timestamps, or one carrying the label, is refused.
    """
    frame = get_historical_features(catalog_dsn, labels[["as_of", "entity_id", LABEL]])
    frame = frame[frame[FEATURE_TS].notna()]  # eligible entities have an event by as_of; guard anyway
    features, excluded = list(FEATURES), {}
    for source in extra:
        columns = _check_source(source, set(features))
        frame = _as_of_join(frame, source, columns)
        for column in columns:
            if frame[column].isna().all():
                frame = frame.drop(columns=[column])
                excluded[column] = (
                    f"{source.name}: no value is known at or before any as-of time (every row's {FEATURE_TS} "
                    "is later): a feature from the future"
                )
            else:
                features.append(column)
    frame = frame.sort_values(["as_of", "entity_id"]).reset_index(drop=True)
    return TrainingSet(frame, features, excluded)


def split_out_of_time(
    frame: pd.DataFrame, horizon_days: int, validation_dates: int = 1
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate on the newest ``validation_dates`` as-of dates; train on the as-of dates whose label window
    ends by the first validation date (t + horizon <= cutoff), so no training label saw the validation period."""
    dates = sorted(frame["as_of"].unique())
    if len(dates) <= validation_dates:
        raise ValueError(f"{len(dates)} as-of date(s): an out-of-time split needs more than {validation_dates}")
    cutoff = dates[-validation_dates]
    valid = frame[frame["as_of"] >= cutoff]
    train = frame[frame["as_of"] + pd.Timedelta(days=horizon_days) <= cutoff]
    return train, valid
