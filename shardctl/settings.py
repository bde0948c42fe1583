"""Settings: the store's shared fields (``StoreSettings``) and the base each part's own section builds on.

Values come, in order of precedence, from ``TESSERA_*`` environment variables (nested fields use ``__``,
e.g. ``TESSERA_SERVING__PORT``), then from the JSON file the local stack writes
(``<data_dir>/settings.json``, or the path in ``TESSERA_SETTINGS_FILE``), then from the defaults below.
So ``shardctl stack up`` is enough for every other command to find the stack with no flags, and a
deployment sets environment variables instead.

A part with knobs of its own declares a ``SectionSettings`` subclass next to its code (the local stack:
``shardctl.stack.settings.StackSettings``; its Patroni clusters: ``shardctl.stack.ha.settings.HASettings``).
docs/configuration.md lists every variable.
"""

from __future__ import annotations

import json
import os
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_DATA_DIR = Path(".tessera")
SETTINGS_FILE_NAME = "settings.json"


class _StackFileSection(PydanticBaseSettingsSource):
    """One section (a top-level object) of the stack's settings file; nothing when the file or section is absent."""

    def __init__(self, settings_cls: type[BaseSettings], section: str):
        super().__init__(settings_cls)
        self.section = section

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = settings_file_path()
        try:
            content = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        value = content.get(self.section, {}) if isinstance(content, dict) else {}
        return value if isinstance(value, dict) else {}


class SectionSettings(BaseSettings):
    """Base of one part's own settings: ``TESSERA_<SECTION>__<FIELD>`` variables, then the ``<section>`` object of
    the stack's settings file, then the defaults. A part reads only its section, so it cannot come to depend on
    another part's knobs. Subclasses set ``section`` and ``model_config``'s ``env_prefix`` (see ``section_config``).
    """

    section: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _StackFileSection(settings_cls, cls.section))


def section_config(section: str) -> SettingsConfigDict:
    """``model_config`` for a :class:`SectionSettings` subclass of ``section``."""
    return SettingsConfigDict(env_prefix=f"TESSERA_{section.upper()}__", extra="ignore")


class ShardSettings(BaseModel):
    """One shard: its index and a libpq DSN (may be multi-host: primary and replicas)."""

    index: int = Field(ge=0)
    dsn: str


class H2OSettings(BaseModel):
    """How orchestration reaches H2O: an existing cluster URL, or a local JVM started on demand."""

    url: str | None = None
    nthreads: int = 2
    max_mem: str = "2G"
    java_home: str | None = None


class ServingSettings(BaseModel):
    """The prediction service's listener, process and thread counts, and request limits."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    scoring_threads: int = 2
    max_batch: int = 100
    cache_ttl_seconds: int = 300
    # Staleness bound of the prediction cache: how long an entity's feature version is trusted from Redis
    # before the shard is read again (a feature write shows in answers within this many seconds).
    feature_version_ttl_seconds: float = Field(default=2.0, gt=0, le=3600)
    # Predictions each worker keeps in memory in front of Redis (0: off); an entry never outlives the
    # staleness bound above, so this tier only saves round trips for hot entities. Kept small on purpose:
    # the cache's entries are live objects the garbage collector walks, and at 100k entries its full
    # collections stalled a worker for 30-100 ms (p99 at 1500 misses/s: 128 ms; with 10k: 37 ms).
    local_cache_entries: int = Field(default=10_000, ge=0, le=10_000_000)
    io_threads: int = Field(default=8, ge=1, le=64)
    # Where the service reads features on an HA shard: "prefer-standby" reads the synchronous replica (so a
    # dead primary costs readers nothing: the replica keeps answering through the failover; a read right after
    # a write may miss it for milliseconds, far inside the cache's staleness bound), "read-write" the primary.
    read_target: Literal["prefer-standby", "read-write"] = "prefer-standby"
    # How long the event loop may hold the GIL while a scoring or I/O thread waits for it (see serving.runtime).
    gil_switch_interval_ms: float = Field(default=0.5, gt=0, le=100)
    retry_after_seconds: int = Field(default=5, ge=1, le=3600)


class PipelineSettings(BaseModel):
    """The Dagster pipeline's synthetic raw data: its seed, calendar and scale (tests use less, the demo more)."""

    seed: int = 7
    start_date: date = date(2026, 9, 1)
    rows_per_day: int = Field(default=1000, ge=1)
    entities: int = Field(default=2000, ge=1)
    exact_profile_max_rows: int = Field(default=500_000, ge=0)


class StoreSettings(BaseSettings):
    """What every part that uses the store shares: where the topology is, the data dir, and which model and
    feature set the pipeline writes and serving reads. Top-level ``TESSERA_*`` variables (``TESSERA_SHARDS``
    as JSON), then the top level of the stack's settings file."""

    model_config = SettingsConfigDict(env_prefix="TESSERA_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = DEFAULT_DATA_DIR
    catalog_dsn: str | None = None
    dagster_dsn: str | None = None
    shards: list[ShardSettings] = Field(default_factory=list)
    redis_url: str | None = None
    # Shared by orchestration (writes, trains, registers) and serving (reads, loads the promoted model).
    model_name: str = "churn"
    feature_set: str = "customer_activity_v1"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            JsonConfigSettingsSource(settings_cls, json_file=settings_file_path()),
        )

    @property
    def total_shards(self) -> int:
        return len(self.shards)

    def shard_dsns(self) -> list[str]:
        """DSNs ordered by shard index; raises if the indices are not exactly 0..N-1."""
        ordered = sorted(self.shards, key=lambda s: s.index)
        if [s.index for s in ordered] != list(range(len(ordered))):
            raise ValueError(f"shard indices must be 0..N-1, got {[s.index for s in ordered]}")
        return [s.dsn for s in ordered]


class _TransitionalStackSection(BaseModel):
    """Only the default shard count orchestration falls back to with no topology (``defs/features.py``,
    ``defs/shard_key.py``) until its own settings carry it. The stack's settings are
    ``shardctl.stack.settings.StackSettings``."""

    shards: int = Field(default=2, ge=1, le=64)


class TesseraSettings(StoreSettings):
    """The store's settings plus the serving, pipeline and H2O sections, which move to their parts."""

    h2o: H2OSettings = Field(default_factory=H2OSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    stack: _TransitionalStackSection = Field(default_factory=_TransitionalStackSection)


def settings_file_path() -> Path:
    """Where the stack writes, and settings read, the discovered topology."""
    explicit = os.environ.get("TESSERA_SETTINGS_FILE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("TESSERA_DATA_DIR", str(DEFAULT_DATA_DIR))) / SETTINGS_FILE_NAME


@lru_cache(maxsize=1)
def get_settings() -> TesseraSettings:
    """The process-wide settings, read once."""
    return TesseraSettings()


def load_settings(**overrides: Any) -> TesseraSettings:
    """Fresh settings (not cached), e.g. after the stack rewrote its file."""
    return TesseraSettings(**overrides)
