"""Every container that runs the Tessera image, started from the rendered manifests on this machine (item 1 of
issue 20): its exact command and args, its env and envFrom from the rendered ConfigMaps and the generated
Secrets, as its user, with only its declared volumes writable; then each probe, asked as declared, must pass."""

from __future__ import annotations

import concurrent.futures

import pytest

from shardctl.store.registry import ModelRegistry
from tests.k8s.conftest import route_to_stack
from tests.k8s.pods import Cluster, Container, copy_model
from tests.k8s.render import find

PROBE_CAP = 240.0  # seconds a probe may take to pass here (2 shared cores); the manifests allow as much
JOB_TIMEOUT = 120.0


def run_job(cluster: Cluster, docs: list[dict], name: str) -> Container:
    job = cluster.start(name, find(docs, "Job", name))
    code = job.wait_exit(JOB_TIMEOUT)
    assert code == 0, f"Job {name} exited {code}:\n{job.tail()}"
    return job


def promote_model(cluster: Cluster, stack_settings, trained) -> None:
    """The state a first training run leaves: a model's files on the tessera-models volume, registered with the
    paths the serving pods see, and promoted."""
    mojo, jar = trained.paths[0]
    claim = cluster.claim_dir("tessera-models")
    seen = "/var/lib/tessera/models"
    copy_model(__import__("pathlib").Path(mojo), claim, "churn-1")
    copy_model(__import__("pathlib").Path(jar), claim, "churn-1")
    registry = ModelRegistry(stack_settings.catalog_dsn)
    version = registry.register(
        stack_settings.model_name,
        algorithm="gbm",
        feature_set="k8s_test_v1",
        features=["spend", "visits", "tier", "tenure"],
        metrics={"auc": 0.5},
        artifact_path=f"{seen}/churn-1/{__import__('pathlib').Path(mojo).name}",
        genmodel_jar=f"{seen}/churn-1/h2o-genmodel.jar",
    )
    registry.promote(stack_settings.model_name, version.version)


def start_all(cluster: Cluster, docs: list[dict], names: list[str]) -> dict[str, Container]:
    code_spec = find(docs, "Deployment", "dagster-code")["spec"]["template"]["spec"]
    cluster.route_to_pod("dagster-code", "dagster-code", code_spec)
    return {name: cluster.start(name, find(docs, "Deployment", name)) for name in names}


def probe_all(pods: dict[str, Container], cap: float = PROBE_CAP) -> dict[str, list[str]]:
    with concurrent.futures.ThreadPoolExecutor(len(pods)) as pool:
        futures = {name: pool.submit(pod.probes, cap) for name, pod in pods.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.req("PLAT.k8s-containers")
def test_every_tessera_container_starts_from_the_rendered_manifests_and_passes_its_probes(
    rendered, k8s_stack, make_cluster, trained
) -> None:
    stack, settings = k8s_stack
    cluster = make_cluster(rendered)
    route_to_stack(cluster, stack)
    run_job(cluster, rendered, "tessera-roles")
    promote_model(cluster, settings, trained)
    pods = start_all(cluster, rendered, ["dagster-code", "serving", "dagster-webserver", "dagster-daemon"])
    passed = probe_all(pods)
    assert passed == {
        "dagster-code": ["startupProbe", "readinessProbe", "livenessProbe"],
        "serving": ["startupProbe", "readinessProbe", "livenessProbe"],
        "dagster-webserver": ["startupProbe", "readinessProbe", "livenessProbe"],
        "dagster-daemon": ["startupProbe", "livenessProbe"],
    }
    for name, pod in pods.items():
        assert pod.running(), f"{name} exited after its probes passed:\n{pod.tail()}"
