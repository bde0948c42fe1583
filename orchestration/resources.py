"""Dagster resources: configurable wrappers around shardctl (catalog, feature store, registry) and H2O.

Their fields are real config (the Launchpad shows them); ``defs/resources.py`` binds them from the environment
(``dg.EnvVar``) or the part's settings when the code location loads. A field left ``None`` is resolved when a
step runs, from ``TesseraSettings`` (the stack's file), so the code location loads and ``dg check defs`` passes
without a running stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import h2o
from pydantic import Field

from orchestration import h2o_runtime
from orchestration.settings import DEFAULT_H2O_MAX_MEM, H2OSettings, PipelineSettings
from shardctl.credentials import with_credentials
from shardctl.settings import TesseraSettings, load_settings
from shardctl.store import FeatureStore
from shardctl.store.registry import ModelRegistry


class TesseraResource(dg.ConfigurableResource):
    """The catalog, the shard topology and the model registry, as the settings describe them."""

    catalog_dsn: str | None = Field(
        default=None, description="The catalog's libpq DSN; unset: TESSERA_CATALOG_DSN or the stack's settings.json."
    )

    def settings(self) -> TesseraSettings:
        return load_settings()

    def dsn(self) -> str:
        """The catalog, connected to as the pipeline's role (``TESSERA_PIPELINE__DB_*``)."""
        dsn = self.catalog_dsn or self.settings().catalog_dsn
        if not dsn:
            raise dg.Failure("no catalog DSN: run `shardctl stack up` or set TESSERA_CATALOG_DSN")
        return with_credentials(dsn, PipelineSettings().db_credentials())

    def control_dsn(self) -> str:
        """The catalog as the control plane (``TESSERA_CONTROL__DB_*``): what moves data between servers
        (resharding creates subscriptions and raises fences) runs with its rights, not the pipeline's."""
        from shardctl.control.settings import ControlSettings

        dsn = self.catalog_dsn or self.settings().catalog_dsn
        if not dsn:
            raise dg.Failure("no catalog DSN: run `shardctl stack up` or set TESSERA_CATALOG_DSN")
        return with_credentials(dsn, ControlSettings().db_credentials())

    def shard_dsns(self) -> list[str]:
        """The shards of the current shard map, connected to as the pipeline's role."""
        with self.feature_store() as store:
            return list(store.shard_map.dsns)

    def registry(self) -> ModelRegistry:
        """The model registry as the pipeline's role. Its tables are the control plane's to create (`shardctl
        stack up`, `shardctl roles ensure`): the pipeline may add rows, not run DDL on tables it does not own."""
        return ModelRegistry(self.dsn())

    @contextmanager
    def feature_store(self) -> Iterator[FeatureStore]:
        """The shardctl feature store (shard map watcher, writer, reader) as the pipeline's role; closed after use.
        The topology is the control plane's to prepare (`shardctl stack up`, `shardctl roles ensure`)."""
        settings = self.settings()
        if self.catalog_dsn:
            settings = settings.model_copy(update={"catalog_dsn": self.catalog_dsn})
        store = FeatureStore.open(settings, prepare_topology=False, credentials=PipelineSettings().db_credentials())
        try:
            yield store
        finally:
            store.close()


class H2OResource(dg.ConfigurableResource):
    """An H2O cluster: the one at ``url``, or a local JVM started for the step and stopped by PID after it."""

    url: str | None = Field(
        default=None, description="An existing H2O cluster; unset: TESSERA_H2O__URL, else a local JVM."
    )
    max_mem: str = Field(
        default=DEFAULT_H2O_MAX_MEM,
        pattern=r"^\d+[mMgG]$",
        description="Heap of a local JVM (java -Xmx).",
    )
    nthreads: int = Field(default=2, ge=1, le=256, description="Threads of a local JVM.")
    java_home: str | None = Field(default=None, description="Java 8-17 home for a local JVM; unset: found.")

    @contextmanager
    def cluster(self, log: dg.DagsterLogManager | None = None) -> Iterator[str]:
        """Connect the h2o client for the duration of the block; yields the cluster URL."""
        url = self.url or H2OSettings().url
        if url:
            h2o_runtime.connect(url)
            yield url
            return
        local = h2o_runtime.start_local_h2o(
            Path(load_settings().data_dir) / "h2o",
            max_mem=self.max_mem,
            nthreads=self.nthreads,
            java_home=self.java_home or H2OSettings().java_home,
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
