"""The Kubernetes manifests are valid against the Kubernetes schemas (offline) and fit together:
the HPA scales the serving Deployment on CPU, every TESSERA_* variable is a real setting, kustomizations
name files that exist, and the in-cluster dagster.yaml passes Dagster's own schema check."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from orchestration.settings import H2OSettings, PipelineSettings
from serving.scorer.settings import ScorerSettings
from serving.settings import ServingSettings
from shardctl.control.settings import ControlSettings
from shardctl.settings import TesseraSettings
from shardctl.store.writer_settings import WriterSettings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
K8S_VERSION = "1.30"


def _documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _find(kind: str, name: str) -> dict:
    matches = [d for _, d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


@pytest.mark.req("PLAT.k8s")
def test_every_manifest_validates_strictly_against_the_kubernetes_schema() -> None:
    docs = _documents()
    assert len(docs) >= 20
    for path, doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            pytest.fail(f"{path.relative_to(ROOT)} {doc.get('kind')}/{doc['metadata'].get('name')}: {exc}")


@pytest.mark.req("PLAT.k8s")
def test_the_validation_rejects_our_serving_deployment_with_a_misspelt_field() -> None:
    """The check above is strict enough to catch a typo in our manifests (an unknown field is an error)."""
    deployment = copy.deepcopy(_find("Deployment", "serving"))
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.req("PLAT.k8s")
def test_kustomizations_name_files_that_exist() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text())["resources"]:
            target = kustomization.parent / resource
            assert target.exists(), f"{kustomization.relative_to(ROOT)} names missing {resource}"


@pytest.mark.req("JTBD-02.hpa")
def test_hpa_scales_the_serving_deployment_on_cpu() -> None:
    hpa = _find("HorizontalPodAutoscaler", "serving")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = _find(target["kind"], target["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    # Utilization targets are relative to requests: without a CPU request the HPA cannot scale.
    assert container["resources"]["requests"]["cpu"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.req("JTBD-02.drain")
def test_serving_pods_drain_within_their_grace_period(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """preStop takes the pod out of the endpoints before SIGTERM; the grace period covers preStop, the drain
    bound the container is given, and Granian's margin to close a worker (`python -m serving`)."""
    from serving.__main__ import CLOSE_SECONDS

    pod = _find("Deployment", "serving")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 5  # endpoint removal reaches kube-proxy and load balancers
    monkeypatch.setenv("TESSERA_SETTINGS_FILE", str(tmp_path / "absent.json"))
    for variable in container.get("env", []):
        if variable["name"].startswith("TESSERA_SERVING__") and "value" in variable:
            monkeypatch.setenv(variable["name"], variable["value"])
    drain = ServingSettings().drain_seconds
    assert "TESSERA_SERVING__DRAIN_SECONDS" in {v["name"] for v in container["env"]}
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + CLOSE_SECONDS


@pytest.mark.req("PLAT.k8s")
def test_config_map_variables_are_real_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = _find("ConfigMap", "tessera-config")["data"]
    monkeypatch.setenv("TESSERA_SETTINGS_FILE", str(tmp_path / "absent.json"))
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = TesseraSettings()
    sections = {
        cls.section: cls
        for cls in (ServingSettings, ScorerSettings, PipelineSettings, H2OSettings, WriterSettings, ControlSettings)
    }
    for key in data:
        name, _, field = key.removeprefix("TESSERA_").lower().partition("__")
        if name in sections:
            assert field in sections[name].model_fields, key
        else:
            assert name in TesseraSettings.model_fields, key
    assert settings.total_shards == 2
    assert all("target_session_attrs=read-write" in dsn for dsn in settings.shard_dsns())
    assert ServingSettings().port == 8000
    assert ServingSettings().host == "0.0.0.0"


@pytest.mark.req("PLAT.k8s")
def test_patroni_overlays_match_the_shard_map() -> None:
    """Every shard in the config has a Patroni overlay whose pods are the hosts of its DSN."""
    data = _find("ConfigMap", "tessera-config")["data"]
    settings_shards = yaml.safe_load(data["TESSERA_SHARDS"])
    for shard in settings_shards:
        name = f"shard{shard['index']}"
        overlay = yaml.safe_load((K8S / "postgres" / name / "kustomization.yaml").read_text())
        assert overlay["namePrefix"] == f"{name}-"
        assert f"host={name}-pg-0.{name}-pg,{name}-pg-1.{name}-pg " in shard["dsn"]


