"""Feature lookups for serving through shardctl's read-only store (routing, per-shard pools, shard-map epochs).

The service reads on its event loop (``aread``: psycopg async, no thread hop); ``read`` is the same lookup
for synchronous callers (the benchmark's naive baseline).
"""

from __future__ import annotations

from collections.abc import Sequence

from shardctl.store.read_store import FeatureReadStore
from shardctl.store.reader import ReadResult
from shardctl.store.shardmap import ShardMap


class FeatureSource:
    """Reads entities' features; a dead shard costs at most the readers' acquire timeout (1 s)."""

    def __init__(self, catalog_dsn: str, read_target: str):
        # Serving never creates topology: it reads what orchestration and the stack prepared.
        self._store = FeatureReadStore.open(
            catalog_dsn, acquire_timeout=1.0, connect_timeout=1, target_session_attrs=read_target
        )

    def shard_map(self) -> ShardMap:
        """The shard map reads follow now (the change consumer follows the same one)."""
        return self._store.shard_map

    def read(self, entity_ids: Sequence[str], feature_set: str) -> ReadResult:
        return self._store.sync_reader().get_features(list(entity_ids), feature_set)

    async def aread(
        self, entity_ids: Sequence[str], feature_set: str, model: tuple[str, int] | None = None
    ) -> ReadResult:
        """With ``model`` (name, version): each record carries the scorer's precomputed prediction of that model
        version when one exists for exactly the features read (same statement, same snapshot)."""
        return await self._store.get_features(list(entity_ids), feature_set, model)

    async def aclose(self) -> None:
        await self._store.aclose()
