"""The resources every asset asks for by name, bound when the code location loads: from ``dg.EnvVar`` where the
value comes from the environment (a deployment), else from the part's settings (the local stack's file)."""

import os

import dagster as dg

from orchestration.resources import H2OResource, TesseraResource
from orchestration.settings import H2OSettings


def _from_env(name: str) -> dg.EnvVar | None:
    """``EnvVar(name)`` when the variable is set (resolved at launch, never shown), else None."""
    return dg.EnvVar(name) if os.environ.get(name) else None


@dg.definitions
def resources() -> dg.Definitions:
    h2o = H2OSettings()
    return dg.Definitions(
        resources={
            "tessera": TesseraResource(catalog_dsn=_from_env("TESSERA_CATALOG_DSN")),
            "h2o_cluster": H2OResource(
                url=_from_env("TESSERA_H2O__URL"),
                max_mem=h2o.max_mem,
                nthreads=h2o.nthreads,
                java_home=h2o.java_home,
            ),
        },
        # Runs execute their steps in one process: on 2 cores a process per step costs more than it gains.
        executor=dg.in_process_executor,
    )
