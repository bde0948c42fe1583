"""One prediction path for single and batch requests: cache lookup, single-flight, shard read (with the scorer's
precomputed prediction when one is current: ``shardctl/store/predictions.py``), scoring of the rest.

Blocking work never runs on the event loop: MOJO scoring runs on the bounded scoring pool
(``serving.scoring_threads``); feature reads are async psycopg on the loop itself. Hits come from the
worker's memory first (``LocalPredictionCache``), then Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from serving import metrics
from serving.cache import CachedPrediction, CacheLookup, PredictionCache, SingleFlight
from serving.coalesce import Coalescer
from serving.errors import PredictionError, ShardDownError, UnknownEntityError
from serving.features import FeatureSource
from serving.freshness import Freshness, now_ms
from serving.local_cache import LocalPredictionCache
from serving.scoring import LoadedModel, ModelHolder, Score

_LookupKey = tuple[str, str, str]  # (model key, feature set, entity)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One entity's answer: a ``prediction``, or the ``error`` that kept it from one (unknown entity, shard down)."""

    entity_id: str
    prediction: CachedPrediction | None = None
    cached: bool = False
    error: PredictionError | None = None


class Predictor:
    """Answers entities from, in order: this worker's memory, Redis, or a shard read that brings the scorer's
    precomputed prediction when it is current for the served model and the features read, else scoring.

    Redis lookups of concurrent requests are coalesced into one script call, and misses into one shard read
    per shard and one scoring call (``Coalescer``), so the fixed cost of each round trip and thread hop is
    shared by every request waiting for it; ``SingleFlight`` keeps one computation per key even across
    batches.
    """

    def __init__(
        self,
        holder: ModelHolder,
        features: FeatureSource,
        cache: PredictionCache,
        scoring_pool: ThreadPoolExecutor,
        *,
        local: LocalPredictionCache | None = None,
        freshness: Freshness | None = None,
        version_ttl_seconds: float = 2.0,
        miss_concurrency: int = 2,
        lookup_concurrency: int = 2,
        precomputed: bool = True,
    ):
        self.holder = holder
        self.features = features
        self.cache = cache
        self.local = local if local is not None else LocalPredictionCache(0)
        # Without a change consumer the stream is never live: every entry keeps the time bound (today's rule).
        self.freshness = freshness if freshness is not None else Freshness(version_ttl_seconds, stale_after_seconds=0)
        self._scoring_pool = scoring_pool
        # Read the scorer's precomputed predictions with the features (serving/scorer/): a miss they cover costs
        # the shard read alone, no scoring.
        self.precomputed = precomputed
        self._flight = SingleFlight()
        self._lookups: Coalescer[_LookupKey, CacheLookup] = Coalescer(
            self._lookup_batch, max_inflight=lookup_concurrency
        )
        self._misses: Coalescer[tuple[LoadedModel, str], Outcome] = Coalescer(
            self._compute_batch, max_inflight=miss_concurrency, max_batch=256
        )

    async def predict(self, entity_ids: Sequence[str]) -> tuple[LoadedModel, list[Outcome]]:
        """Outcomes in the order of ``entity_ids`` (duplicates answered once); raises ``NoModelError``."""
        model = self.holder.require()
        key = model.key
        feature_set = model.version.feature_set
        ids = list(dict.fromkeys(entity_ids))
        outcomes: dict[str, Outcome] = {}
        live = self.freshness.live_epoch()
        for entity in ids:
            hit = self.local.get(key, feature_set, entity, live)
            if hit is not None:
                outcomes[entity] = Outcome(entity, hit, cached=True)
        if outcomes:
            metrics.CACHE_LOOKUPS.labels("hit", "memory").inc(len(outcomes))
        remote = [e for e in ids if e not in outcomes]
        if remote:
            generation = self.freshness.generation
            looked_up = await self._lookups.submit([(key, feature_set, e) for e in remote])
            changed = self.freshness.invalidated_since(generation, feature_set)
            now = now_ms()
            misses = []
            late_memory_hits = 0
            for entity in remote:
                found = looked_up[(key, feature_set, entity)]
                if found.prediction is not None:
                    epoch, trust, bounded = self.freshness.entry_trust(
                        found.read_ms, found.ttl_ms, now, found.scorer_caught_up_ms
                    )
                    if trust > 0:
                        outcomes[entity] = Outcome(entity, found.prediction, cached=True)
                        if entity not in changed:  # else the consumer has just dropped it
                            self.local.put(
                                key,
                                feature_set,
                                entity,
                                found.prediction,
                                trusted_for=trust / 1000,
                                bounded_for=bounded / 1000,
                                live_epoch=epoch,
                            )
                        continue
                # A computation that finished while this lookup was in flight has left its answer in memory
                # (its cache write runs behind it, and its single-flight is already resolved): use it, or this
                # request would score the entity a second time.
                hit = self.local.get(key, feature_set, entity, self.freshness.live_epoch())
                if hit is not None:
                    outcomes[entity] = Outcome(entity, hit, cached=True)
                    late_memory_hits += 1
                else:
                    misses.append(entity)
            if late_memory_hits:
                metrics.CACHE_LOOKUPS.labels("hit", "memory").inc(late_memory_hits)
            if len(remote) > len(misses) + late_memory_hits:
                metrics.CACHE_LOOKUPS.labels("hit", "redis").inc(len(remote) - len(misses) - late_memory_hits)
            if misses:
                metrics.CACHE_LOOKUPS.labels("miss", "none").inc(len(misses))
                outcomes.update(await self._compute_once(model, misses))
        return model, [outcomes[e] for e in ids]

    async def _lookup_batch(self, keys: list[_LookupKey]) -> dict[_LookupKey, CacheLookup]:
        groups: dict[tuple[str, str], list[str]] = {}
        for model_key, feature_set, entity in keys:
            groups.setdefault((model_key, feature_set), []).append(entity)
        out: dict[_LookupKey, CacheLookup] = {}
        for (model_key, feature_set), entities in groups.items():
            found = await self.cache.lookup(model_key, feature_set, entities)
            for entity, lookup in zip(entities, found, strict=True):
                out[(model_key, feature_set, entity)] = lookup
        return out

    async def _compute_once(self, model: LoadedModel, entities: list[str]) -> dict[str, Outcome]:
        prefix = f"{model.key}:{model.version.feature_set}:"
        mine, theirs = self._flight.claim([prefix + e for e in entities])
        results: dict[str, Outcome] = {}
        if mine:
            try:
                computed = await self._misses.submit([(model, k[len(prefix) :]) for k in mine])
            except BaseException as exc:
                self._flight.resolve({}, mine, exc)
                raise
            self._flight.resolve({prefix + e: o for (_, e), o in computed.items()}, mine)
            results.update({e: o for (_, e), o in computed.items()})
        for key, fut in theirs.items():
            outcome: Outcome = await asyncio.shield(fut)
            results[key[len(prefix) :]] = outcome
        return results

    async def _compute_batch(self, keys: list[tuple[LoadedModel, str]]) -> dict[tuple[LoadedModel, str], Outcome]:
        by_model: dict[LoadedModel, list[str]] = {}
        for model, entity in keys:
            by_model.setdefault(model, []).append(entity)
        out: dict[tuple[LoadedModel, str], Outcome] = {}
        for model, entities in by_model.items():
            computed = await self._compute(model, entities)
            out.update({(model, e): o for e, o in computed.items()})
        return out

    async def _compute(self, model: LoadedModel, entities: list[str]) -> dict[str, Outcome]:
        loop = asyncio.get_running_loop()
        feature_set = model.version.feature_set
        generation, epoch, read_ms = self.freshness.generation, self.freshness.live_epoch(), now_ms()
        started = time.perf_counter()
        version = model.version
        read = await self.features.aread(
            entities, feature_set, (version.model_name, version.version) if self.precomputed else None
        )
        metrics.FEATURE_READ_SECONDS.observe(time.perf_counter() - started)
        out: dict[str, Outcome] = {}
        for shard in read.failed:
            metrics.SHARD_ERRORS.labels(str(shard)).inc()
            for entity in read.failed_ids.get(shard, []):
                out[entity] = Outcome(entity, error=ShardDownError(f"shard {shard} is unavailable; retry later"))
        for entity in read.missing:
            out[entity] = Outcome(
                entity, error=UnknownEntityError(f"entity {entity!r} has no features in {feature_set!r}")
            )
        records = list(read.records.values())
        if not records:
            return out
        # Precomputed by the scorer for exactly these features and this model version: no scoring. The rest is
        # scored here. Scoring a row (~20 us) costs less than asking Redis whether another worker already scored
        # this version, so a miss always scores; the cache write then runs behind the response.
        to_score = [r for r in records if r.prediction is None]
        scored_now: list[Score] = []
        if to_score:
            started = time.perf_counter()
            scored_now = await loop.run_in_executor(self._scoring_pool, model.score, [r.features for r in to_score])
            metrics.SCORING_SECONDS.observe(time.perf_counter() - started)
            metrics.SCORED_ROWS.inc(len(to_score))
        if len(to_score) < len(records):
            metrics.PRECOMPUTED_ROWS.inc(len(records) - len(to_score))
        fresh_scores = iter(scored_now)
        scores = [Score(*r.prediction) if r.prediction is not None else next(fresh_scores) for r in records]
        # A change applied while this read was in flight may have come after the read saw the old features: those
        # entities are answered but not cached (in Redis, the change's marker refuses the write as well).
        changed = self.freshness.invalidated_since(generation, feature_set)
        bound = self.freshness.bound_ms
        keep_ms = self.cache.ttl * 1000 if epoch else bound
        fresh: dict[str, CachedPrediction] = {}
        versions: dict[str, int] = {}
        for record, scored in zip(records, scores, strict=True):
            pred = CachedPrediction(
                scored.score, scored.label, record.version, record.event_ts.isoformat(), record.written_at.isoformat()
            )
            out[record.entity_id] = Outcome(record.entity_id, pred)
            if record.entity_id in changed:
                continue
            fresh[record.entity_id] = pred
            versions[record.entity_id] = record.version
            self.local.put(
                model.key,
                feature_set,
                record.entity_id,
                pred,
                trusted_for=keep_ms / 1000,
                bounded_for=bound / 1000,
                live_epoch=epoch,
            )
        # Behind the answer: queued, it rides with the next Redis lookup (its errors are counted by the cache).
        self.cache.put_behind(feature_set, versions, fresh, model.key, read_ms=read_ms, version_ttl_ms=keep_ms)
        return out

    async def drain(self) -> None:
        """Send the cache writes still queued (at shutdown, and in tests that read Redis right after)."""
        await self.cache.flush()
