"""The images we do not build, tested as far as this machine can: etcd's exact rendered args run by this machine's
etcd (three members, each in its own pod network, reaching the others by their StatefulSet names), Patroni's
configuration as Spilo would build it from the rendered env through `patroni --validate-config`, and Redis's
args run by this machine's redis-server with its probe. docs/architecture/physical.md says what each image ships."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shardctl.stack.binaries import find_postgres
from tests.k8s.netns import Endpoint
from tests.k8s.pods import Cluster, Image
from tests.k8s.render import find, pod_spec

# etcd's image is distroless: its binary on PATH, no user of its own (root unless the pod says otherwise).
ETCD_IMAGE = Image(user_line=None, uid=0, workdir="/", cmd=(), ours=False)
# redis:7.2-alpine: docker-entrypoint.sh execs `redis-server ARGS` when the first arg is a flag; user redis (999).
REDIS_IMAGE = Image(user_line=None, uid=0, workdir="/data", entrypoint=("redis-server",), cmd=(), ours=False)
PATRONI_FLOOR_TTL = 20


@pytest.mark.req("PLAT.k8s-dcs")
def test_etcd_members_start_from_the_rendered_args_and_pass_their_probes(rendered, make_cluster) -> None:
    """No shell: `etcd` itself is the command, $(POD_NAME) expanded by Kubernetes (here: by the same rules)."""
    statefulset = find(rendered, "StatefulSet", "etcd")
    container = pod_spec(statefulset)["containers"][0]
    assert container["command"] == ["etcd"], "the image has no shell: run etcd directly"
    cluster = make_cluster(rendered)
    members = [f"etcd-{i}" for i in range(statefulset["spec"]["replicas"])]
    for member in members:
        cluster.route_to_pod("etcd", member, pod_spec(statefulset), only_pod_name=True)
    pods = [cluster.start(member, statefulset, image=ETCD_IMAGE) for member in members]
    with concurrent.futures.ThreadPoolExecutor(len(pods)) as pool:
        passed = list(pool.map(lambda pod: pod.probes(60.0), pods))
    # Readiness is /health, true only with a quorum: the three members formed one cluster from these args.
    assert passed == [["startupProbe", "readinessProbe", "livenessProbe"]] * len(pods)


def spilo_patroni_config(statefulset: dict, pod: str, folder: Path) -> dict:
    """The Patroni configuration Spilo's configure step builds from the container's env (its SCOPE, ETCD3_HOSTS,
    PGROOT, credentials and SPILO_CONFIGURATION), with this machine's PostgreSQL binaries."""
    template = statefulset["spec"]["template"]
    env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
    assert env["SCOPE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['tessera.io/cluster']"
    scope = template["metadata"]["labels"]["tessera.io/cluster"]
    hosts = [h.strip("'") for h in env["ETCD3_HOSTS"]["value"].split(",")]
    spilo = yaml.safe_load(env["SPILO_CONFIGURATION"]["value"])
    return {
        "scope": scope,
        "name": pod,
        "restapi": {"listen": "0.0.0.0:8008", "connect_address": f"{pod}.{statefulset['spec']['serviceName']}:8008"},
        "etcd3": {"hosts": hosts},
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
    rendered, cluster_name: str, tmp_path: Path, make_cluster
) -> None:
    statefulset = find(rendered, "StatefulSet", f"{cluster_name}-pg")
    config = spilo_patroni_config(statefulset, f"{cluster_name}-pg-0", tmp_path)
    dcs = config["bootstrap"]["dcs"]
    assert dcs["ttl"] >= PATRONI_FLOOR_TTL, "Spilo runs Patroni's own entry point: a lower ttl is raised to 20"
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]
    assert dcs["failsafe_mode"] is True
    assert config["scope"] == cluster_name
    result = validate(config, tmp_path, make_cluster(rendered), f"{cluster_name}-pg-0")
    assert result.returncode == 0, f"patroni --validate-config:\n{result.stdout}\n{result.stderr}"


@pytest.mark.req("PLAT.k8s-dcs")
def test_patronis_validator_rejects_a_broken_configuration(rendered, tmp_path: Path, make_cluster) -> None:
    """The validator is strict enough to fail: an etcd3 host list that is not host:port is refused."""
    config = spilo_patroni_config(find(rendered, "StatefulSet", "catalog-pg"), "catalog-pg-0", tmp_path)
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
