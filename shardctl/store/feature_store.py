"""``FeatureStore``: one object that owns the shard-map watcher, the writer and the reader.

with FeatureStore.open(get_settings()) as store:
    store.writer.write("customer_v1", rows)
    store.reader.get_features(["c1", "c2"], "customer_v1")
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import psycopg

from shardctl.credentials import DbCredentials, with_credentials
from shardctl.store.api_keys import KeyStore
from shardctl.store.grants import grant_catalog_privileges
from shardctl.store.reader import FeatureReader, ReadResult
from shardctl.store.registry import ModelRegistry
from shardctl.store.schema import apply_all
from shardctl.store.shardmap import ShardMap, ShardMapStore, ShardMapWatcher
from shardctl.store.writer import FeatureRow, FeatureWriter, WriteReport
from shardctl.store.writer_settings import WriterSettings


def prepare(catalog_dsn: str, shard_dsns: Sequence[str] | None = None, settings=None) -> ShardMap:
    """Make a topology ready to use (idempotent): catalog tables (shard map, model registry, API keys), an epoch-1
    map if none, schema on every shard, and the parts' grants on both (``shardctl.store.grants``). Needs the
    control plane's credentials (it creates tables): pass a DSN that carries them."""
    maps = ShardMapStore(catalog_dsn)
    maps.ensure_schema()
    ModelRegistry(catalog_dsn).ensure_schema()
    KeyStore(catalog_dsn).ensure_schema()
    with psycopg.connect(catalog_dsn, autocommit=True, connect_timeout=5) as conn:
        grant_catalog_privileges(conn)
    current = maps.initialize_from_settings(settings) if settings is not None else maps.initialize(shard_dsns or ())
    apply_all(current)
    return current


class FeatureStore:
    """The feature store of one topology. Close it (or use ``with``) to stop the watcher and the pools."""

    def __init__(self, maps: ShardMapStore, watcher: ShardMapWatcher, writer: FeatureWriter, reader: FeatureReader):
        self.maps = maps
        self.watcher = watcher
        self.writer = writer
        self.reader = reader

    @classmethod
    def open(
        cls,
        settings,
        *,
        prepare_topology: bool = True,
        credentials: DbCredentials | None = None,
        **reader_options,
    ) -> FeatureStore:
        """Open the store described by ``settings`` (a ``TesseraSettings``); with ``prepare_topology`` also
        create whatever is missing (catalog tables, epoch 1, shard schema) first, as the settings' DSN.

        Reads and writes connect as ``credentials`` (default: the writer's, ``TESSERA_WRITER__DB_*`` or the writer
        section of the settings' own stack; none set: as the settings' DSN says), to the catalog and to every shard
        of the map."""
        if not settings.catalog_dsn:
            raise ValueError("no catalog DSN in the settings: set TESSERA_CATALOG_DSN or run `shardctl stack up`")
        if prepare_topology:
            prepare(settings.catalog_dsn, settings=settings)
        if credentials is None:
            credentials = WriterSettings.of_stack(settings.data_dir).db_credentials()
        maps = ShardMapStore(with_credentials(settings.catalog_dsn, credentials))
        watcher = maps.watch(role="feature-store")
        try:
            writer = FeatureWriter(watcher)
            reader = FeatureReader(watcher, **reader_options)
        except Exception:
            watcher.stop()
            raise
        return cls(maps, watcher, writer, reader)

    @property
    def shard_map(self) -> ShardMap:
        return self.watcher.current

    def write(self, feature_set: str, rows: Iterable[FeatureRow]) -> WriteReport:
        return self.writer.write(feature_set, rows)

    def get_features(self, entity_ids: Iterable[str] | str, feature_set: str) -> ReadResult:
        return self.reader.get_features(entity_ids, feature_set)

    def close(self) -> None:
        self.watcher.stop()
        self.writer.close()
        self.reader.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
