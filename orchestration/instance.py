"""The local Dagster instance: a DAGSTER_HOME under the data dir holding a copy of the repository's
dagster.yaml, and the DAGSTER_PG_* variables it reads, taken from the settings' ``dagster_dsn``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from orchestration.settings import PipelineSettings
from shardctl.credentials import with_credentials
from shardctl.settings import TesseraSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTANCE_YAML = Path(__file__).resolve().parent / "dagster.yaml"
WORKSPACE_YAML = REPO_ROOT / "workspace.yaml"
LIBPQ_TLS_KEYS = ("sslmode", "sslrootcert", "sslcert", "sslkey")


class InstanceConfigError(RuntimeError):
    """The settings do not say where Dagster's database is."""


def dagster_env(settings: TesseraSettings) -> dict[str, str]:
    """Environment for any Dagster process of this stack (webserver, daemon, CLI, in-process runs)."""
    if not settings.dagster_dsn:
        raise InstanceConfigError("no dagster_dsn in the settings: run `shardctl stack up` first")
    # Dagster's storage is the pipeline's: its role owns the database (`shardctl stack up`).
    pipeline = PipelineSettings.of_stack(settings.data_dir)
    parts = conninfo_to_dict(with_credentials(settings.dagster_dsn, pipeline.db_credentials()))
    home = Path(settings.data_dir).absolute() / "dagster_home"
    # A passfile (the local stack's) reaches dagster-postgres's libpq as PGPASSFILE: dagster.yaml names no password.
    passfile = {"PGPASSFILE": str(parts["passfile"])} if parts.get("passfile") else {}
    return {
        **passfile,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": str(parts.get("host", "127.0.0.1")).split(",")[0],
        "DAGSTER_PG_PORT": str(parts.get("port", "5432")).split(",")[0],
        "DAGSTER_PG_USER": str(parts.get("user", "postgres")),
        "DAGSTER_PG_DB": str(parts.get("dbname", "dagster")),
        "TESSERA_DATA_DIR": str(Path(settings.data_dir).absolute()),
        # dagster-postgres takes no libpq options from its config fields: its psycopg2 reads TLS from libpq's
        # variables, so a DSN's sslmode=verify-full and its CA reach Dagster's storage too.
        **{f"PG{key.upper()}": str(parts[key]) for key in LIBPQ_TLS_KEYS if parts.get(key)},
    }


def prepare_home(settings: TesseraSettings) -> dict[str, str]:
    """Create DAGSTER_HOME with the instance config; returns the environment to run Dagster with."""
    env = dagster_env(settings)
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(INSTANCE_YAML, home / "dagster.yaml")
    return env


def apply_env(env: dict[str, str]) -> None:
    os.environ.update(env)
