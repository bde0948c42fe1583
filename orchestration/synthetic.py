"""Deterministic synthetic customer transactions: the raw data the pipeline starts from.

Any day can be generated alone (its random stream is seeded by ``(seed, day)``), so daily partitions are
independent, re-running one gives the same rows, and the scale is just ``rows_per_day``. The population is
realistic enough to make profiling and training meaningful: activity is long-tailed (Pareto weights), entities
have immutable attributes (country, segment, signup date), and churners slow down for a month before they stop,
so the label is learnable from rolling activity features but not trivially.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache

import numpy as np
import pandas as pd

COLUMNS = (
    "event_id",
    "event_date",
    "event_ts",
    "entity_id",
    "country",
    "segment",
    "signup_date",
    "channel",
    "category",
    "amount",
    "is_refund",
    "churned",
)
# Attributes that define an entity: they must never change for one entity_id (the shard key check's rule).
ENTITY_ATTRIBUTES = ("country", "segment", "signup_date")

COUNTRIES = np.array(["US", "DE", "GB", "FR", "IN", "BR", "JP", "ES", "NL", "PL"])
COUNTRY_P = np.array([0.30, 0.14, 0.12, 0.10, 0.09, 0.08, 0.06, 0.05, 0.04, 0.02])
SEGMENTS = np.array(["consumer", "smb", "enterprise"])
SEGMENT_P = np.array([0.75, 0.20, 0.05])
CHANNELS = np.array(["app", "web", "store", "phone"])
CHANNEL_P = np.array([0.45, 0.35, 0.15, 0.05])
CATEGORIES = np.array([f"cat_{i:02d}" for i in range(20)])
_cat_w = 1.0 / np.arange(1, 21) ** 1.1
CATEGORY_P = _cat_w / _cat_w.sum()
RAMP_DAYS = 30


@dataclass(frozen=True)
class Population:
    """Every entity's fixed attributes, drawn once from the seed."""

    entity_ids: np.ndarray
    country: np.ndarray
    segment: np.ndarray
    signup_offset: np.ndarray  # days relative to start_date (negative: signed up before the data starts)
    weight: np.ndarray  # long-tailed activity level
    churned: np.ndarray
    churn_offset: np.ndarray  # day (relative to start_date) of the first day without activity


@lru_cache(maxsize=8)
def population(seed: int, entities: int) -> Population:
    rng = np.random.default_rng([seed, 0])
    weight = rng.pareto(1.3, entities) + 0.05
    segment = rng.choice(SEGMENTS, entities, p=SEGMENT_P)
    country = rng.choice(COUNTRIES, entities, p=COUNTRY_P)
    signup = rng.integers(-365, 90, entities)
    seg_effect = np.select([segment == "consumer", segment == "smb"], [0.4, -0.3], -1.0)
    logit = -0.6 + seg_effect - 0.5 * np.log(weight) + rng.normal(0, 0.6, entities)
    churned = rng.random(entities) < 1 / (1 + np.exp(-logit))
    churn = np.maximum(signup, 0) + rng.integers(15, 120, entities)
    ids = np.array([f"cust-{i:07d}" for i in range(entities)])
    return Population(ids, country, segment, signup, weight, churned, churn)


def generate_day(day: date, *, start_date: date, seed: int, rows: int, entities: int) -> pd.DataFrame:
    """The raw events of one day, identical on every call with the same arguments."""
    pop = population(seed, entities)
    t = (day - start_date).days
    rng = np.random.default_rng([seed, 1, day.toordinal()])
    alive = (pop.signup_offset <= t) & (~pop.churned | (pop.churn_offset > t))
    ramp = np.where(pop.churned, np.clip((pop.churn_offset - t) / RAMP_DAYS, 0.05, 1.0), 1.0)
    w = np.where(alive, pop.weight * ramp, 0.0)
    if w.sum() == 0:
        w = pop.weight.copy()
    idx = rng.choice(len(w), size=rows, p=w / w.sum())
    seg = pop.segment[idx]
    seg_mu = np.select([seg == "consumer", seg == "smb"], [3.0, 4.2], 5.5)
    midnight = datetime.combine(day, time(0), tzinfo=UTC)
    seconds = np.sort(rng.integers(0, 86_400, rows))
    return pd.DataFrame(
        {
            "event_id": [f"{day:%Y%m%d}-{i:07d}" for i in range(rows)],
            "event_date": day,
            "event_ts": [midnight + timedelta(seconds=int(s)) for s in seconds],
            "entity_id": pop.entity_ids[idx],
            "country": pop.country[idx],
            "segment": seg,
            "signup_date": [start_date + timedelta(days=int(o)) for o in pop.signup_offset[idx]],
            "channel": rng.choice(CHANNELS, rows, p=CHANNEL_P),
            "category": rng.choice(CATEGORIES, rows, p=CATEGORY_P),
            "amount": np.round(rng.lognormal(seg_mu, 1.0), 2),
            "is_refund": rng.random(rows) < 0.03,
            "churned": pop.churned[idx],
        },
        columns=list(COLUMNS),
    )