@pytest.mark.req("PLAT.k8s")
def test_in_cluster_dagster_instance_passes_dagsters_schema(tmp_path: Path, monkeypatch) -> None:
    from dagster._core.instance.config import dagster_instance_config

    data = _find("ConfigMap", "dagster-instance")["data"]
    (tmp_path / "dagster.yaml").write_text(data["dagster.yaml"])
    monkeypatch.setenv("TESSERA_PIPELINE__DB_PASSWORD", "from-the-secret")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    # Storage as the pipeline's role, its password from the environment; run pods get it by Secret reference.
    storage = config["storage"]["postgres"]["postgres_db"]
    assert storage["username"] == "tessera_pipeline"
    assert storage["password"] == {"env": "TESSERA_PIPELINE__DB_PASSWORD"}
    assert config["run_launcher"]["config"]["env_secrets"] == ["tessera-pipeline-db"]
    assert "env_vars" not in config["run_launcher"]["config"]
    assert yaml.safe_load(data["workspace.yaml"])["load_from"][0]["grpc_server"]["port"] == 4000


# A URL carrying a password (scheme://user:secret@host), and a libpq conninfo with a password in it.
_URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/:@\"'`]+:[^\s/@\"'`]+@", re.IGNORECASE)
_CONNINFO_PASSWORD = re.compile(r"\bpassword\s*=\s*[^\s\"'`]", re.IGNORECASE)


def _committed_text_files() -> list[Path]:
    roots = [K8S, ROOT / "docs", ROOT / "README.md", ROOT / "orchestration" / "dagster.yaml"]
    files = [p for root in roots for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()]
    return [p for p in files if p.suffix in {".yaml", ".yml", ".md", ".sh", ".json", ".txt", ""}]


def password_leaks(text: str) -> list[str]:
    return _URL_WITH_PASSWORD.findall(text) + _CONNINFO_PASSWORD.findall(text)


@pytest.mark.req("PLAT.least-privilege")
def test_the_leak_scan_finds_a_password_in_a_url_or_a_conninfo() -> None:
    assert password_leaks("url: postgresql+psycopg2://tessera:change-me@/dagster?host=a")
    assert password_leaks("TESSERA_CATALOG_DSN: host=a dbname=tessera user=x password=hunter2")
    assert not password_leaks("redis://redis:6379/0 host=a port=5432,5432 dbname=tessera")
    assert not password_leaks("postgresql://u@host/db and ``TESSERA_SERVING__DB_PASSWORD``")


@pytest.mark.req("PLAT.least-privilege")
def test_no_committed_manifest_or_doc_holds_a_password() -> None:
    """No URL or DSN with a password in k8s/ or the docs, and no committed Secret with data: the passwords are
    generated in the cluster (k8s/generate-secrets.sh) and only referenced here."""
    files = _committed_text_files()
    assert any(p.name == "tessera-config.yaml" for p in files)
    for path in files:
        leaks = password_leaks(path.read_text(errors="replace"))
        assert not leaks, f"{path.relative_to(ROOT)} holds a password: {leaks}"
    for path, doc in _documents():
        assert doc["kind"] != "Secret", f"{path.relative_to(ROOT)}: a committed Secret (generate it instead)"


