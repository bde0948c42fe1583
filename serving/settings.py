"""The prediction service's own settings: ``TESSERA_SERVING__*`` variables, then the ``serving`` object of the
stack's settings file, then these defaults. What serving shares with the other parts (catalog, shards, Redis,
model name) stays in ``shardctl.settings.TesseraSettings``."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from shardctl.credentials import DbCredentialFields, RedisCredentialFields
from shardctl.settings import SectionSettings, section_config

RATE_PATTERN = r"^[1-9][0-9]{0,8}/(s|min|h)$"  # shardctl.store.api_keys.parse_rate reads it


class ServingSettings(SectionSettings, DbCredentialFields, RedisCredentialFields):
    """The prediction service's listener, process and thread counts, request limits, and the database role it
    reads the catalog and the shards as (``db_user``, ``db_password`` or ``db_passfile``: read-only grants), and who
    it is to Redis (``redis_username``, ``redis_password`` or ``redis_password_file``: an ACL user limited to
    serving's key prefix, ``shardctl.redis_acl``)."""

    section: ClassVar[str] = "serving"
    model_config = section_config(section)

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    scoring_threads: int = 2
    max_batch: int = 100
    cache_ttl_seconds: int = 300
    # Staleness bound of the prediction cache when the change stream is not live (see invalidation below): how
    # long an entity's feature version is trusted before the shard is read again.
    feature_version_ttl_seconds: float = Field(default=2.0, gt=0, le=3600)
    # "events": each worker follows the shards' change logs and drops changed entities from its memory and
    # Redis, so cached predictions live cache_ttl_seconds while the stream is live; "time": no consumer, every
    # entry keeps the staleness bound above.
    invalidation: Literal["events", "time"] = "events"
    # How often the consumer reads each shard's change log (a write reaches the caches within about this).
    invalidation_poll_ms: float = Field(default=20, gt=0, le=10_000)
    # The stream stops counting as live when no full round succeeded for this long (capped at the bound).
    invalidation_stale_after_seconds: float = Field(default=1.0, gt=0, le=3600)
    # Predictions each worker keeps in memory in front of Redis (0: off); an entry never outlives the
    # staleness bound above, so this tier only saves round trips for hot entities. Kept small on purpose:
    # the cache's entries are live objects the garbage collector walks, and at 100k entries its full
    # collections stalled a worker for 30-100 ms (p99 at 1500 misses/s: 128 ms; with 10k: 37 ms).
    local_cache_entries: int = Field(default=10_000, ge=0, le=10_000_000)
    io_threads: int = Field(default=8, ge=1, le=64)
    # Read the scorer's precomputed predictions with the features on a cache miss (serving/scorer/); false:
    # every miss is scored here, as before the scorer.
    precomputed: bool = True
    # /readyz's scorer state: "current" while its lag is at most scorer_behind_seconds, "behind" up to
    # scorer_down_seconds, "down" beyond (reported only: the service answers either way).
    scorer_behind_seconds: float = Field(default=5.0, gt=0, le=86_400)
    scorer_down_seconds: float = Field(default=60.0, gt=0, le=86_400)
    # Where the service reads features on an HA shard: "prefer-standby" reads the synchronous replica (so a
    # dead primary costs readers nothing: the replica keeps answering through the failover; a read right after
    # a write may miss it for milliseconds, far inside the cache's staleness bound), "read-write" the primary.
    read_target: Literal["prefer-standby", "read-write"] = "prefer-standby"
    # How long the event loop may hold the GIL while a scoring or I/O thread waits for it (see serving.runtime).
    gil_switch_interval_ms: float = Field(default=0.5, gt=0, le=100)
    retry_after_seconds: int = Field(default=5, ge=1, le=3600)
    # Graceful drain on SIGTERM: how long a worker waits for its in-flight requests before it closes its pools
    # (Granian stops accepting at once); Granian kills a worker that has not exited 10 s after this.
    drain_seconds: float = Field(default=20.0, gt=0, le=600)
    # HTTPS (serving/tls.py checks them before Granian starts): a PEM certificate (chain) and its unencrypted key,
    # readable by the service alone (Granian 2.8 cannot load an encrypted key: its worker panics).
    tls_certificate: Path | None = None
    tls_key: Path | None = None

    # API keys (serving/security.py): on unless turned off explicitly (then a warning at every worker's start).
    # A revoked key is refused within auth_refresh_seconds; rate_limit is each key's unless it has its own.
    auth: bool = True
    auth_refresh_seconds: float = Field(default=1.0, gt=0, le=60)
    rate_limit: str = Field(default="1000/s", pattern=RATE_PATTERN)
