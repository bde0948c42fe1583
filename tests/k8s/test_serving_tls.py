"""The opt-in component `k8s/components/serving-tls`: rendered into a private copy of k8s/, the serving Deployment
mounts the TLS Secret read-only, names its files in the settings serving reads, probes over HTTPS, and still
passes strict validation and Tessera's rules; the default render stays HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.k8s import rules
from tests.k8s.render import copy_tree, find, pod_spec, render
from tests.k8s.test_rules import SUPPORTED, validation_errors

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def _serving(docs: list[dict]) -> tuple[dict, dict]:
    spec = pod_spec(find(docs, "Deployment", "serving"))
    return spec, next(c for c in spec["containers"] if c["name"] == "serving")


@pytest.mark.req("PLAT.tls-serving")
def test_the_serving_tls_component_mounts_the_secret_and_probes_over_https(rendered, tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    kustomization = tree / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text() + "components:\n  - components/serving-tls\n")
    docs = render(tree)
    spec, container = _serving(docs)
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    volume = next(v for v in spec["volumes"] if v["name"] == "tls")
    assert mount["readOnly"] is True
    assert volume["secret"]["secretName"] == "tessera-serving-tls"
    assert env["TESSERA_SERVING__TLS_CERTIFICATE"] == f"{mount['mountPath']}/tls.crt"
    assert env["TESSERA_SERVING__TLS_KEY"] == f"{mount['mountPath']}/tls.key"
    assert [container[p]["httpGet"].get("scheme") for p in PROBES] == ["HTTPS"] * 3
    for version in SUPPORTED:
        assert validation_errors(docs, version) == []
    assert [v for rule in rules.RULES for v in rule(docs)] == []

    _, plain = _serving(rendered)  # the default: HTTP, no TLS variable
    assert not [e for e in plain["env"] if e["name"].startswith("TESSERA_SERVING__TLS_")]
    assert [plain[p]["httpGet"].get("scheme", "HTTP") for p in PROBES] == ["HTTP"] * 3
