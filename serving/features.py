"""Feature lookups for serving: the shardctl reader (routing, per-shard pools, shard-map epochs) behind a
small synchronous interface the service runs on its I/O threads."""

from __future__ import annotations

from collections.abc import Sequence

from shardctl.reader import ReadResult
from shardctl.settings import TesseraSettings
from shardctl.store import FeatureStore


class FeatureSource:
    """Reads entities' features; a dead shard costs at most the reader's acquire timeout."""

    def __init__(self, settings: TesseraSettings):
        # Serving never creates topology: it reads what orchestration and the stack prepared.
        self._store = FeatureStore.open(settings, prepare_topology=False, acquire_timeout=1.0, connect_timeout=1)

    def read(self, entity_ids: Sequence[str], feature_set: str) -> ReadResult:
        return self._store.get_features(list(entity_ids), feature_set)

    def close(self) -> None:
        self._store.close()
