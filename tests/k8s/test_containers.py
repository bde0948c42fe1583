"""Every container that runs the Tessera image, started from the rendered manifests on this machine (item 1 of
issue 20): its exact command and args, its env and envFrom from the rendered ConfigMaps and the generated
Secrets, as its user, with only its declared volumes writable; then each probe, asked as declared, must pass."""

from __future__ import annotations

import concurrent.futures
import copy
from collections.abc import Callable
from pathlib import Path

import pytest

from shardctl.store.registry import ModelRegistry
from tests.k8s.conftest import route_to_stack
from tests.k8s.netns import Endpoint
from tests.k8s.pods import Cluster, Container, PodError, copy_model
from tests.k8s.render import find

PROBE_CAP = 240.0  # seconds a probe may take to pass here (2 shared cores); the manifests allow as much
JOB_TIMEOUT = 120.0
MODELS = "/var/lib/tessera/models"  # the tessera-models volume in the serving pods
PLANTED_CAP = 45.0  # a planted fault must fail within this (the real manifests pass within PROBE_CAP)


def run_job(cluster: Cluster, docs: list[dict], name: str) -> Container:
    job = cluster.start(name, find(docs, "Job", name))
    code = job.wait_exit(JOB_TIMEOUT)
    assert code == 0, f"Job {name} exited {code}:\n{job.tail()}"
    return job


