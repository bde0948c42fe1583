"""Render Tessera's kustomizations the way `kubectl apply -k` would, offline: every k8s test reads what kustomize
produces, never the source files (a patch, prefix or replacement is part of what runs)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"

NO_RENDERER = (
    "no kustomize renderer: these tests need `kubectl` 1.27+ (kustomize v5: components, replacements) on PATH. "
    "Install kubectl from https://kubernetes.io/docs/tasks/tools/ (Debian's kubernetes-client is too old)."
)


def kubectl() -> str:
    """The kubectl that renders; a missing one fails the test (never a silent skip)."""
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(NO_RENDERER)
    return found


def render_text(directory: Path = K8S) -> str:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return result.stdout


def render(directory: Path = K8S) -> list[dict]:
    """The rendered objects of ``directory``'s kustomization."""
    return [doc for doc in yaml.safe_load_all(render_text(directory)) if doc]


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} rendered"
    return matches[0]


def pod_spec(workload: dict) -> dict:
    """The pod template's spec of a Deployment, StatefulSet or Job."""
    return workload["spec"]["template"]["spec"]


def copy_tree(tmp: Path) -> Path:
    """A private copy of k8s/ to plant a violation in (the tests never edit the real one)."""
    target = tmp / "k8s"
    shutil.copytree(K8S, target)
    return target
