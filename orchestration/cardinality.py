"""Cardinality profile of the raw events (exact or from merged HLL sketches) and the shard-key rule: pure SQL
and logic, no Dagster (``defs/raw_profile.py`` and ``defs/shard_key.py`` call it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from orchestration.raw_store import merged_distinct_estimates
from orchestration.synthetic import COLUMNS, ENTITY_ATTRIBUTES

TOP_VALUES = 3
KEY_CANDIDATES = ("entity_id", "event_id")


@dataclass
class ColumnProfile:
    name: str
    distinct: float
    null_fraction: float
    top_values: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class KeyCandidate:
    column: str
    distinct: float
    mutable_values: int  # key values whose entity attributes change over the data

    @property
    def immutable(self) -> bool:
        return self.mutable_values == 0


@dataclass
class Profile:
    total_rows: int
    method: str  # "exact" (count DISTINCT) or "hll" (merged per-partition sketches)
    columns: list[ColumnProfile]
    candidates: list[KeyCandidate]

    def column(self, name: str) -> ColumnProfile:
        return next(c for c in self.columns if c.name == name)

    def as_json(self) -> dict:
        return asdict(self)


def _checked(column: str) -> sql.Identifier:
    if column not in COLUMNS:
        raise ValueError(f"unknown raw column {column!r}; raw_events has {list(COLUMNS)}")
    return sql.Identifier(column)


def _changes(key_column: str, attributes: Sequence[str]) -> sql.Composable | None:
    """True for a key value that sees more than one value of any key-defining attribute: ``min <> max``, which
    hash aggregation computes in one pass (``count(DISTINCT)`` sorts every group: 10.9 s at 3M raw rows against
    1.8 s at 1M in bench/scale's first run)."""
    others = [a for a in attributes if a != key_column]
    if not others:
        return None
    return sql.SQL(" OR ").join(sql.SQL("min({a}) <> max({a})").format(a=_checked(a)) for a in others)


def mutable_key_values(conn: psycopg.Connection, key_column: str, attributes=ENTITY_ATTRIBUTES) -> int:
    """How many values of ``key_column`` see more than one value of any key-defining attribute."""
    return key_stats(conn, key_column, attributes)[1]


def key_stats(conn: psycopg.Connection, key_column: str, attributes=ENTITY_ATTRIBUTES) -> tuple[int, int]:
    """The distinct (non-null) values of ``key_column``, and how many of them are mutable (``mutable_key_values``),
    in one scan of the raw data grouped by the key."""
    changes = _changes(key_column, attributes) or sql.SQL("false")
    query = sql.SQL(
        "SELECT count(*) FILTER (WHERE k IS NOT NULL), count(*) FILTER (WHERE k IS NOT NULL AND mutable) "
        "FROM (SELECT {key} AS k, ({changes}) AS mutable FROM raw_events GROUP BY {key}) AS g"
    ).format(key=_checked(key_column), changes=changes)
    distinct, mutable = conn.execute(query).fetchone()  # type: ignore[misc]
    return int(distinct), int(mutable)


def profile_raw(dsn: str, exact_max_rows: int, force_method: str | None = None) -> Profile:
    """Profile every raw column: exact distinct counts for small data, merged HLL sketches beyond."""
    with psycopg.connect(dsn) as conn:
        total = int(conn.execute("SELECT count(*) FROM raw_events").fetchone()[0])
        method = force_method or ("exact" if total <= exact_max_rows else "hll")
        counts = sql.SQL(", ").join(sql.SQL("count({})").format(_checked(c)) for c in COLUMNS)
        non_null = conn.execute(sql.SQL("SELECT {} FROM raw_events").format(counts)).fetchone()
        if method == "exact":
            distinct_sql = sql.SQL(", ").join(sql.SQL("count(DISTINCT {})").format(_checked(c)) for c in COLUMNS)
            distinct = dict(
                zip(
                    COLUMNS,
                    conn.execute(sql.SQL("SELECT {} FROM raw_events").format(distinct_sql)).fetchone(),
                    strict=True,
                )
            )
        else:
            estimates = merged_distinct_estimates(dsn)
            distinct = {c: round(estimates.get(c, 0.0)) for c in COLUMNS}
        columns = []
        for column, present in zip(COLUMNS, non_null, strict=True):
            top: list[tuple[str, int]] = []
            if total and distinct[column] <= total / 2:  # top values of near-unique columns say nothing
                query = sql.SQL(
                    "SELECT {c}::text, count(*) FROM raw_events WHERE {c} IS NOT NULL "
                    "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %s"
                ).format(c=_checked(column))
                top = [(v, int(n)) for v, n in conn.execute(query, (TOP_VALUES,))]
            columns.append(ColumnProfile(column, distinct[column], 1 - present / total if total else 0.0, top))
        candidates = [KeyCandidate(c, distinct[c], mutable_key_values(conn, c)) for c in KEY_CANDIDATES]
    return Profile(total, method, columns, candidates)


def store_profile(dsn: str, profile: Profile) -> int:
    """Keep the profile for later runs (and for the shard key step); returns its id."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "INSERT INTO raw_profiles (total_rows, method, profile) VALUES (%s, %s, %s) RETURNING id",
            (profile.total_rows, profile.method, Jsonb(profile.as_json())),
        ).fetchone()
    return int(row[0])


def previous_profile(dsn: str) -> dict | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT profile FROM raw_profiles ORDER BY id DESC LIMIT 1").fetchone()
    return row[0] if row else None


def column_rows(profile: Profile) -> list[dict[str, object]]:
    """One row per column: distinct count, null percentage, top values (the UI shows them as a table)."""
    return [
        {
            "column": c.name,
            "distinct": int(c.distinct),
            "null_pct": round(100 * c.null_fraction, 2),
            "top_values": ", ".join(f"{v} ({n:,})" for v, n in c.top_values) or "(near-unique)",
        }
        for c in profile.columns
    ]


def candidate_rows(profile: Profile) -> list[dict[str, object]]:
    """One row per candidate shard key: distinct count, and how many of its values change their attributes."""
    return [
        {
            "candidate_key": k.column,
            "distinct": int(k.distinct),
            "immutable": k.immutable,
            "mutable_values": k.mutable_values,
        }
        for k in profile.candidates
    ]


@dataclass(frozen=True)
class KeyVerdict:
    passed: bool
    message: str


def judge_shard_key(
    key_column: str, distinct: float, mutable_values: int, total_shards: int, min_keys_per_shard: int
) -> KeyVerdict:
    """A shard key must spread over the shards (enough distinct values) and never move (immutable)."""
    needed = total_shards * min_keys_per_shard
    problems = []
    if distinct < needed:
        problems.append(
            f"`{key_column}` has {int(distinct):,} distinct values, fewer than the {needed:,} needed for "
            f"{total_shards} shards ({min_keys_per_shard:,} per shard): rows would pile up on few shards"
        )
    if mutable_values:
        problems.append(
            f"{mutable_values:,} `{key_column}` values change their key-defining attributes "
            f"({', '.join(a for a in ENTITY_ATTRIBUTES if a != key_column)}): the key is not immutable"
        )
    if problems:
        return KeyVerdict(False, "; ".join(problems))
    return KeyVerdict(True, f"`{key_column}`: {int(distinct):,} distinct values, immutable, {total_shards} shards")
