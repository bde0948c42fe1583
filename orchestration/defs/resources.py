"""The resources every asset asks for by name, built once when the code location loads: their fields come from the
parts' settings (``TESSERA_*`` variables, then the stack's settings file), read here and nowhere else; a secret (a
role's password) is bound as ``dg.EnvVar``, resolved when a step runs and never shown in the UI."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from orchestration.resources import (
    BackupResource,
    ControlPlaneResource,
    H2OResource,
    RawDataResource,
    ScorerResource,
    TesseraResource,
)
from orchestration.settings import H2OSettings, PipelineSettings, ScorerRoleSettings
from shardctl.control.settings import ControlSettings
from shardctl.credentials import DbCredentialFields
from shardctl.settings import TesseraSettings, load_settings, settings_file_path


def _env_or(name: str, value: str | None) -> str | dg.EnvVar | None:
    """``EnvVar(name)`` when the variable is set (a deployment's value, resolved at launch), else ``value``."""
    return dg.EnvVar(name) if os.environ.get(name) else value


def _role(section: str, settings: DbCredentialFields) -> dict[str, str | dg.EnvVar | None]:
    """A part's role: its user and passfile as the settings give them, its password only from the environment."""
    password = f"TESSERA_{section.upper()}__DB_PASSWORD"
    return {
        "db_user": settings.db_user,
        "db_password": dg.EnvVar(password) if os.environ.get(password) else None,
        "db_passfile": str(settings.db_passfile) if settings.db_passfile else None,
    }


def tessera_resource(store: TesseraSettings, pipeline: PipelineSettings) -> TesseraResource:
    """The catalog, feature store and registry as the pipeline's role."""
    return TesseraResource(
        catalog_dsn=_env_or("TESSERA_CATALOG_DSN", store.catalog_dsn),
        feature_set=store.feature_set,
        model_name=store.model_name,
        data_dir=str(Path(store.data_dir).absolute()),
        configured_servers=store.server_count,
        **_role("pipeline", pipeline),
    )


def raw_data_resource(pipeline: PipelineSettings, **overrides: int) -> RawDataResource:
    """The synthetic source at the deployment's scale, or at ``overrides`` (``rows_per_day``, ``entities``)."""
    fields = {"seed": pipeline.seed, "rows_per_day": pipeline.rows_per_day, "entities": pipeline.entities}
    return RawDataResource(**{**fields, **overrides})


def scorer_resource(store: TesseraSettings) -> ScorerResource:
    """The re-scoring pass as the scorer's role (``TESSERA_SCORER__DB_*``, or the stack's ``scorer`` section)."""
    path = settings_file_path()
    return ScorerResource(
        catalog_dsn=_env_or("TESSERA_CATALOG_DSN", store.catalog_dsn),
        settings_file=str(path.absolute()) if path.exists() else None,
        **_role("scorer", ScorerRoleSettings()),
    )


@dg.definitions
def resources() -> dg.Definitions:
    store, pipeline, h2o = load_settings(), PipelineSettings(), H2OSettings()
    return dg.Definitions(
        resources={
            "tessera": tessera_resource(store, pipeline),
            "control_plane": ControlPlaneResource(
                catalog_dsn=_env_or("TESSERA_CATALOG_DSN", store.catalog_dsn), **_role("control", ControlSettings())
            ),
            "raw_data": raw_data_resource(pipeline),
            "scorer": scorer_resource(store),
            "pipes_subprocess_client": dg.PipesSubprocessClient(),
            "backups": BackupResource(data_dir=str(Path(store.data_dir).absolute())),
            "h2o_cluster": H2OResource(
                url=_env_or("TESSERA_H2O__URL", h2o.url),
                max_mem=h2o.max_mem,
                nthreads=h2o.nthreads,
                java_home=h2o.java_home,
                work_dir=str(Path(store.data_dir).absolute() / "h2o"),
            ),
        },
        # Runs execute their steps in one process: on 2 cores a process per step costs more than it gains.
        executor=dg.in_process_executor,
    )
