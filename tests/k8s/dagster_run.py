"""A real Dagster run for a run pod to execute: created in the stack's Dagster storage from this process, with the
arguments the K8sRunLauncher gives its Job (`dagster api execute_run` with the run, the job's origin in the
image and the instance as the rendered dagster.yaml describes it, so the pod reaches storage by Service names)."""

from __future__ import annotations

from pathlib import Path

import yaml
from dagster import AssetKey, DagsterInstance
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.instance.ref import InstanceRef
from dagster._grpc.types import ExecuteRunArgs

from tests.k8s.render import find

JOB = "daily_partitions"
ASSET = "raw_events"


def execute_run_args(docs: list[dict], catalog_port: int, folder: Path, partition: str) -> tuple[list[str], str]:
    """(the run pod's args, the run id) for one partition of ``raw_events``."""
    rendered = find(docs, "ConfigMap", "dagster-instance")["data"]["dagster.yaml"]
    in_cluster = folder / "in-cluster"
    in_cluster.mkdir()
    (in_cluster / "dagster.yaml").write_text(rendered)
    here = folder / "here"  # the same storage, reached from this process at the stack's own address
    here.mkdir()
    config = yaml.safe_load(rendered)
    storage = config["storage"]["postgres"]["postgres_db"]
    storage.update(hostname="127.0.0.1", port=catalog_port)
    local = {"storage": config["storage"], "telemetry": {"enabled": False}}
    (here / "dagster.yaml").write_text(yaml.safe_dump(local))
    recon_job = ReconstructableRepository.for_module("orchestration.definitions", "defs").get_reconstructable_job(JOB)
    job_def = recon_job.get_definition()
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(here))) as instance:
        run = instance.create_run_for_job(
            job_def=job_def,
            job_code_origin=recon_job.get_python_origin(),
            asset_selection={AssetKey(ASSET)},
            tags={"dagster/partition": partition},
        )
    origin = recon_job.get_python_origin()
    args = ExecuteRunArgs(origin, run.run_id, InstanceRef.from_dir(str(in_cluster))).get_command_args()
    return list(args), run.run_id


def run_status(catalog_port: int, folder: Path, run_id: str) -> str:
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(folder / "here"))) as instance:
        run = instance.get_run_by_id(run_id)
        return run.status.value if run else "missing"


def run_errors(folder: Path, run_id: str) -> str:
    """The errors the run's event log holds (engine errors before any step, step failures), for a failed test to
    show: a run that fails while loading its code writes them there and nothing to the pod's output."""
    lines: list[str] = []
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(folder / "here"))) as instance:
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            error = getattr(event.event_specific_data, "error", None) if event else None
            if error is not None or (event and event.event_type_value == "RUN_FAILURE"):
                lines.append(f"{event.event_type_value}: {entry.message}")
                lines.extend([error.to_string()] if error is not None else [])
    return "\n".join(lines) or "no error in the run's event log"
