"""The images we do not build, tested as far as this machine can: etcd's exact rendered args run by this machine's
etcd (three members, each in its own pod network, reaching the others by their StatefulSet names), closed to all
but root and Patroni by our tessera-etcd-auth Job; Patroni's configuration as Spilo would build it from the
rendered env, through `patroni --validate-config` and through Patroni's own etcd3 client logging in; and Redis's
args run by this machine's redis-server with its probe. docs/architecture/physical.md says what each image ships."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shardctl.stack.binaries import find_postgres
from tests.k8s.netns import Endpoint
from tests.k8s.pods import Cluster, Container, Image
from tests.k8s.render import ROOT, find, pod_spec
from tests.k8s.test_containers import run_job

# etcd's image is distroless: its binary on PATH, no user of its own (root unless the pod says otherwise).
ETCD_IMAGE = Image(user_line=None, uid=0, workdir="/", cmd=(), ours=False)
# redis:7.2-alpine: docker-entrypoint.sh execs `redis-server ARGS` when the first arg is a flag; user redis (999).
REDIS_IMAGE = Image(user_line=None, uid=0, workdir="/data", entrypoint=("redis-server",), cmd=(), ours=False)
PATRONI_FLOOR_TTL = 20


def start_etcd(cluster: Cluster, rendered: list[dict]) -> list[Container]:
    """The StatefulSet's members, each in its own pod network, as ready as their probes say."""
    statefulset = find(rendered, "StatefulSet", "etcd")
    members = [f"etcd-{i}" for i in range(statefulset["spec"]["replicas"])]
    for member in members:
        cluster.route_to_pod("etcd", member, pod_spec(statefulset), only_pod_name=True)
    pods = [cluster.start(member, statefulset, image=ETCD_IMAGE) for member in members]
    with concurrent.futures.ThreadPoolExecutor(len(pods)) as pool:
        passed = list(pool.map(lambda pod: pod.probes(60.0), pods))
    # Readiness is /health, true only with a quorum: the three members formed one cluster from these args.
    assert passed == [["startupProbe", "readinessProbe", "livenessProbe"]] * len(pods)
    return pods


@pytest.mark.req("PLAT.k8s-dcs")
def test_etcd_members_start_from_the_rendered_args_and_pass_their_probes(rendered, make_cluster) -> None:
    """No shell: `etcd` itself is the command, $(POD_NAME) expanded by Kubernetes (here: by the same rules)."""
    container = pod_spec(find(rendered, "StatefulSet", "etcd"))["containers"][0]
    assert container["command"] == ["etcd"], "the image has no shell: run etcd directly"
    start_etcd(make_cluster(rendered), rendered)


def spilo_etcd3(statefulset: dict, secrets: dict[str, dict[str, str]]) -> dict:
    """Patroni's ``etcd3`` section as Spilo builds it from the container's ETCD3_* variables (hosts, username,
    password), a password read from its Secret as the kubelet would."""
    env = {e["name"]: e for e in pod_spec(statefulset)["containers"][0]["env"]}
    password = env["ETCD3_PASSWORD"]["valueFrom"]["secretKeyRef"]
    return {
        "hosts": [h.strip("'") for h in env["ETCD3_HOSTS"]["value"].split(",")],
        "username": env["ETCD3_USERNAME"]["value"],
        "password": secrets[password["name"]][password["key"]],
    }


@pytest.mark.req("PLAT.k8s-dcs")
@pytest.mark.req("PLAT.etcd-auth-k8s")
def test_the_auth_job_closes_etcd_to_all_but_root_and_patroni_as_spilo_configures_it(
    rendered, make_cluster, generated
) -> None:
    """The tessera-etcd-auth Job, started from the rendered manifests against the three members: afterwards an
    anonymous write is refused, Patroni's own etcd3 client (configured from the Patroni pod's env and the
    generated Secret) logs in and keeps its cluster's keys, but may not write outside Patroni's namespace; the
    members stay ready (their /health answers with auth on); the Job run again changes nothing."""
    cluster = make_cluster(rendered)
    members = start_etcd(cluster, rendered)
    cluster.route_to_pod("etcd", "etcd-0", pod_spec(find(rendered, "StatefulSet", "etcd")))  # the Service's name
    run_job(cluster, rendered, "tessera-etcd-auth")
    shard = find(rendered, "StatefulSet", "shard0-pg")
    asked = {
        "scope": shard["spec"]["template"]["metadata"]["labels"]["tessera.io/cluster"],
        "name": "shard0-pg-0",
        "etcd3": spilo_etcd3(shard, generated.secrets),
        "root_password": generated.secrets["tessera-etcd"]["root-password"],
    }
    net = cluster.network("shard0-pg-0")
    cluster.wire(net, "shard0-pg-0")
    result = subprocess.run(
        [*net.exec_prefix(), sys.executable, "-m", "tests.k8s.etcd_login"],
        input=json.dumps(asked),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout)
    assert seen["anonymous_put"][0] != 200, seen
    assert "user name is empty" in seen["anonymous_put"][1], seen
    assert seen["patroni_initialize"] is True, seen
    assert seen["patroni_reads_back"] is True, seen
    assert seen["patroni_outside_its_namespace"][0] != 200, seen
    assert "permission denied" in seen["patroni_outside_its_namespace"][1], seen
    assert seen["root_login"] is True, seen
    for member in members:
        assert member.probes(30.0) == ["startupProbe", "readinessProbe", "livenessProbe"], member.name
    again = cluster.start("tessera-etcd-auth-again", find(rendered, "Job", "tessera-etcd-auth"))  # a new pod
    assert again.wait_exit(60.0) == 0, again.tail()
    assert "etcd authentication on" in again.tail()


