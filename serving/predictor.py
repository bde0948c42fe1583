"""One prediction path for single and batch requests: cache lookup, single-flight, shard read, scoring.

Blocking work never runs on the event loop: feature reads (psycopg) run on the I/O pool, MOJO scoring on
the bounded scoring pool (``serving.scoring_threads``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from serving import metrics
from serving.cache import CachedPrediction, PredictionCache, SingleFlight
from serving.features import FeatureSource
from serving.scoring import LoadedModel, ModelHolder


@dataclass(frozen=True, slots=True)
class Outcome:
    """One entity's answer: ``status`` 200 with a prediction, 404 unknown, or 503 (its shard is down)."""

    entity_id: str
    status: int
    prediction: CachedPrediction | None = None
    cached: bool = False
    error: str | None = None


class MissBatcher:
    """Coalesces concurrent cache misses: while ``max_inflight`` computations run, new misses queue up and go
    together in the next one (one shard read per shard and one scoring call for the whole group), so under
    load the per-request thread hops and round trips are shared instead of multiplied."""

    def __init__(self, compute, max_inflight: int = 2, max_batch: int = 256):
        self._compute = compute
        self._max_inflight = max_inflight
        self._max_batch = max_batch
        self._pending: list[tuple[LoadedModel, str, asyncio.Future]] = []
        self._inflight = 0
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, model: LoadedModel, entities: list[str]) -> dict[str, Outcome]:
        loop = asyncio.get_running_loop()
        futures = {e: loop.create_future() for e in entities}
        self._pending.extend((model, e, f) for e, f in futures.items())
        self._kick()
        return {e: await f for e, f in futures.items()}

    def _kick(self) -> None:
        while self._pending and self._inflight < self._max_inflight:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[LoadedModel, str, asyncio.Future]]) -> None:
        try:
            by_model: dict[int, list[tuple[LoadedModel, str, asyncio.Future]]] = {}
            for item in batch:
                by_model.setdefault(id(item[0]), []).append(item)
            for items in by_model.values():
                try:
                    out = await self._compute(items[0][0], [e for _, e, _ in items])
                except Exception as exc:
                    for _, _, fut in items:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for _, entity, fut in items:
                    if not fut.done():
                        fut.set_result(out[entity])
        finally:
            self._inflight -= 1
            self._kick()


class Predictor:
    def __init__(
        self,
        holder: ModelHolder,
        features: FeatureSource,
        cache: PredictionCache,
        scoring_pool: ThreadPoolExecutor,
        io_pool: ThreadPoolExecutor,
        miss_concurrency: int = 2,
    ):
        self.holder = holder
        self.features = features
        self.cache = cache
        self._scoring_pool = scoring_pool
        self._io_pool = io_pool
        self._flight = SingleFlight()
        self._batcher = MissBatcher(self._compute, max_inflight=miss_concurrency)

    async def predict(self, entity_ids: Sequence[str]) -> tuple[LoadedModel, list[Outcome]]:
        """Outcomes in the order of ``entity_ids`` (duplicates answered once); raises ``NoModelError``."""
        model = self.holder.require()
        feature_set = model.version.feature_set
        ids = list(dict.fromkeys(entity_ids))
        outcomes: dict[str, Outcome] = {}

        looked_up = await self.cache.lookup(model.key, feature_set, ids)
        for entity, (_, hit) in zip(ids, looked_up, strict=True):
            if hit is not None:
                outcomes[entity] = Outcome(entity, 200, hit, cached=True)
        metrics.CACHE_LOOKUPS.labels("hit").inc(len(outcomes))
        misses = [e for e in ids if e not in outcomes]
        if misses:
            metrics.CACHE_LOOKUPS.labels("miss").inc(len(misses))
            outcomes.update(await self._compute_once(model, misses))
        return model, [outcomes[e] for e in ids]

    async def _compute_once(self, model: LoadedModel, entities: list[str]) -> dict[str, Outcome]:
        prefix = f"{model.key}:{model.version.feature_set}:"
        mine, theirs = self._flight.claim([prefix + e for e in entities])
        results: dict[str, Outcome] = {}
        if mine:
            try:
                computed = await self._batcher.submit(model, [k[len(prefix) :] for k in mine])
            except BaseException as exc:
                self._flight.resolve({}, mine, exc)
                raise
            self._flight.resolve({prefix + e: o for e, o in computed.items()}, mine)
            results.update(computed)
        for key, fut in theirs.items():
            outcome: Outcome = await asyncio.shield(fut)
            results[key[len(prefix) :]] = outcome
        return results

    async def _compute(self, model: LoadedModel, entities: list[str]) -> dict[str, Outcome]:
        loop = asyncio.get_running_loop()
        feature_set = model.version.feature_set
        started = time.perf_counter()
        read = await loop.run_in_executor(self._io_pool, self.features.read, entities, feature_set)
        metrics.FEATURE_READ_SECONDS.observe(time.perf_counter() - started)
        out: dict[str, Outcome] = {}
        for shard in read.failed:
            metrics.SHARD_ERRORS.labels(str(shard)).inc()
            for entity in read.failed_ids.get(shard, []):
                out[entity] = Outcome(entity, 503, error=f"shard {shard} is unavailable; retry later")
        for entity in read.missing:
            out[entity] = Outcome(entity, 404, error=f"entity {entity!r} has no features in {feature_set!r}")
        records = list(read.records.values())
        if not records:
            return out
        # Another worker (or an expired version key) may already have this exact prediction.
        keys = [self.cache.prediction_key(model.key, feature_set, r.entity_id, r.version) for r in records]
        to_score = []
        for record, hit in zip(records, await self.cache.get_predictions(keys), strict=True):
            if hit is not None:
                out[record.entity_id] = Outcome(record.entity_id, 200, hit, cached=True)
            else:
                to_score.append(record)
        fresh: dict[str, CachedPrediction] = {}
        if to_score:
            started = time.perf_counter()
            scores = await loop.run_in_executor(self._scoring_pool, model.score, [r.features for r in to_score])
            metrics.SCORING_SECONDS.observe(time.perf_counter() - started)
            metrics.SCORED_ROWS.inc(len(to_score))
            for record, scored in zip(to_score, scores, strict=True):
                pred = CachedPrediction(
                    scored.score,
                    scored.label,
                    record.version,
                    record.event_ts.isoformat(),
                    record.written_at.isoformat(),
                )
                fresh[record.entity_id] = pred
                out[record.entity_id] = Outcome(record.entity_id, 200, pred)
        await self.cache.put(feature_set, {r.entity_id: r.version for r in records}, fresh, model.key)
        return out


def age_seconds(iso_ts: str) -> float:
    """Seconds since an ISO timestamp (feature freshness in responses)."""
    return max(0.0, (datetime.now(UTC) - datetime.fromisoformat(iso_ts)).total_seconds())
