"""``FeatureReadStore``: the read side of a topology only (shard map, epoch watcher, async reader), for services
that never write. Opening it creates nothing: no catalog tables, no shard schema, no writer.

store = FeatureReadStore.open(catalog_dsn, acquire_timeout=1.0)
result = await store.get_features(["c1", "c2"], "customer_v1")
await store.aclose()
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shardctl.store.async_reader import AsyncFeatureReader
from shardctl.store.reader import FeatureReader, ReadResult
from shardctl.store.shardmap import ShardMap, ShardMapStore, ShardMapWatcher


class FeatureReadStore:
    """Follows the shard map's epochs and reads features through per-shard async pools.

    ``sync_reader()`` gives a thread-pool reader over the same watcher for synchronous callers (opened on first
    use, closed with the store)."""

    def __init__(self, watcher: ShardMapWatcher, reader: AsyncFeatureReader, reader_options: dict[str, Any]):
        self.watcher = watcher
        self.reader = reader
        self._reader_options = reader_options
        self._sync: FeatureReader | None = None

    @classmethod
    def open(cls, catalog_dsn: str, **reader_options: Any) -> FeatureReadStore:
        """Watch the shard map in ``catalog_dsn``; ``reader_options`` go to the readers' pools."""
        if not catalog_dsn:
            raise ValueError("no catalog DSN: set TESSERA_CATALOG_DSN or run `shardctl stack up`")
        watcher = ShardMapStore(catalog_dsn).watch(role="read-store")
        try:
            reader = AsyncFeatureReader(watcher, **reader_options)
        except BaseException:
            watcher.stop()
            raise
        return cls(watcher, reader, reader_options)

    @property
    def shard_map(self) -> ShardMap:
        return self.watcher.current

    async def get_features(
        self, entity_ids: Iterable[str] | str, feature_set: str, model: tuple[str, int] | None = None
    ) -> ReadResult:
        """Features of ``entity_ids``; with ``model`` (name, version), each record also carries the precomputed
        prediction of that model version for exactly those features, when one exists."""
        return await self.reader.get_features(entity_ids, feature_set, model)

    def sync_reader(self) -> FeatureReader:
        if self._sync is None:
            self._sync = FeatureReader(self.watcher, **self._reader_options)
        return self._sync

    async def aclose(self) -> None:
        """Close the pools, then stop following the shard map."""
        try:
            await self.reader.close()
            if self._sync is not None:
                self._sync.close()
        finally:
            self.watcher.stop()
