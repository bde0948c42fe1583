"""The code location: one ``Definitions`` merged from a module per concern in ``orchestration/defs/``.

Load it with ``dagster dev -w workspace.yaml`` (or ``dagster definitions validate -w workspace.yaml``).
"""

from __future__ import annotations

import dagster as dg

from orchestration.defs import (
    features,
    migration,
    point_in_time,
    profiling,
    raw_data,
    schedules,
    shard_key,
    training,
)
from orchestration.resources import H2OResource, RedisResource, TesseraResource

RESOURCES = {"tessera": TesseraResource(), "h2o_cluster": H2OResource(), "cache": RedisResource()}

defs = dg.Definitions.merge(
    raw_data.defs,
    profiling.defs,
    shard_key.defs,
    features.defs,
    point_in_time.defs,
    training.defs,
    schedules.defs,
    migration.defs,
    # Runs execute their steps in one process: on 2 cores a process per step costs more than it gains.
    dg.Definitions(resources=RESOURCES, executor=dg.in_process_executor),
)
