"""What one worker process opens at startup and closes at shutdown: pools, JVM model, feature reader, caches,
and the promotion listener. Shared by the Litestar app and the benchmark's FastAPI variant of the same path."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from serving import metrics
from serving.auth import Gate
from serving.cache import PredictionCache
from serving.features import FeatureSource
from serving.freshness import Freshness
from serving.invalidation import ChangeConsumer
from serving.local_cache import LocalPredictionCache
from serving.predictor import Predictor
from serving.rate_limit import RateLimiter
from serving.scoring import ModelHolder
from serving.settings import ServingSettings
from shardctl.credentials import with_credentials
from shardctl.java import JavaSettings
from shardctl.settings import TesseraSettings
from shardctl.store.api_keys import parse_rate
from shardctl.store.key_ring import KeyRing
from shardctl.store.notify import NotificationListener
from shardctl.store.registry import PROMOTION_CHANNEL, ModelRegistry


def _settle_interpreter(switch_interval_ms: float) -> None:
    """Tune the worker's interpreter for a latency-bound server, once its startup objects exist.

    - ``gc.freeze()``: everything alive after startup (the JVM bridge, the app, the model, the pools) moves to
      the permanent generation, so a full collection no longer walks it: measured 75-130 ms gen-2 pauses with
      ~107k tracked objects, ~10 ms after the freeze (the cache's values are untracked msgspec structs).
    - The GIL switch interval: scoring (JPype) runs on the pool's threads and releases the GIL at every Java
      call; each time, taking it back from a busy event loop waits up to one interval.
      Measured: a 5-row scoring call beside a busy thread took 37 ms at the default 5 ms, 0.15 ms at 0.1 ms.
    """
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(switch_interval_ms / 1000.0)


log = logging.getLogger(__name__)


async def open_gate(
    settings: TesseraSettings, serving: ServingSettings, catalog_dsn: str, io_pool: ThreadPoolExecutor
) -> Gate | None:
    """The worker's copy of the API keys (read now, then refreshed) and its rate limiter; None when turned off."""
    if not serving.auth:
        log.warning(
            "AUTHENTICATION IS OFF (TESSERA_SERVING__AUTH=false): every route answers without an API key and "
            "without rate limits. Never run a reachable service like this."
        )
        return None
    keys = KeyRing(catalog_dsn, refresh_seconds=serving.auth_refresh_seconds, on_refresh=metrics.API_KEYS_ACTIVE.set)
    await asyncio.get_running_loop().run_in_executor(io_pool, keys.start)
    redis_user, redis_password = serving.redis_credentials()
    limiter = RateLimiter(
        settings.redis_url, parse_rate(serving.rate_limit), username=redis_user, password=redis_password
    )
    return Gate(keys, limiter)


@dataclass
class ServingRuntime:
    """One worker's open parts, from startup to shutdown; route handlers receive it (or its model holder) by
    injection instead of reading application state."""

    settings: TesseraSettings
    serving: ServingSettings
    predictor: Predictor
    io_pool: ThreadPoolExecutor
    scoring_pool: ThreadPoolExecutor
    listener: NotificationListener
    catalog_dsn: str  # with serving's credentials
    consumer: ChangeConsumer | None = None
    gate: Gate | None = None  # None: authentication is off (``serving.auth``)

    @classmethod
    async def open(cls, settings: TesseraSettings, serving: ServingSettings | None = None) -> ServingRuntime:
        """Load the promoted model (if any), open the shard pools and Redis, and follow promotions."""
        if not settings.catalog_dsn:
            raise RuntimeError("no catalog DSN: set TESSERA_CATALOG_DSN or run `shardctl stack up`")
        serving = serving or ServingSettings()
        # Serving's own read-only role, on the catalog and (through the shard map) on every shard.
        catalog_dsn = with_credentials(settings.catalog_dsn, serving.db_credentials())
        scoring_pool = ThreadPoolExecutor(serving.scoring_threads, thread_name_prefix="tessera-score")
        io_pool = ThreadPoolExecutor(serving.io_threads, thread_name_prefix="tessera-io")
        holder = ModelHolder(ModelRegistry(catalog_dsn), settings.model_name, JavaSettings().java_home)

        def refresh(payload: str | None = None) -> None:
            model = holder.refresh(payload)
            if model is not None:
                metrics.MODEL_VERSION.set(model.version.version)

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(io_pool, refresh)
        listener = NotificationListener(catalog_dsn, PROMOTION_CHANNEL, refresh, on_reconnect=refresh)
        features = await loop.run_in_executor(io_pool, FeatureSource, catalog_dsn, serving.read_target)
        redis_user, redis_password = serving.redis_credentials()
        cache = PredictionCache(
            settings.redis_url,
            ttl_seconds=serving.cache_ttl_seconds,
            username=redis_user,
            password=redis_password,
        )
        local = LocalPredictionCache(serving.local_cache_entries)
        freshness = Freshness(
            serving.feature_version_ttl_seconds, stale_after_seconds=serving.invalidation_stale_after_seconds
        )
        predictor = Predictor(
            holder,
            features,
            cache,
            scoring_pool,
            local=local,
            freshness=freshness,
            miss_concurrency=max(2, serving.scoring_threads),
            precomputed=serving.precomputed,
        )
        consumer = None
        if serving.invalidation == "events":
            consumer = ChangeConsumer(
                features.shard_map,
                read_target=serving.read_target,
                freshness=freshness,
                local=local,
                cache=cache,
                poll_interval_seconds=serving.invalidation_poll_ms / 1000,
            ).start()
        listener.start()
        gate = await open_gate(settings, serving, catalog_dsn, io_pool)
        _settle_interpreter(serving.gil_switch_interval_ms)
        return cls(settings, serving, predictor, io_pool, scoring_pool, listener, catalog_dsn, consumer, gate)

    def catalog_connected(self) -> bool:
        """Whether the promotion listener holds its catalog connection (reported by ``/readyz`` and as a metric;
        while it is down the worker keeps its model and serves, and re-reads the promotion when it is back)."""
        connected = self.listener.connected
        metrics.CATALOG_CONNECTED.set(1 if connected else 0)
        return connected

    def scorer_status(self) -> tuple[str, float | None]:
        """The scorer's state as this worker sees it (from its change consumer) and its lag in seconds."""
        if self.consumer is None:
            return "unknown", None
        lag, known = self.consumer.scorer_lag()
        if not known or lag is None:
            return "absent", None
        lag = round(lag, 3)
        if lag <= self.serving.scorer_behind_seconds:
            return "current", lag
        return ("behind" if lag <= self.serving.scorer_down_seconds else "down"), lag

    async def close(self) -> None:
        self.listener.stop()
        if self.gate is not None:
            await self.gate.close()
        if self.consumer is not None:
            await self.consumer.stop()
        await self.predictor.drain()
        await self.predictor.cache.close()
        await self.predictor.features.aclose()
        self.scoring_pool.shutdown(wait=True)
        self.io_pool.shutdown(wait=True)
