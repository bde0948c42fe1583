"""Dagster runs on Kubernetes as the K8sRunLauncher builds them from the rendered instance config: resources,
labels and a restricted security context; the training job's own size; no API token and never the superuser's
Secret; the code server's image; the instance config passes Dagster's schema (run monitoring, the queue's limit
on H2O trainings, compute logs on the shared volume)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from orchestration.definitions import defs
from orchestration.defs.schedules import model_job
from tests.k8s import rules
from tests.k8s.render import find, pod_spec
from tests.k8s.run_pod import run_job
from tests.k8s.test_rules import SUPPORTED, validation_errors

ARGS = ["dagster", "api", "execute_run", "{}"]


RUN_POD_RULES = (
    rules.restricted_security_context,
    rules.superuser_secret_only_where_needed,
    rules.tokens_only_for_the_launcher,
)


def assert_run_pod_rules(documents: list[dict]) -> None:
    """Every rule a run pod must keep, over the rendered manifests plus that pod's Job."""
    for rule in RUN_POD_RULES:
        assert rule(documents) == [], rule.__name__


@pytest.mark.req("PLAT.k8s-dagster")
def test_a_training_run_pod_is_sized_labelled_and_restricted(rendered) -> None:
    job = run_job(rendered, dict(model_job.tags), ARGS)
    spec = pod_spec(job)
    container = spec["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "3Gi"}  # the job's dagster-k8s/config tag
    assert (
        container["image"]
        == find(rendered, "Deployment", "dagster-code")["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert spec["serviceAccountName"] == "dagster-run"
    assert spec["automountServiceAccountToken"] is False
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "dagster-run"
    documents = [*rendered, job]
    assert_run_pod_rules(documents)
    for version in SUPPORTED:
        assert validation_errors([job], version) == []


@pytest.mark.req("PLAT.k8s-dagster")
def test_other_runs_get_the_launchers_defaults_and_the_rules_catch_a_run_without_them(rendered) -> None:
    job = run_job(rendered, dict(defs().get_job_def("daily_partitions").tags or {}), ARGS)
    assert pod_spec(job)["containers"][0]["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    instance = find(rendered, "ConfigMap", "dagster-instance")
    loose = copy.deepcopy(rendered)
    config = yaml.safe_load(instance["data"]["dagster.yaml"])
    del config["run_launcher"]["config"]["run_k8s_config"]["container_config"]["securityContext"]
    find(loose, "ConfigMap", "dagster-instance")["data"]["dagster.yaml"] = yaml.safe_dump(config)
    assert rules.restricted_security_context([run_job(loose, {}, ARGS)])


@pytest.mark.req("PLAT.k8s-dagster")
def test_the_instance_monitors_runs_limits_trainings_and_keeps_compute_logs(
    rendered, tmp_path: Path, monkeypatch
) -> None:
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text(find(rendered, "ConfigMap", "dagster-instance")["data"]["dagster.yaml"])
    monkeypatch.setenv("TESSERA_PIPELINE__DB_PASSWORD", "from-the-secret")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_monitoring"]["enabled"] is True
    limits = config["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert {"key": "tessera/h2o", "value": "train", "limit": 1} in limits
    assert model_job.tags["tessera/h2o"] == "train"
    logs = config["compute_logs"]["config"]["base_dir"]
    webserver = pod_spec(find(rendered, "Deployment", "dagster-webserver"))
    mounts = {m["mountPath"]: m["name"] for m in webserver["containers"][0]["volumeMounts"]}
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in webserver["volumes"]}
    run_mounts = {
        m["mountPath"]: m["name"] for m in pod_spec(run_job(rendered, {}, ARGS))["containers"][0]["volumeMounts"]
    }
    run_claims = {
        v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
        for v in pod_spec(run_job(rendered, {}, ARGS))["volumes"]
    }
    assert claims[mounts[logs]] == run_claims[run_mounts[logs]] == "tessera-dagster-logs"
    assert "ReadWriteMany" in find(rendered, "PersistentVolumeClaim", "tessera-dagster-logs")["spec"]["accessModes"]


@pytest.mark.req("PLAT.k8s-dagster")
def test_the_run_image_follows_a_kustomize_image_change(tmp_path: Path) -> None:
    from tests.k8s.render import copy_tree, render

    tree = copy_tree(tmp_path)
    kustomization = tree / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("newTag: 0.1.0", "newTag: 9.9.9"))
    docs = render(tree)
    code = pod_spec(find(docs, "Deployment", "dagster-code"))["containers"][0]
    current = next(e["value"] for e in code["env"] if e["name"] == "DAGSTER_CURRENT_IMAGE")
    assert code["image"] == current == "ghcr.io/tessera-data/tessera:9.9.9"
    assert pod_spec(run_job(docs, {}, ARGS))["containers"][0]["image"] == current


@pytest.mark.req("PLAT.k8s-dagster")
def test_a_run_pod_can_write_where_the_pipeline_writes(rendered) -> None:
    """Its root filesystem is read-only: the model files (orchestration/defs/churn_model.py) and the local H2O
    JVM's folder (orchestration/resources.py), both under TESSERA_DATA_DIR, are volumes."""
    data_dir = find(rendered, "ConfigMap", "tessera-config")["data"]["TESSERA_DATA_DIR"]
    container = pod_spec(run_job(rendered, dict(model_job.tags), ARGS))["containers"][0]
    mounts = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert {f"{data_dir}/models", f"{data_dir}/h2o", "/tmp"} <= mounts


@pytest.mark.req("JTBD-02.scorer-k8s")
def test_a_rescoring_run_pod_connects_as_the_scorer_with_its_secret_and_is_restricted(rendered) -> None:
    """The re-scoring job's run pod (launched by the sensor on each promotion and rollback) gets the scorer's
    password from the scorer's Secret, beside the launcher's defaults and rules every run pod keeps."""
    from orchestration.defs.predictions import rescore_job

    job = run_job(rendered, dict(rescore_job.tags), ARGS)
    container = pod_spec(job)["containers"][0]
    sources = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", []) if "valueFrom" in e}
    assert sources.get("TESSERA_SCORER__DB_PASSWORD") == "tessera-scorer-db"
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}  # the launcher's defaults
    documents = [*rendered, job]
    assert_run_pod_rules(documents)
