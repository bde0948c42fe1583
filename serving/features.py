"""Feature lookups for serving: the shardctl readers (routing, per-shard pools, shard-map epochs).

The service reads on its event loop (``aread``: psycopg async, no thread hop); ``read`` is the same lookup
for synchronous callers (the benchmark's naive baseline).
"""

from __future__ import annotations

from collections.abc import Sequence

from shardctl.settings import TesseraSettings
from shardctl.store import FeatureStore
from shardctl.store.async_reader import AsyncFeatureReader
from shardctl.store.reader import ReadResult


class FeatureSource:
    """Reads entities' features; a dead shard costs at most the readers' acquire timeout (1 s)."""

    def __init__(self, settings: TesseraSettings):
        # Serving never creates topology: it reads what orchestration and the stack prepared.
        target = settings.serving.read_target
        self._store = FeatureStore.open(
            settings, prepare_topology=False, acquire_timeout=1.0, connect_timeout=1, target_session_attrs=target
        )
        self._async = AsyncFeatureReader(
            self._store.watcher, acquire_timeout=1.0, connect_timeout=1, target_session_attrs=target
        )

    def read(self, entity_ids: Sequence[str], feature_set: str) -> ReadResult:
        return self._store.get_features(list(entity_ids), feature_set)

    async def aread(self, entity_ids: Sequence[str], feature_set: str) -> ReadResult:
        return await self._async.get_features(list(entity_ids), feature_set)

    async def aclose(self) -> None:
        await self._async.close()
        self._store.close()