def spilo_patroni_config(statefulset: dict, pod: str, secrets: dict[str, dict[str, str]]) -> dict:
    """The Patroni configuration Spilo's configure step builds from the container's env (its SCOPE, ETCD3_*,
    PGROOT, credentials and SPILO_CONFIGURATION), with this machine's PostgreSQL binaries."""
    template = statefulset["spec"]["template"]
    env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
    assert env["SCOPE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['tessera.io/cluster']"
    scope = template["metadata"]["labels"]["tessera.io/cluster"]
    spilo = yaml.safe_load(env["SPILO_CONFIGURATION"]["value"])
    return {
        "scope": scope,
        "name": pod,
        "restapi": {"listen": "0.0.0.0:8008", "connect_address": f"{pod}.{statefulset['spec']['serviceName']}:8008"},
        "etcd3": spilo_etcd3(statefulset, secrets),
        "bootstrap": spilo["bootstrap"],
        "postgresql": {
            "listen": "0.0.0.0:5432",
            "connect_address": f"{pod}.{statefulset['spec']['serviceName']}:5432",
            "data_dir": f"{env['PGROOT']['value']}/data",
            "bin_dir": str(find_postgres().bin_dir),
            "authentication": {
                "superuser": {"username": env["PGUSER_SUPERUSER"]["value"], "password": "from-the-secret"},
                "replication": {"username": "standby", "password": "from-the-secret"},
            },
        },
    }


def validate(config: dict, folder: Path, cluster: Cluster, pod: str) -> subprocess.CompletedProcess:
    """`patroni --validate-config` where the member runs: in its pod's network (its ports free, etcd's member
    names resolving; the validator checks both)."""
    cluster.route("etcd", {2379: Endpoint("127.0.0.1", 9)})  # names only: the validator does not connect
    net = cluster.network(pod)
    cluster.wire(net, pod)
    path = folder / "patroni.yml"
    path.write_text(yaml.safe_dump(config))
    patroni = Path(sys.executable).with_name("patroni")
    argv = [*net.exec_prefix(), str(patroni), "--validate-config", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@pytest.mark.req("PLAT.k8s-dcs")
@pytest.mark.parametrize("cluster_name", ["catalog", "shard0", "shard1"])
def test_patroni_configuration_passes_patronis_validator_with_honest_timings(
    rendered, cluster_name: str, tmp_path: Path, make_cluster, generated
) -> None:
    statefulset = find(rendered, "StatefulSet", f"{cluster_name}-pg")
    config = spilo_patroni_config(statefulset, f"{cluster_name}-pg-0", generated.secrets)
    dcs = config["bootstrap"]["dcs"]
    assert dcs["ttl"] >= PATRONI_FLOOR_TTL, "Spilo runs Patroni's own entry point: a lower ttl is raised to 20"
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]
    assert dcs["failsafe_mode"] is True
    assert config["scope"] == cluster_name
    result = validate(config, tmp_path, make_cluster(rendered), f"{cluster_name}-pg-0")
    assert result.returncode == 0, f"patroni --validate-config:\n{result.stdout}\n{result.stderr}"


@pytest.mark.req("PLAT.k8s-dcs")
def test_patronis_validator_rejects_a_broken_configuration(rendered, tmp_path: Path, make_cluster, generated) -> None:
    """The validator is strict enough to fail: an etcd3 host list that is not host:port is refused."""
    config = spilo_patroni_config(find(rendered, "StatefulSet", "catalog-pg"), "catalog-pg-0", generated.secrets)
    config["etcd3"]["hosts"] = ["etcd-0.etcd:notaport"]
    assert validate(config, tmp_path, make_cluster(rendered), "catalog-pg-0").returncode != 0


@pytest.mark.req("PLAT.k8s-containers")
def test_redis_starts_from_the_rendered_args_and_passes_its_probes(rendered, make_cluster) -> None:
    deployment = find(rendered, "Deployment", "redis")
    cluster = make_cluster(rendered)
    pod = cluster.start("redis-0", deployment, image=REDIS_IMAGE)
    assert pod.probes(30.0) == ["startupProbe", "readinessProbe", "livenessProbe"]
    maxmemory = pod.exec(["redis-cli", "config", "get", "maxmemory"], 5)
    assert maxmemory is None
