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
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from shardctl.errors import SettingsError

DEFAULT_DATA_DIR = Path(".tessera")
SETTINGS_FILE_NAME = "settings.json"
# The stack file ``SectionSettings.of_stack`` reads a section from (None: the process's, ``settings_file_path``).
_STACK_FILE: ContextVar[Path | None] = ContextVar("tessera_stack_file", default=None)


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

    @classmethod
    def of_stack(cls, data_dir: Path | str) -> Self:
        """This section as a process of the stack in ``data_dir`` reads it: its variables, then that stack's file
        (``<data_dir>/settings.json``), then the defaults. For code handed a stack's settings (``TesseraSettings``
        with its ``data_dir``) that may not be the process's own stack: each stack generates its own passwords, so
        a part's credentials must come from the same stack as the servers it connects to. ``TESSERA_SETTINGS_FILE``,
        when set, still wins, as everywhere."""
        token = _STACK_FILE.set(Path(data_dir) / SETTINGS_FILE_NAME)
        try:
            return cls()
        finally:
            _STACK_FILE.reset(token)


def section_config(section: str) -> SettingsConfigDict:
    """``model_config`` for a :class:`SectionSettings` subclass of ``section``."""
    return SettingsConfigDict(env_prefix=f"TESSERA_{section.upper()}__", extra="ignore")


class ShardSettings(BaseModel):
    """One server: its index and a libpq DSN (may be multi-host: primary and replicas). The name predates the
    word "server" (a Postgres primary or Patroni cluster); a "logical shard" is the unit placed on servers."""

    index: int = Field(ge=0)
    dsn: str


class StoreSettings(BaseSettings):
    """What every part that uses the store shares: where the topology is, the data dir, and which model and
    feature set the pipeline writes and serving reads. Top-level ``TESSERA_*`` variables (``TESSERA_SERVERS``
    as JSON; ``TESSERA_SHARDS`` is its deprecated alias), then the top level of the stack's settings file."""

    model_config = SettingsConfigDict(env_prefix="TESSERA_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = DEFAULT_DATA_DIR
    catalog_dsn: str | None = None
    dagster_dsn: str | None = None
    servers: list[ShardSettings] = Field(default_factory=list)
    shards: list[ShardSettings] = Field(default_factory=list)  # deprecated alias of ``servers``: both hold the same
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

    @model_validator(mode="after")
    def _servers_or_their_old_name(self) -> StoreSettings:
        """``TESSERA_SERVERS`` is the name; ``TESSERA_SHARDS`` (and a settings file's ``shards``) still work. When
        both are given (from any source: arguments, environment, the stack's settings file), ``servers`` wins."""
        self.servers = self.shards = self.servers or self.shards
        return self

    @property
    def total_shards(self) -> int:
        """The number of servers (the name predates logical shards; see ``server_count``)."""
        return len(self.servers)

    @property
    def server_count(self) -> int:
        return len(self.servers)

    def shard_dsns(self) -> list[str]:
        """DSNs ordered by shard index; raises if the indices are not exactly 0..N-1."""
        ordered = sorted(self.servers, key=lambda s: s.index)
        if [s.index for s in ordered] != list(range(len(ordered))):
            raise SettingsError(f"shard indices must be 0..N-1, got {[s.index for s in ordered]}")
        return [s.dsn for s in ordered]


class TesseraSettings(StoreSettings):
    """The store's settings, as every part reads them (each part's own knobs are in its own section)."""


def settings_file_path() -> Path:
    """Where the stack writes, and settings read, the discovered topology."""
    explicit = os.environ.get("TESSERA_SETTINGS_FILE")
    if explicit:
        return Path(explicit)
    chosen = _STACK_FILE.get()
    if chosen is not None:
        return chosen
    return Path(os.environ.get("TESSERA_DATA_DIR", str(DEFAULT_DATA_DIR))) / SETTINGS_FILE_NAME


@lru_cache(maxsize=1)
def get_settings() -> TesseraSettings:
    """The process-wide settings, read once."""
    return TesseraSettings()


def load_settings(**overrides: Any) -> TesseraSettings:
    """Fresh settings (not cached), e.g. after the stack rewrote its file."""
    return TesseraSettings(**overrides)
