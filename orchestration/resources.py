"""Dagster resources: configurable wrappers around shardctl (catalog, feature store, registry, control plane), H2O
and the synthetic source of raw events.

Every field is real config (the UI shows it, a run may override it). ``defs/resources.py`` fills the fields once,
when the code location loads, from the parts' settings; secrets are bound as ``dg.EnvVar`` so they are resolved when
a step runs and never shown. Nothing here reads the settings again: a step sees what the code location was built
with (reload the code location after `shardctl stack up` rewrote the stack's settings file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import h2o
import pandas as pd
from pydantic import Field

from orchestration import h2o_heap, h2o_runtime
from orchestration.settings import DEFAULT_H2O_MAX_MEM, H2O_MAX_MEM_PATTERN
from orchestration.synthetic import generate_day
from shardctl.credentials import DbCredentials, with_credentials
from shardctl.settings import TesseraSettings
from shardctl.store import FeatureStore
from shardctl.store.registry import ModelRegistry


class CatalogResource(dg.ConfigurableResource):
    """The catalog (where the shard map, the journal and the registry are), connected to as one Postgres role."""

    catalog_dsn: str | None = Field(default=None, description="The catalog's libpq DSN (a location; no password).")
    db_user: str | None = Field(default=None, description="The role to connect as; unset: as the DSN says.")
    db_password: str | None = Field(default=None, description="Its password (bound from the environment only).")
    db_passfile: str | None = Field(default=None, description="A libpq passfile instead of a password.")

    def credentials(self) -> DbCredentials:
        return DbCredentials(self.db_user, self.db_password, self.db_passfile)

    def dsn(self) -> str:
        """The catalog as this resource's role."""
        if not self.catalog_dsn:
            raise dg.Failure(
                "no catalog DSN: run `shardctl stack up` (then reload the code location) or set TESSERA_CATALOG_DSN"
            )
        return with_credentials(self.catalog_dsn, self.credentials())


class TesseraResource(CatalogResource):
    """The catalog, the shard topology and the model registry as the pipeline's role (``TESSERA_PIPELINE__DB_*``),
    and the names the pipeline shares with serving (feature set, model) and where it keeps its files."""

    feature_set: str = Field(description="The feature set the pipeline writes.")
    model_name: str = Field(description="The registry's model the pipeline trains and promotes.")
    data_dir: str = Field(description="Where model artifacts are published (models/<name>/<version>).")
    configured_servers: int = Field(
        default=0, ge=0, description="Servers the settings name: the shard count before the catalog has a shard map."
    )

    def registry(self) -> ModelRegistry:
        """The model registry as the pipeline's role. Its tables are the control plane's to create (`shardctl
        stack up`, `shardctl roles ensure`): the pipeline may add rows, not run DDL on tables it does not own."""
        return ModelRegistry(self.dsn())

    @contextmanager
    def feature_store(self) -> Iterator[FeatureStore]:
        """The shardctl feature store (shard map watcher, writer, reader) as the pipeline's role; closed after use.
        The topology is the control plane's to prepare (`shardctl stack up`, `shardctl roles ensure`)."""
        self.dsn()  # the same message as every other step when there is no catalog
        # Without preparing the topology, opening the store needs only the catalog's location.
        location = TesseraSettings.model_construct(catalog_dsn=self.catalog_dsn)
        store = FeatureStore.open(location, prepare_topology=False, credentials=self.credentials())
        try:
            yield store
        finally:
            store.close()


class ControlPlaneResource(CatalogResource):
    """The catalog as the control plane's role (``TESSERA_CONTROL__DB_*``): what moves data between servers
    (resharding creates subscriptions and raises fences) runs with its rights, not the pipeline's."""


class BackupResource(dg.ConfigurableResource):
    """The local stack's backups, through `shardctl backup` and `shardctl restore` (the control plane's command
    line, run as a process: the pipeline never imports the local stack). On Kubernetes Spilo's WAL-G takes the
    backups instead (docs/architecture/physical.md, "Backups")."""

    data_dir: str = Field(description="The stack's data dir (TESSERA_DATA_DIR).")
    timeout_s: float = Field(default=3600.0, gt=0, description="Longest a backup command may take.")

    def shardctl(self, *args: str, data_dir: str | None = None, as_json: bool = True) -> Any:
        """Run ``shardctl ARGS [--json]`` on the stack (or on ``data_dir``); its JSON output, or ``dg.Failure``
        with its one-line error."""
        env = {**os.environ, "TESSERA_DATA_DIR": data_dir or self.data_dir}
        env.pop("TESSERA_SETTINGS_FILE", None)
        done = subprocess.run(
            [sys.executable, "-m", "shardctl.cli", *args, *(["--json"] if as_json else [])],
            capture_output=True,
            text=True,
            env=env,
            timeout=self.timeout_s,
            check=False,
        )
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            raise dg.Failure(f"shardctl {' '.join(args)}: {said}")
        return json.loads(done.stdout) if as_json and done.stdout.strip() else done.stdout


