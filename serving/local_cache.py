"""The worker's in-process tier in front of Redis: hot entities are answered with no I/O at all.

An entry follows the same trust rule as Redis (``serving/freshness.py``): put during a live epoch of the change
stream, it lives for the cache TTL while that epoch lasts (the change consumer deletes it when the entity's
features change); otherwise, or once that epoch has ended, only until the time bound since its features were
read. Entries are keyed by feature set and entity, so a change drops the entity whatever model computed it; the
model key is checked on read, so a promotion never answers from the previous model's entries.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import NamedTuple

from cachetools import TLRUCache

from serving.cache import CachedPrediction

_Key = tuple[str, str]  # (feature set, entity)


class _Entry(NamedTuple):
    model_key: str
    prediction: CachedPrediction
    live_epoch: int  # the change stream's live epoch at put time (0: none)
    bounded_until: float  # monotonic: the time bound's end for this entry
    expires_at: float  # monotonic: when the LRU drops it


def _expires(_key: _Key, value: _Entry, _now: float) -> float:
    return value.expires_at


class LocalPredictionCache:
    """LRU of at most ``max_entries`` predictions (0 disables it), each with its own expiry."""

    def __init__(self, max_entries: int):
        self._entries: TLRUCache[_Key, _Entry] | None = (
            TLRUCache(max_entries, ttu=_expires, timer=time.monotonic) if max_entries > 0 else None
        )

    def get(self, model_key: str, feature_set: str, entity: str, live_epoch: int) -> CachedPrediction | None:
        """The entry for ``model_key`` if still trusted: inside its live epoch (``live_epoch``: the current one),
        or within its time bound."""
        if self._entries is None:
            return None
        entry = self._entries.get((feature_set, entity))
        if entry is None or entry.model_key != model_key:
            return None
        if entry.live_epoch and entry.live_epoch == live_epoch:
            return entry.prediction
        return entry.prediction if time.monotonic() < entry.bounded_until else None

    def put(
        self,
        model_key: str,
        feature_set: str,
        entity: str,
        prediction: CachedPrediction,
        *,
        trusted_for: float,
        bounded_for: float,
        live_epoch: int = 0,
    ) -> None:
        """Keep ``prediction`` for ``trusted_for`` seconds while ``live_epoch`` lasts, else ``bounded_for``."""
        if self._entries is None:
            return
        now = time.monotonic()
        keep = trusted_for if live_epoch else min(trusted_for, bounded_for)
        if keep > 0:
            entry = _Entry(model_key, prediction, live_epoch, now + bounded_for, now + keep)
            self._entries[(feature_set, entity)] = entry

    def forget(self, feature_set: str, entities: Iterable[str]) -> None:
        """Drop the entities' entries (their features changed)."""
        if self._entries is not None:
            for entity in entities:
                self._entries.pop((feature_set, entity), None)

    def clear(self) -> None:
        if self._entries is not None:
            self._entries.clear()

    @property
    def capacity(self) -> int:
        return int(self._entries.maxsize) if self._entries is not None else 0
