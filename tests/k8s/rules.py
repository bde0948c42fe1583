"""Tessera's own rules for the rendered manifests, each a function from the rendered objects to the violations it
finds (empty: the rule holds). tests/k8s/test_rules.py runs each on the real output and on a planted violation."""

from __future__ import annotations

import re
from collections.abc import Iterator

TESSERA_IMAGE = "ghcr.io/tessera-data/tessera"
# Images without a shell (distroless): etcd's since v3.5.7.
DISTROLESS = (re.compile(r"^quay\.io/coreos/etcd:v3\.(5\.([7-9]|\d\d+)|[6-9]\.)"), re.compile(r"^gcr\.io/distroless/"))
SHELLS = {"sh", "bash", "ash", "dash", "/bin/sh", "/bin/bash", "/bin/ash", "/usr/bin/env"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet"}
SUPERUSER_SECRET = "tessera-postgres"
# Who may hold the Patroni superuser's password: Patroni itself and the control plane's Jobs.
SUPERUSER_HOLDERS = {"Job/tessera-roles", "Job/tessera-migrate"}


def pods(docs: list[dict]) -> Iterator[tuple[str, dict, dict]]:
    """(kind/name, workload, pod spec) of every workload."""
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            template = (
                doc["spec"]["jobTemplate"]["spec"]["template"] if doc["kind"] == "CronJob" else doc["spec"]["template"]
            )
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc, template["spec"]


def containers(docs: list[dict]) -> Iterator[tuple[str, dict, dict, dict]]:
    for where, workload, spec in pods(docs):
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield f"{where}/{container['name']}", workload, spec, container


def no_shell_on_distroless(docs: list[dict]) -> list[str]:
    """A container of a distroless image starts its binary directly: a shell command cannot run there."""
    found = []
    for where, _, _, container in containers(docs):
        if not any(p.match(container["image"]) for p in DISTROLESS):
            continue
        commands = [container.get("command") or container.get("args") or []]
        commands += [container[p]["exec"]["command"] for p in PROBES if "exec" in container.get(p, {})]
        found += [f"{where}: runs {cmd[0]} on a distroless image" for cmd in commands if cmd and cmd[0] in SHELLS]
    return found


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def probes_everywhere(docs: list[dict]) -> list[str]:
    """Every long-running container has a startup, a readiness and a liveness probe (the daemon, which serves
    nothing, is exempt from readiness)."""
    found = []
    for where, workload, _, container in containers(docs):
        if workload["kind"] not in LONG_RUNNING or where.endswith("/daemon"):
            wanted = ("startupProbe", "livenessProbe") if where.endswith("/daemon") else ()
        else:
            wanted = PROBES
        found += [f"{where}: no {p}" for p in wanted if p not in container]
    return found


def restricted_security_context(docs: list[dict]) -> list[str]:
    """The restricted Pod Security Standard for every container, and a read-only root for the Tessera image."""
    found = []
    for where, _, spec, container in containers(docs):
        pod, own = spec.get("securityContext", {}), container.get("securityContext", {})

        def value(key: str, pod: dict = pod, own: dict = own) -> object:
            return own.get(key, pod.get(key))

        if value("runAsNonRoot") is not True:
            found.append(f"{where}: runAsNonRoot is not true")
        if own.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation is not false")
        if own.get("capabilities", {}).get("drop") != ["ALL"]:
            found.append(f"{where}: capabilities not dropped (drop: [ALL])")
        if (value("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{where}: no seccompProfile RuntimeDefault")
        if container["image"].startswith(TESSERA_IMAGE) and own.get("readOnlyRootFilesystem") is not True:
            found.append(f"{where}: the Tessera image's root filesystem is writable")
    return found


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def pdb_per_stateful_set(docs: list[dict]) -> list[str]:
    """Every StatefulSet's pods are covered by exactly one PodDisruptionBudget."""
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    found = []
    for doc in docs:
        if doc["kind"] != "StatefulSet":
            continue
        labels = doc["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if _matches(b["spec"]["selector"], labels)]
        if len(covering) != 1:
            found.append(f"StatefulSet/{doc['metadata']['name']}: {len(covering)} PodDisruptionBudgets")
    return found


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def no_secret_in_argv(docs: list[dict]) -> list[str]:
    """No command or args carries a Secret's value (via $(VAR) of a secret-backed variable) or a literal password:
    a process's argv is visible to every user of the node (`ps`)."""
    found = []
    for where, _, _, container in containers(docs):
        secret_vars = {e["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
        from_secret = any("secretRef" in s for s in container.get("envFrom", []))
        for part in container.get("command", []) + container.get("args", []):
            for name in _VAR.findall(part):
                if name in secret_vars or (from_secret and "PASSWORD" in name):
                    found.append(f"{where}: $({name}) (a Secret's value) on the command line")
            if re.search(r"password\s*[=:]\s*\S", part, re.IGNORECASE):
                found.append(f"{where}: a password on the command line")
    return found


def superuser_secret_only_where_needed(docs: list[dict]) -> list[str]:
    """Only Patroni and the control plane's Jobs see the superuser's Secret; run pods and the code server never."""
    found = []
    for where, workload, spec, container in containers(docs):
        owner = f"{workload['kind']}/{workload['metadata']['name']}"
        if owner in SUPERUSER_HOLDERS or container["image"].startswith("ghcr.io/zalando/spilo"):
            continue
        refs = [
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        ]
        refs += [s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s]
        refs += [v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v]
        if SUPERUSER_SECRET in refs:
            found.append(f"{where}: holds the superuser's Secret")
    return found


def tokens_only_for_the_launcher(docs: list[dict]) -> list[str]:
    """A pod mounts an API token only if its ServiceAccount has a RoleBinding (it needs the API)."""
    bound = {s["name"] for d in docs if d["kind"] == "RoleBinding" for s in d.get("subjects", [])}
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    found = []
    for where, _, spec in pods(docs):
        account = spec.get("serviceAccountName", "default")
        mounted = spec.get(
            "automountServiceAccountToken", accounts.get(account, {}).get("automountServiceAccountToken", True)
        )
        if mounted and account not in bound:
            found.append(f"{where}: mounts a token of {account}, which has no role")
    return found


RULES = [
    no_shell_on_distroless,
    probes_everywhere,
    restricted_security_context,
    pdb_per_stateful_set,
    no_secret_in_argv,
    superuser_secret_only_where_needed,
    tokens_only_for_the_launcher,
]
