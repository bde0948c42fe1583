"""A well-kept policy linter on what kustomize renders: checkov's Kubernetes policies (pinned in pyproject), with
every skip written down. Skips that hold for every object are ``SKIPPED`` below; skips for one object are
``checkov.io/skipN`` annotations on it, each with its reason (docs/architecture/physical.md lists them all)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.k8s.render import K8S, find, pod_spec, render

SKIPPED = {
    "CKV_K8S_11": "no CPU limits: CFS throttling adds latency to scoring; CPU requests drive the HPA and scheduling",
    "CKV_K8S_15": "imagePullPolicy IfNotPresent: images are pinned (kustomize images); Always costs a pull per start",
    "CKV_K8S_35": "settings are environment variables (pydantic-settings, Spilo): a Secret is read into the env",
    "CKV_K8S_43": "images by tag in the repository; a release pins digests with `kustomize edit set image`",
}


def checkov() -> str:
    found = Path(sys.executable).with_name("checkov")
    if not found.exists():
        pytest.fail("checkov is not installed: run scripts/bootstrap.sh (it is in the dev extras and the lock)")
    return str(found)


def failed_checks(docs: list[dict], folder: Path) -> list[str]:
    path = folder / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    argv = [checkov(), "-f", str(path), "--framework", "kubernetes", "-o", "json", "--quiet", "--compact"]
    result = subprocess.run([*argv, "--skip-check", ",".join(SKIPPED)], capture_output=True, text=True, check=False)
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    if "results" not in report:  # checkov's report when nothing failed and nothing was skipped
        return []
    return [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in report["results"]["failed_checks"]]


@pytest.mark.req("PLAT.k8s-checks")
def test_checkov_passes_the_rendered_manifests_with_documented_skips_only(rendered, tmp_path: Path) -> None:
    resharding = render(K8S / "resharding")
    assert failed_checks(rendered + resharding, tmp_path) == []
    annotated = [
        (d["metadata"]["name"], k, v)
        for d in rendered + resharding
        for k, v in d["metadata"].get("annotations", {}).items()
        if k.startswith("checkov.io/skip")
    ]
    for name, key, value in annotated:
        check, _, reason = value.partition("=")
        assert check.startswith("CKV_K8S_"), f"{name} {key}: {value}"
        assert len(reason) > 20, f"{name} {key}: a skip needs its reason"


@pytest.mark.req("PLAT.k8s-checks")
def test_checkov_fails_on_a_planted_privileged_container(rendered, tmp_path: Path) -> None:
    serving = copy.deepcopy(find(rendered, "Deployment", "serving"))
    container = pod_spec(serving)["containers"][0]
    container["securityContext"] = {"privileged": True, "allowPrivilegeEscalation": True}
    failed = failed_checks([serving], tmp_path)
    assert any(f.startswith("CKV_K8S_16 ") for f in failed), failed  # privileged
    assert any(f.startswith("CKV_K8S_20 ") for f in failed), failed  # privilege escalation