def promote_model(cluster: Cluster, stack_settings, trained) -> None:
    """The state a first training run leaves: a model's files on the tessera-models volume, registered with the
    paths the serving pods see, and promoted (once per stack)."""
    mojo, jar = (Path(p) for p in trained.paths[0])
    claim = cluster.claim_dir("tessera-models")
    copy_model(mojo, claim, "churn-1")
    copy_model(jar, claim, "churn-1")
    registry = ModelRegistry(stack_settings.catalog_dsn)
    if registry.current(stack_settings.model_name) is not None:
        return
    version = registry.register(
        stack_settings.model_name,
        algorithm="gbm",
        feature_set="k8s_test_v1",
        features=["spend", "visits", "tier", "tenure"],
        metrics={"auc": 0.5},
        artifact_path=f"{MODELS}/churn-1/{mojo.name}",
        genmodel_jar=f"{MODELS}/churn-1/{jar.name}",
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
@pytest.mark.req("JTBD-02.scorer-k8s")
def test_every_tessera_container_starts_from_the_rendered_manifests_and_passes_its_probes(
    rendered, k8s_stack, make_cluster, trained
) -> None:
    stack, settings = k8s_stack
    cluster = make_cluster(rendered)
    route_to_stack(cluster, stack)
    run_job(cluster, rendered, "tessera-roles")
    promote_model(cluster, settings, trained)
    pods = start_all(cluster, rendered, ["dagster-code", "serving", "scorer", "dagster-webserver", "dagster-daemon"])
    passed = probe_all(pods)
    assert passed == {
        "dagster-code": ["startupProbe", "readinessProbe", "livenessProbe"],
        "serving": ["startupProbe", "readinessProbe", "livenessProbe"],
        "scorer": ["startupProbe", "readinessProbe", "livenessProbe"],
        "dagster-webserver": ["startupProbe", "readinessProbe", "livenessProbe"],
        "dagster-daemon": ["startupProbe", "livenessProbe"],
    }
    for name, pod in pods.items():
        assert pod.running(), f"{name} exited after its probes passed:\n{pod.tail()}"


def _serving(docs: list[dict]) -> dict:
    return find(docs, "Deployment", "serving")["spec"]["template"]["spec"]["containers"][0]


def misspelt_module(docs: list[dict]) -> None:
    _serving(docs)["command"] = ["python", "-m", "servng"]


def misspelt_env_name(docs: list[dict]) -> None:
    data = find(docs, "ConfigMap", "tessera-config")["data"]
    data["TESSERA_CATALOG_DNS"] = data.pop("TESSERA_CATALOG_DSN")


def wrong_port(docs: list[dict]) -> None:
    _serving(docs)["ports"][0]["containerPort"] = 8080


def wrong_probe_path(docs: list[dict]) -> None:
    _serving(docs)["readinessProbe"]["httpGet"]["path"] = "/ready"


def undeclared_write(docs: list[dict]) -> None:
    """The serving container, asked to write where no volume is (its root filesystem is read-only)."""
    _serving(docs)["command"] = ["python", "-c", "open('/app/probe-cache', 'w')"]


# Plants whose fault lies past startup: their pod starts as a sound one does (within PROBE_CAP on a loaded machine);
# only the probe after startup must fail within PLANTED_CAP.
FAULT_AFTER_STARTUP = {"wrong_probe_path"}

PLANTED: list[Callable[[list[dict]], None]] = [
    misspelt_module,
    misspelt_env_name,
    wrong_port,
    wrong_probe_path,
    undeclared_write,
]


@pytest.mark.req("PLAT.k8s-containers")
def test_a_planted_fault_in_a_manifest_fails_the_container_test(rendered, k8s_stack, make_cluster, trained) -> None:
    """Each plant on its own copy of the rendered output, the serving pods started side by side: every one fails."""
    stack, settings = k8s_stack
    failures: dict[str, str] = {}
    pods = {}
    for plant in PLANTED:
        docs = copy.deepcopy(rendered)
        plant(docs)
        cluster = make_cluster(docs, plant.__name__)
        route_to_stack(cluster, stack)
        promote_model(cluster, settings, trained)
        pods[plant.__name__] = cluster.start("serving", find(docs, "Deployment", "serving"))

    def outcome(name: str) -> str:
        pod = pods[name]
        try:
            pod.probe("startupProbe", PROBE_CAP if name in FAULT_AFTER_STARTUP else PLANTED_CAP)
            pod.probe("readinessProbe", PLANTED_CAP)
            pod.probe("livenessProbe", PLANTED_CAP)
        except PodError as exc:
            return str(exc).splitlines()[0]
        return "passed"

    with concurrent.futures.ThreadPoolExecutor(len(pods)) as pool:
        failures = dict(zip(pods, pool.map(outcome, pods), strict=True))
    assert "passed" not in failures.values(), failures
    assert "exited" in failures["misspelt_module"]
    assert "exited" in failures["undeclared_write"]
    # Without TESSERA_CATALOG_DSN serving has no catalog: it stops at startup (or, had it started, has no model).
    assert "exited" in failures["misspelt_env_name"] or "readinessProbe" in failures["misspelt_env_name"]
    assert "startupProbe" in failures["wrong_port"]
    assert "HTTP 404" in failures["wrong_probe_path"]


@pytest.mark.req("PLAT.k8s-containers")
def test_a_run_pod_as_the_launcher_builds_it_materializes_a_partition(
    rendered, k8s_stack, make_cluster, generated, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Job the K8sRunLauncher would create for a run (tests/k8s/run_pod.py), its container started like the
    others: `dagster api execute_run` loads the code from the image, reaches storage by Service names and
    materializes one partition of raw_events as the pipeline's role."""
    from tests.k8s.dagster_run import execute_run_args, run_errors, run_status
    from tests.k8s.run_pod import run_job as launcher_job

    stack, _ = k8s_stack
    state = stack.load_state()
    assert state is not None
    password = generated.secrets["tessera-pipeline-db"]["TESSERA_PIPELINE__DB_PASSWORD"]
    monkeypatch.setenv("TESSERA_PIPELINE__DB_PASSWORD", password)  # as this process reads the same storage
    from orchestration.defs.daily import daily_calendar
    from orchestration.settings import PipelineSettings

    first_day = daily_calendar(PipelineSettings()).get_first_partition_key()
    args, run_id = execute_run_args(rendered, state.catalog_port, tmp_path, first_day)
    job = launcher_job(rendered, {}, args, run_id=run_id[:8])
    cluster = make_cluster(rendered)
    route_to_stack(cluster, stack)
    pod = cluster.start(job["metadata"]["name"], job)
    code = pod.wait_exit(PROBE_CAP)
    assert code == 0, f"run pod exited {code}:\n{pod.tail()}"
    status = run_status(state.catalog_port, tmp_path, run_id)
    assert status == "SUCCESS", f"{run_errors(tmp_path, run_id)}\npod output:\n{pod.tail()}"


@pytest.mark.req("PLAT.k8s-resharding")
@pytest.mark.req("JTBD-03.reshard-disk-check")
def test_the_resharding_job_registers_a_new_server_and_moves_logical_shards_onto_it(
    rendered, k8s_stack, make_cluster, tmp_path: Path
) -> None:
    """`k8s/postgres/new-server.sh shard2`, then the tessera-migrate Job (both its containers, in order) with
    shard2's Service led to a server the stack adds: it registers shard2 and places logical shards there."""
    import subprocess

    from shardctl.store.shardmap import ShardMapStore
    from tests.k8s.render import K8S, copy_tree, render

    stack, settings = k8s_stack
    tree = copy_tree(tmp_path)
    subprocess.run(["bash", str(tree / "postgres" / "new-server.sh"), "shard2"], check=True, capture_output=True)
    docs = render(tree) + render(K8S / "resharding")
    state = stack.add_servers(1)
    cluster = make_cluster(docs)
    route_to_stack(cluster, stack)
    cluster.route("shard2-pg", {5432: Endpoint("127.0.0.1", state.shard_ports[-1])})
    cluster.loopback = [state.catalog_port, *state.shard_ports]
    job = find(docs, "Job", "tessera-migrate")
    register = cluster.start("tessera-migrate-register", job, container="register")
    assert register.wait_exit(JOB_TIMEOUT) == 0, register.tail()
    migrate = cluster.start("tessera-migrate", job, container="migrate")
    assert migrate.wait_exit(PROBE_CAP) == 0, migrate.tail()
    maps = ShardMapStore(settings.catalog_dsn)
    current = maps.current()
    placed = {current.servers[index] for index in current.placement}
    assert "shard2" in placed, placed
    assert maps.disk_capacities()["shard2"] == 50 * 2**30  # its PVC's 50Gi, declared: the plan checked it
