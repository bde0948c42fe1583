"""Prometheus metrics of the prediction service (request count and latency: ``serving/request_metrics.py``).

With several Granian workers, ``python -m serving`` sets ``PROMETHEUS_MULTIPROC_DIR`` so ``/metrics`` sums
every worker's figures.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CACHE_LOOKUPS = Counter(
    "tessera_cache_lookups_total",
    "Prediction cache lookups: result hit|miss, tier memory|redis (none for a miss)",
    ["result", "tier"],
)
REDIS_ERRORS = Counter("tessera_redis_errors_total", "Redis calls that failed (answered uncached)")
SCORED_ROWS = Counter("tessera_scored_rows_total", "Rows scored by the MOJO")
PRECOMPUTED_ROWS = Counter(
    "tessera_precomputed_rows_total",
    "Cache misses answered with the scorer's precomputed prediction (read with the features: no scoring)",
)
SCORER_LAG_SECONDS = Gauge(
    "tessera_scorer_lag_seconds",
    "Seconds since the scorer had scored every change of the slowest shard (-1: no scorer has run on some shard, "
    "or its state could not be read); misses it has not covered are scored on demand",
    multiprocess_mode="max",
)
UNSCORABLE_FEATURES = Counter(
    "tessera_unscorable_features_total",
    "Feature values scored as NA because the model cannot read them (not a number in a numeric column), by "
    "feature (the served models' feature names only: bounded)",
    ["feature"],
)
SCORING_SECONDS = Histogram(
    "tessera_scoring_seconds",
    "Time to score one call's rows on the scoring pool",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
FEATURE_READ_SECONDS = Histogram(
    "tessera_feature_read_seconds",
    "Time to read features from the shards",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5),
)
SHARD_ERRORS = Counter("tessera_shard_errors_total", "Feature reads that failed on a shard", ["shard"])
MODEL_VERSION = Gauge("tessera_model_version", "Version of the served model", multiprocess_mode="max")
CATALOG_CONNECTED = Gauge(
    "tessera_catalog_connected",
    "1 while the worker's promotion listener is connected to the catalog (reported at each /readyz probe)",
    multiprocess_mode="min",
)
CHANGE_STREAM_LIVE = Gauge(
    "tessera_change_stream_live",
    "1 while the worker follows every shard's change log (cached answers live their full TTL), 0 when answers "
    "fall back to the staleness bound",
    multiprocess_mode="min",
)
INVALIDATED_ENTITIES = Counter("tessera_invalidated_entities_total", "Entities dropped from the caches by changes")
API_KEYS_ACTIVE = Gauge(
    "tessera_api_keys_active", "Active API keys in the worker's copy of the key table", multiprocess_mode="max"
)
RATE_LIMIT_UNCHECKED = Counter(
    "tessera_rate_limit_unchecked_total", "Requests admitted without a rate-limit check because Redis did not answer"
)