class ScorerResource(dg.ConfigurableResource):
    """The precomputing scorer's re-scoring pass (``python -m serving.scorer rescore``), run as a process: the
    pipeline never imports serving, and the pass scores with serving's own MOJO code, so a precomputed prediction
    is exactly what serving would compute on demand. It connects as the scorer's role (``TESSERA_SCORER__DB_*``:
    reads features, writes predictions), not as the pipeline's."""

    catalog_dsn: str | None = Field(default=None, description="The catalog's libpq DSN (a location; no password).")
    settings_file: str | None = Field(default=None, description="The stack's settings file, if any.")
    db_user: str | None = Field(default=None, description="The scorer's role; unset: as the settings file says.")
    db_password: str | None = Field(default=None, description="Its password (bound from the environment only).")
    db_passfile: str | None = Field(default=None, description="A libpq passfile instead of a password.")

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "serving.scorer", *args]

    def env(self) -> dict[str, str]:
        """The process's environment: ours, with the catalog, the settings file and the scorer's role."""
        values = {
            "TESSERA_CATALOG_DSN": self.catalog_dsn,
            "TESSERA_SETTINGS_FILE": self.settings_file,
            "TESSERA_SCORER__DB_USER": self.db_user,
            "TESSERA_SCORER__DB_PASSWORD": self.db_password,
            "TESSERA_SCORER__DB_PASSFILE": self.db_passfile,
        }
        return {**os.environ, **{k: v for k, v in values.items() if v}}


class RawDataResource(dg.ConfigurableResource):
    """The source of raw events: a deterministic synthetic population (its seed and size) and a day's volume.

    A resource rather than per-asset run config because every daily partition must come from the same population:
    the values are the deployment's (``TESSERA_PIPELINE__SEED``, ``__ENTITIES``, ``__ROWS_PER_DAY``), and a run
    that wants another scale (`python -m orchestration run --rows-per-day`) passes the whole resource as run config.
    """

    seed: int = Field(description="Seed of the population and of every day's events.")
    rows_per_day: int = Field(ge=1, description="Raw events per daily partition.")
    entities: int = Field(ge=1, description="Customers in the population.")

    def generate(self, day: date, first_day: date) -> pd.DataFrame:
        """The events of ``day``; ``first_day`` (the calendar's first partition) is the population's day 0."""
        return generate_day(day, start_date=first_day, seed=self.seed, rows=self.rows_per_day, entities=self.entities)


class H2OResource(dg.ConfigurableResource):
    """An H2O cluster: the one at ``url``, or a local JVM started for the step and stopped by PID after it."""

    url: str | None = Field(default=None, description="An existing H2O cluster; unset: a local JVM per step.")
    max_mem: str = Field(
        default=DEFAULT_H2O_MAX_MEM,
        pattern=H2O_MAX_MEM_PATTERN,
        description="Heap of a local JVM (java -Xmx), or auto: sized from the data the step loads.",
    )
    nthreads: int = Field(default=2, ge=1, le=256, description="Threads of a local JVM.")
    java_home: str | None = Field(default=None, description="Java 8-17 home for a local JVM; unset: found.")
    work_dir: str = Field(default=".tessera/h2o", description="Where a local JVM keeps its logs.")

    @contextmanager
    def cluster(self, log: dg.DagsterLogManager | None = None, *, rows: int = 0, columns: int = 0) -> Iterator[str]:
        """Connect the h2o client for the duration of the block; yields the cluster URL. ``rows`` x ``columns``
        is the most data the block loads at once: with ``max_mem=auto`` a local JVM's heap is sized from it."""
        if self.url:
            h2o_runtime.connect(self.url)
            yield self.url
            return
        try:
            max_mem = h2o_heap.max_mem_for(self.max_mem, rows, columns)
        except h2o_heap.HeapTooSmallError as exc:
            raise dg.Failure(str(exc)) from exc
        local = h2o_runtime.start_local_h2o(
            Path(self.work_dir), max_mem=max_mem, nthreads=self.nthreads, java_home=self.java_home
        )
        if log:
            log.info(f"started H2O (pid {local.pid}, heap {max_mem}) at {local.url}")
        try:
            h2o_runtime.connect(local.url)
            yield local.url
        finally:
            h2o.connection().close()
            if not local.stop() and log:
                log.warning(f"H2O pid {local.pid} did not stop")
