"""How long a cached prediction may be trusted: for its full TTL while the change stream is live, for the time
bound (``feature_version_ttl_seconds``) otherwise.

The stream is *live* while the worker's change consumer (``serving/invalidation.py``) has read every shard's
change log within ``stale_after`` and has no invalidation left to apply. Each stretch of liveness is a numbered
*live epoch*. An entry may use its full TTL only if it was computed inside the current live epoch: the consumer
has applied every change since the epoch began, so the entry's features are current unless a change is still in
the consumer's next poll. Everything else (entries from before a restart, an outage of the log or of Redis, a
stalled consumer) is trusted only for the time bound, counted from when its features were read: today's rule.

*The scorer's epoch* (``serving/cache.py``, the ``scorer:`` marker) extends that bound across workers and
restarts: the precomputing scorer reflects every change of a feature set in the cache (it writes the new
prediction, or a marker that sends the next request to the shard) and says how far it has caught up. An entry
read after the scorer's epoch began can be stale only by the changes since the scorer caught up, so its time bound
counts from then: while the scorer keeps up, the entry stays trusted however long ago it was read.

``invalidated_since`` closes the race between a read and a change: a request that read an entity's old features
just before the change was applied must not put them back into the cache after the consumer deleted them.
"""

from __future__ import annotations

import time
from collections import deque

_RECENT_SECONDS = 30.0  # how long applied invalidations are remembered for in-flight reads (a read takes < 5 s)


class Freshness:
    """One worker's view of the change stream (updated by its consumer, read by its predictor)."""

    def __init__(self, bound_seconds: float, *, stale_after_seconds: float):
        self.bound_ms = max(1, int(bound_seconds * 1000))
        self.stale_after = min(stale_after_seconds, bound_seconds)
        self._live_until = 0.0  # monotonic
        self._epoch = 0
        self.trusted_since_ms = 0  # wall-clock ms at which the current live epoch began
        self.generation = 0
        self._recent: deque[tuple[int, float, str, frozenset[str]]] = deque()

    def live_epoch(self) -> int:
        """The current live epoch, or 0 when the stream is not live (then only the time bound holds)."""
        return self._epoch if time.monotonic() < self._live_until else 0

    def mark_live(self) -> None:
        """Every shard's log was just read and every change in it applied: live for ``stale_after`` more."""
        if self.live_epoch() == 0:
            self._epoch += 1
            self.trusted_since_ms = now_ms()
        self._live_until = time.monotonic() + self.stale_after

    def mark_broken(self) -> None:
        """The stream is interrupted: nothing cached from here on may outlive the time bound."""
        self._live_until = 0.0

    def entry_trust(self, read_ms: int, ttl_ms: int, now: int, scorer_caught_up_ms: int = 0) -> tuple[int, int, int]:
        """For an entry read from its shard at ``read_ms`` that Redis keeps ``ttl_ms`` more: the live epoch that
        lets it use its full TTL (0: none), the ms it is trusted for, and the ms left of its time bound.

        ``scorer_caught_up_ms``: the entry lies in the scorer's current epoch, caught up to then (0: it does not).
        Every change committed before then is reflected in the cache, so the entry can be stale only by what
        changed since: its time bound counts from there when that is later than its read."""
        bounded = self.bound_ms - (now - max(read_ms, scorer_caught_up_ms))
        epoch = self.live_epoch()
        if epoch and read_ms >= self.trusted_since_ms:
            return epoch, ttl_ms, bounded
        return 0, min(ttl_ms, bounded), bounded

    def record_invalidation(self, feature_set: str, entities: frozenset[str]) -> None:
        self.generation += 1
        now = time.monotonic()
        self._recent.append((self.generation, now, feature_set, entities))
        while self._recent and self._recent[0][1] < now - _RECENT_SECONDS:
            self._recent.popleft()

    def invalidated_since(self, generation: int, feature_set: str) -> set[str]:
        """Entities of ``feature_set`` invalidated after ``generation`` was read (empty in the common case)."""
        if generation == self.generation:
            return set()
        out: set[str] = set()
        for gen, _, changed_set, entities in self._recent:
            if gen > generation and changed_set == feature_set:
                out |= entities
        return out


def now_ms() -> int:
    return time.time_ns() // 1_000_000
