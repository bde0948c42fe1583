"""The worker's in-process tier in front of Redis: hot entities are answered with no I/O at all.

An entry lives only as long as the feature version it was computed for is still trusted (the rest of the
``fv:`` key's TTL in Redis, or the full ``feature_version_ttl_seconds`` right after a shard read), so this tier
keeps the cache's documented staleness bound instead of adding its own. Keys carry the model key, so a
promotion never answers from the previous model's entries (they age out of the LRU).
"""

from __future__ import annotations

from cachetools import TLRUCache

from serving.cache import CachedPrediction

_Key = tuple[str, str, str]


def _expires(_key: _Key, value: tuple[CachedPrediction, float], now: float) -> float:
    return now + value[1]


class LocalPredictionCache:
    """LRU of at most ``max_entries`` predictions (0 disables it), each with its own expiry."""

    def __init__(self, max_entries: int):
        self._entries: TLRUCache[_Key, tuple[CachedPrediction, float]] | None = (
            TLRUCache(max_entries, ttu=_expires) if max_entries > 0 else None
        )

    def get(self, model_key: str, feature_set: str, entity: str) -> CachedPrediction | None:
        if self._entries is None:
            return None
        entry = self._entries.get((model_key, feature_set, entity))
        return entry[0] if entry is not None else None

    def put(
        self, model_key: str, feature_set: str, entity: str, prediction: CachedPrediction, trusted_for: float
    ) -> None:
        """Keep ``prediction`` for ``trusted_for`` seconds (nothing is kept for 0 or less)."""
        if self._entries is not None and trusted_for > 0:
            self._entries[(model_key, feature_set, entity)] = (prediction, trusted_for)
