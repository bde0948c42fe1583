"""The rendered manifests pass strict schema validation for the oldest and newest Kubernetes we support, and each
of Tessera's own rules (tests/k8s/rules.py); every check is shown failing on a planted violation."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import kubernetes_validate
import pytest

from tests.k8s import rules
from tests.k8s.render import find, pod_spec
from tests.k8s.secrets import generate_secrets

# preStop `sleep` (serving's drain) is on by default from 1.30; the newest is the newest schema the validator has.
SUPPORTED = ("1.30", "1.35")


def validation_errors(docs: list[dict], version: str) -> list[str]:
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            errors.append(f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {str(exc)[:300]}")
    return errors


@pytest.mark.req("PLAT.k8s-checks")
@pytest.mark.parametrize("version", SUPPORTED)
def test_rendered_manifests_validate_strictly(rendered, version: str) -> None:
    assert len(rendered) >= 40
    assert validation_errors(rendered, version) == []


@pytest.mark.req("PLAT.k8s-checks")
@pytest.mark.parametrize("version", SUPPORTED)
def test_strict_validation_fails_on_a_typo_and_on_an_unknown_kind(rendered, version: str) -> None:
    typo = copy.deepcopy(find(rendered, "StatefulSet", "etcd"))
    container = pod_spec(typo)["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    unknown = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudgett", "metadata": {"name": "x"}, "spec": {}}
    assert len(validation_errors([typo, unknown], version)) == 2


def _etcd(docs: list[dict]) -> dict:
    return pod_spec(find(docs, "StatefulSet", "etcd"))["containers"][0]


def _serving(docs: list[dict]) -> dict:
    return pod_spec(find(docs, "Deployment", "serving"))["containers"][0]


def plant_shell(docs: list[dict]) -> None:
    _etcd(docs)["command"] = ["/bin/sh", "-ec"]


def plant_missing_probe(docs: list[dict]) -> None:
    del pod_spec(find(docs, "Deployment", "dagster-code"))["containers"][0]["livenessProbe"]


def plant_root(docs: list[dict]) -> None:
    del _serving(docs)["securityContext"]["readOnlyRootFilesystem"]


def plant_no_pdb(docs: list[dict]) -> None:
    docs.remove(find(docs, "PodDisruptionBudget", "shard1-pg"))


def plant_secret_in_argv(docs: list[dict]) -> None:
    _serving(docs)["args"] = ["--password", "$(TESSERA_SERVING__DB_PASSWORD)"]


def plant_superuser_secret(docs: list[dict]) -> None:
    container = pod_spec(find(docs, "Deployment", "dagster-code"))["containers"][0]
    container["envFrom"].append({"secretRef": {"name": "tessera-postgres"}})


def plant_token(docs: list[dict]) -> None:
    pod_spec(find(docs, "Deployment", "dagster-code"))["automountServiceAccountToken"] = True


PLANTED: list[tuple[Callable, Callable]] = [
    (rules.no_shell_on_distroless, plant_shell),
    (rules.probes_everywhere, plant_missing_probe),
    (rules.restricted_security_context, plant_root),
    (rules.pdb_per_stateful_set, plant_no_pdb),
    (rules.no_secret_in_argv, plant_secret_in_argv),
    (rules.superuser_secret_only_where_needed, plant_superuser_secret),
    (rules.tokens_only_for_the_launcher, plant_token),
]


@pytest.mark.req("PLAT.k8s-checks")
@pytest.mark.parametrize(("rule", "plant"), PLANTED, ids=[rule.__name__ for rule, _ in PLANTED])
def test_each_rule_holds_and_fails_on_a_planted_violation(rendered, rule: Callable, plant: Callable) -> None:
    assert rule(rendered) == []
    planted = copy.deepcopy(rendered)
    plant(planted)
    assert rule(planted), f"{rule.__name__} missed {plant.__name__}"


@pytest.mark.req("PLAT.k8s-checks")
def test_every_rule_is_shown_failing() -> None:
    assert {rule for rule, _ in PLANTED} == set(rules.RULES)


@pytest.mark.req("PLAT.least-privilege")
def test_generate_secrets_never_puts_a_password_on_a_command_line(tmp_path: Path) -> None:
    generated = generate_secrets(tmp_path / "real")
    # Every password (Redis's ACL file holds digests, not passwords).
    values = [v for secret in generated.secrets.values() for key, v in secret.items() if key != "users.acl"]
    # superuser, replication, etcd root and patroni, serving, writer, pipeline, scorer; Redis: admin, serving, scorer
    assert len(values) == 11
    assert all(len(v) >= 30 for v in values)
    assert not [argv for argv in generated.command_lines for v in values if any(v in part for part in argv)]


@pytest.mark.req("PLAT.least-privilege")
def test_the_argv_check_sees_a_password_passed_as_an_argument(tmp_path: Path) -> None:
    """The check above fails on the old way (`--from-literal=key=value`)."""
    script = (Path(__file__).parents[2] / "k8s" / "generate-secrets.sh").read_text()
    apply = '} | kubectl -n "$NAMESPACE" apply -f -'
    literal = '\n    kubectl create secret generic "$name" --from-literal=k="$(random_password)"'
    old_way = script.replace(apply, apply + literal)
    # The planted line prints a second password, not one of the Secret's: look for any 40-character value instead.
    planted = tmp_path / "generate-secrets.sh"
    planted.write_text(old_way)
    generated = generate_secrets(tmp_path / "planted", planted)
    assert any(
        part.startswith("--from-literal=k=") and len(part) > 30 for argv in generated.command_lines for part in argv
    )
