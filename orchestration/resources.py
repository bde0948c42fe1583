"""Dagster resources: thin, configurable wrappers around shardctl (catalog, feature store), H2O and Redis.

Every field defaults to ``None`` = "take it from ``TesseraSettings`` at run time", so the code location loads
(and ``dagster definitions validate`` passes) without a running stack, and the same definitions run against
the local stack, the tests' stack or a deployment's environment variables.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import h2o
import redis

from orchestration import h2o_runtime
from shardctl.settings import TesseraSettings, load_settings
from shardctl.store import FeatureStore
from shardctl.store.registry import ModelRegistry


class TesseraResource(dg.ConfigurableResource):
    """The catalog, the shard topology and the model registry, as the settings describe them."""

    catalog_dsn: str | None = None

    def settings(self) -> TesseraSettings:
        return load_settings()

    def dsn(self) -> str:
        dsn = self.catalog_dsn or self.settings().catalog_dsn
        if not dsn:
            raise dg.Failure("no catalog DSN: run `shardctl stack up` or set TESSERA_CATALOG_DSN")
        return dsn

    def registry(self) -> ModelRegistry:
        registry = ModelRegistry(self.dsn())
        registry.ensure_schema()
        return registry

    @contextmanager
    def feature_store(self) -> Iterator[FeatureStore]:
        """The shardctl feature store (shard map watcher, writer, reader); closed after use."""
        settings = self.settings()
        if self.catalog_dsn:
            settings = settings.model_copy(update={"catalog_dsn": self.catalog_dsn})
        store = FeatureStore.open(settings)
        try:
            yield store
        finally:
            store.close()


class H2OResource(dg.ConfigurableResource):
    """An H2O cluster: the one at ``url``, or a local JVM started for the step and stopped by PID after it."""

    url: str | None = None
    max_mem: str = "1G"
    nthreads: int = 2
    java_home: str | None = None

    @contextmanager
    def cluster(self, log: dg.DagsterLogManager | None = None) -> Iterator[str]:
        """Connect the h2o client for the duration of the block; yields the cluster URL."""
        settings = load_settings()
        url = self.url or settings.h2o.url
        if url:
            h2o_runtime.connect(url)
            yield url
            return
        local = h2o_runtime.start_local_h2o(
            Path(settings.data_dir) / "h2o",
            max_mem=self.max_mem,
            nthreads=self.nthreads,
            java_home=self.java_home or settings.h2o.java_home,
        )
        if log:
            log.info(f"started H2O (pid {local.pid}) at {local.url}")
        try:
            h2o_runtime.connect(local.url)
            yield local.url
        finally:
            h2o.connection().close()
            if not local.stop() and log:
                log.warning(f"H2O pid {local.pid} did not stop")


class RedisResource(dg.ConfigurableResource):
    """The prediction cache's Redis, for pipeline steps that talk to the cache (connection from the settings)."""

    url: str | None = None

    def client(self) -> redis.Redis:
        url = self.url or load_settings().redis_url
        if not url:
            raise dg.Failure("no Redis URL: run `shardctl stack up` or set TESSERA_REDIS_URL")
        return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