@pytest.mark.req("PLAT.least-privilege")
@pytest.mark.req("JTBD-02.scorer-k8s")
def test_each_part_connects_as_its_own_role_with_a_password_from_its_own_secret() -> None:
    config = _find("ConfigMap", "tessera-config")["data"]
    for key in ("TESSERA_CATALOG_DSN", "TESSERA_DAGSTER_DSN", "TESSERA_SHARDS"):
        assert "user=" not in config[key], f"{key}: DSNs say where, each part says who"
    assert config["TESSERA_SERVING__DB_USER"] == "tessera_serving"
    assert config["TESSERA_PIPELINE__DB_USER"] == "tessera_pipeline"
    assert config["TESSERA_SCORER__DB_USER"] == "tessera_scorer"

    def password_sources(container: dict) -> dict[str, str]:
        sources = {}
        for env in container.get("env", []):
            if "PASSWORD" in env["name"]:
                assert "value" not in env, f"{env['name']}: a password as a literal value"
                sources[env["name"]] = env["valueFrom"]["secretKeyRef"]["name"]
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                sources["*"] = source["secretRef"]["name"]
        return sources

    serving = _find("Deployment", "serving")["spec"]["template"]["spec"]["containers"][0]
    assert password_sources(serving) == {
        "TESSERA_SERVING__DB_PASSWORD": "tessera-serving-db",
        "TESSERA_SERVING__REDIS_PASSWORD": "tessera-redis",
    }
    scorer = _find("Deployment", "scorer")["spec"]["template"]["spec"]["containers"][0]
    assert password_sources(scorer) == {
        "TESSERA_SCORER__DB_PASSWORD": "tessera-scorer-db",
        "TESSERA_SCORER__REDIS_PASSWORD": "tessera-redis",
    }
    for name in ("dagster-code", "dagster-daemon", "dagster-webserver"):
        container = _find("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        assert password_sources(container) == {"*": "tessera-pipeline-db"}, name
    setup = _find("Job", "tessera-roles")["spec"]["template"]["spec"]["containers"][0]
    assert setup["command"] == ["shardctl", "roles", "ensure"]
    assert password_sources(setup) == {
        "TESSERA_CONTROL__DB_PASSWORD": "tessera-postgres",
        "TESSERA_CONTROL__SERVING_PASSWORD": "tessera-serving-db",
        "TESSERA_CONTROL__WRITER_PASSWORD": "tessera-writer-db",
        "TESSERA_CONTROL__PIPELINE_PASSWORD": "tessera-pipeline-db",
        "TESSERA_CONTROL__SCORER_PASSWORD": "tessera-scorer-db",
    }
    generator = (K8S / "generate-secrets.sh").read_text()
    parts = ("serving", "writer", "pipeline", "scorer")
    for secret in ("tessera-postgres", *(f"tessera-{part}-db" for part in parts)):
        assert f"create {secret} " in generator, f"{secret} is referenced but never generated"


@pytest.mark.req("PLAT.redis-acl")
def test_kubernetes_redis_has_the_stacks_acl_users_from_a_generated_secret(tmp_path: Path) -> None:
    """k8s/generate-secrets.sh writes Redis's ACL file with the rules of shardctl/redis_acl.py (the default user
    off, serving in its prefix, the scorer on the cache's entries), password digests only; Redis loads it and
    serving and the scorer log in as their users."""
    from shardctl.redis_acl import ADMIN_USER, SCORER_USER, SERVING_USER, acl_lines
    from tests.k8s.secrets import generate_secrets

    generated = generate_secrets(tmp_path).secrets["tessera-redis"]
    passwords = {
        ADMIN_USER: generated["admin-password"],
        SERVING_USER: generated["TESSERA_SERVING__REDIS_PASSWORD"],
        SCORER_USER: generated["TESSERA_SCORER__REDIS_PASSWORD"],
    }
    assert generated["users.acl"].splitlines() == acl_lines(passwords)
    assert not [p for p in passwords.values() if p in generated["users.acl"]]
    container = _find("Deployment", "redis")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-2:] == ["--aclfile", "/etc/redis/users.acl"]
    serving = _find("Deployment", "serving")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "TESSERA_SERVING__REDIS_USERNAME", "value": SERVING_USER} in serving["env"]
    scorer = _find("Deployment", "scorer")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "TESSERA_SCORER__REDIS_USERNAME", "value": SCORER_USER} in scorer["env"]


@pytest.mark.req("JTBD-02.scorer-k8s")
def test_one_scorer_runs_with_its_probes_and_a_budget_that_never_blocks_a_drain() -> None:
    """The scorer: one replica, replaced without overlap (two would score each change twice), probed on the port
    its settings listen on, covered by a PodDisruptionBudget that allows its one pod to be evicted; the re-scoring
    job's run pods get the scorer's password from its Secret, no other run does."""
    deployment = _find("Deployment", "scorer")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "serving.scorer", "run"]
    config = _find("ConfigMap", "tessera-config")["data"]
    port = int(config["TESSERA_SCORER__PORT"])
    assert container["ports"] == [{"name": "probes", "containerPort": port}]
    probes = ("startupProbe", "readinessProbe", "livenessProbe")
    paths = {probe: container[probe]["httpGet"]["path"] for probe in probes}
    assert paths == {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    budget = _find("PodDisruptionBudget", "scorer")["spec"]
    assert budget["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert budget == {"maxUnavailable": 1, "selector": budget["selector"]}
    from orchestration.defs.predictions import rescore_job

    tag = rescore_job.tags["dagster-k8s/config"]  # Dagster keeps a dict tag as its JSON
    env = (json.loads(tag) if isinstance(tag, str) else tag)["container_config"]["env"]
    assert [e["valueFrom"]["secretKeyRef"]["name"] for e in env] == ["tessera-scorer-db"]
    instance = yaml.safe_load(_find("ConfigMap", "dagster-instance")["data"]["dagster.yaml"])
    assert "tessera-scorer-db" not in instance["run_launcher"]["config"]["env_secrets"]
