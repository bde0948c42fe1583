"""Adding a shard server is one step (k8s/postgres/new-server.sh) that renders a Patroni cluster like the others:
its StatefulSet, Service, PDB and NetworkPolicy, named and selected by its own label; the resharding Job renders
for it. A copy of k8s/ grows to three shard servers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shardctl.control.migration.disk import parse_size
from tests.k8s import rules
from tests.k8s.render import copy_tree, find, pod_spec, render
from tests.k8s.test_rules import SUPPORTED, validation_errors


@pytest.mark.req("PLAT.k8s-resharding")
def test_new_server_renders_a_third_shard_cluster_like_the_others(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    subprocess.run(["bash", str(tree / "postgres" / "new-server.sh"), "shard2"], check=True, capture_output=True)
    docs = render(tree)
    clusters = sorted(
        d["metadata"]["name"] for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] != "etcd"
    )
    assert clusters == ["catalog-pg", "shard0-pg", "shard1-pg", "shard2-pg"]
    shard0, shard2 = find(docs, "StatefulSet", "shard0-pg"), find(docs, "StatefulSet", "shard2-pg")
    assert pod_spec(shard2)["containers"] == pod_spec(shard0)["containers"]  # the same Patroni member, its own scope
    assert shard2["spec"]["template"]["metadata"]["labels"]["tessera.io/cluster"] == "shard2"
    selector = pod_spec(shard2)["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert selector["labelSelector"]["matchLabels"]["tessera.io/cluster"] == "shard2"
    assert (
        find(docs, "PodDisruptionBudget", "shard2-pg")["spec"]["selector"]["matchLabels"]["tessera.io/cluster"]
        == "shard2"
    )
    policy = find(docs, "NetworkPolicy", "shard2-pg")["spec"]
    assert policy["podSelector"]["matchLabels"]["tessera.io/cluster"] == "shard2"
    assert find(docs, "Service", "shard2-pg")["spec"]["selector"]["tessera.io/cluster"] == "shard2"
    for rule in rules.RULES:
        assert rule(docs) == [], rule.__name__
    assert validation_errors(docs, SUPPORTED[-1]) == []


@pytest.mark.req("PLAT.k8s-resharding")
def test_new_server_refuses_an_existing_name_and_a_bad_one(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    script = str(tree / "postgres" / "new-server.sh")
    assert subprocess.run(["bash", script, "shard1"], capture_output=True).returncode != 0
    assert subprocess.run(["bash", script, "Shard_2"], capture_output=True).returncode != 0
    assert render(tree) == render()


@pytest.mark.req("PLAT.k8s-resharding")
@pytest.mark.req("JTBD-03.reshard-disk-check")
def test_the_resharding_job_targets_the_new_cluster_as_the_superuser_from_env(rendered) -> None:
    job = find(render(Path(__file__).parents[2] / "k8s" / "resharding"), "Job", "tessera-migrate")
    spec = pod_spec(job)
    register, migrate = spec["initContainers"][0], spec["containers"][0]
    env = {e["name"]: e for e in migrate["env"]}
    assert register["command"][:3] == ["shardctl", "servers", "add"]
    assert migrate["command"][:3] == ["shardctl", "migrate", "run"]
    assert env["TESSERA_NEW_SERVER"]["value"] == "shard2"
    # It declares the new server's disk, its PVC's size, so the plan refuses a copy that would not fit.
    assert register["command"][-2:] == ["--disk-capacity", "$(TESSERA_NEW_SERVER_DISK)"]
    pvc = find(rendered, "StatefulSet", "shard0-pg")["spec"]["volumeClaimTemplates"][0]
    assert env["TESSERA_NEW_SERVER_DISK"]["value"] == pvc["spec"]["resources"]["requests"]["storage"]
    assert parse_size(env["TESSERA_NEW_SERVER_DISK"]["value"]) == 50 * 2**30
    assert "host=$(TESSERA_NEW_SERVER)-pg-0.$(TESSERA_NEW_SERVER)-pg," in env["TESSERA_NEW_SERVER_DSN"]["value"]
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "tessera-postgres"
    for rule in rules.RULES:
        assert rule([job]) == [], rule.__name__
    for version in SUPPORTED:
        assert validation_errors([job], version) == []
