"""Start a rendered pod's container on this machine the way a kubelet would, and ask its probes.

What is taken from the manifest, exactly: command/args (with Kubernetes' $(VAR) expansion), env and envFrom
(ConfigMaps and Secrets as rendered or generated; fieldRefs), the user, groups and fsGroup, no privilege
escalation, dropped capabilities, every volume mount (emptyDir, configMap and secret volumes and subPaths,
PersistentVolumeClaims, the ServiceAccount token when the pod mounts one), and the probes' handlers (HTTP path and
port, exec command, TCP port), thresholds and timeouts. What stands in for the cluster: a network namespace per pod
(tests/k8s/netns.py), the tree of this machine made read-only in place of the image (tests/k8s/enter.py), the
image's user and environment (``IMAGE``: the Dockerfile's), and Services forwarded to a local stack's servers.
Not emulated: Service link variables (``REDIS_PORT=tcp://...``), resource limits, init containers."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.k8s.netns import Endpoint, PodNetwork, ServiceNetwork, socket_in

ENTER = Path(__file__).with_name("enter.py")
VENV_BIN = Path(sys.executable).parent
PROJECT = Path(__file__).resolve().parents[2]  # this checkout, with its venv: the image's installed files
SA_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
FAKE_API = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
PROBE_SPACING = 2.0  # seconds between attempts at most (a probe's period can be longer: its handler is the point)
# A probe's timeoutSeconds, scaled: these machines' 2 cores are shared by several developers' servers, and an exec
# probe that imports Dagster can take several times its time on a quiet node. The handler itself is exact.
PROBE_TIMEOUT_SCALE = float(os.environ.get("TESSERA_K8S_PROBE_TIMEOUT_SCALE", "4"))


@dataclass(frozen=True)
class Image:
    """What the Tessera image (Dockerfile) gives a container beyond its manifest."""

    user_line: str | None = "tessera:x:10001:10001::/home/tessera:/usr/sbin/nologin"  # useradd --system --uid 10001
    uid: int = 10001  # USER 10001
    workdir: str = "/app"  # WORKDIR /app (its files are in site-packages: cwd holds nothing importable)
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ("python", "-m", "serving")
    ours: bool = True  # the Tessera image: Python with the project installed, and a Java

    def env(self) -> dict[str, str]:
        from shardctl.java import find_java_home

        path = f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        env = {"PATH": path, "HOME": "/home/tessera" if self.user_line else "/", "LANG": "C.UTF-8"}
        return {**env, "JAVA_HOME": str(find_java_home())} if self.ours else env


def hidden_interpreter() -> list[str]:
    """The folder that holds this venv's interpreter if a parent of it is closed to other users (pyenv under
    /root, 0700): the container is shown that folder alone, as the image shows its /usr/local/bin/python."""
    real = Path(sys.executable).resolve()
    for parent in reversed(real.parents):
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            return [str(real.relative_to(parent).parts[0] and parent / real.relative_to(parent).parts[0])]
    return []


GRPC_CHECK = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
target, service, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
with grpc.insecure_channel(target) as channel:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
"""


class PodError(AssertionError):
    """The pod would not start, or a probe did not pass."""


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ is a literal $, the rest stays as written."""

    def sub(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR.sub(sub, text)


@dataclass
class Cluster:
    """The namespace's ConfigMaps, Secrets and Services, and where on this machine each Service leads."""

    docs: list[dict]
    secrets: dict[str, dict[str, str]]
    root: Path
    image: Image = field(default_factory=Image)  # the default image of the containers started
    services: dict[str, dict[int, Endpoint]] = field(default_factory=dict)
    pod_routes: dict[str, dict[int, Endpoint]] = field(default_factory=dict)  # "etcd-0.etcd" -> its pod
    addresses: dict[str, str] = field(default_factory=dict)  # a Service's (or headless pod's) name -> its address
    service_network: ServiceNetwork | None = None
    loopback: list[int] = field(default_factory=list)  # this machine's ports a pod also reaches at 127.0.0.1
    networks: dict[str, PodNetwork] = field(default_factory=dict)
    pods: list[Container] = field(default_factory=list)

    def config_map(self, name: str) -> dict[str, str]:
        for doc in self.docs:
            if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name:
                return doc.get("data", {})
        raise PodError(f"ConfigMap {name} is referenced but not rendered")

    def secret(self, name: str) -> dict[str, str]:
        if name not in self.secrets:
            raise PodError(f"Secret {name} is referenced but never generated")
        return self.secrets[name]

    def claim_dir(self, claim: str) -> Path:
        folder = self.root / "pvc" / claim
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def network(self, pod: str) -> PodNetwork:
        if self.service_network is None:
            self.service_network = ServiceNetwork()
        if pod not in self.networks:
            self.networks[pod] = PodNetwork.create(f"10.244.0.{len(self.networks) + 10}", self.service_network)
        return self.networks[pod]

    def route(self, service: str, targets: dict[int, Endpoint]) -> None:
        """Send ``service``'s ports (as rendered) to ``targets`` (service port -> where it lands)."""
        rendered = [d for d in self.docs if d["kind"] == "Service" and d["metadata"]["name"] == service]
        if not rendered:
            raise PodError(f"no Service {service} rendered")
        ports = {p["port"] for p in rendered[0]["spec"]["ports"]}
        assert set(targets) <= ports, f"{service} has ports {ports}, not {set(targets)}"
        self.services[service] = targets

    def route_to_pod(self, service: str, pod: str, spec: dict, only_pod_name: bool = False) -> None:
        """Send ``service`` to a pod, resolving each targetPort (a name or number) in its containers; with
        ``only_pod_name``, only the pod's own name under a headless Service (``etcd-0.etcd``) leads there."""
        rendered = next(d for d in self.docs if d["kind"] == "Service" and d["metadata"]["name"] == service)
        named = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", []) if "name" in p}
        net = self.network(pod)
        targets = {}
        for port in rendered["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                if target not in named:
                    raise PodError(f"Service {service}: targetPort {target} names no container port of {pod}")
                target = named[target]
            targets[port["port"]] = Endpoint(net.ip, target, net.path)
        if only_pod_name:
            self.services.setdefault(service, {})
            self.pod_routes[f"{pod}.{service}"] = targets
        else:
            self.services[service] = targets

    def hostnames(self, service: str) -> list[list[str]]:
        """The DNS names of ``service``: one group for its ClusterIP, or one per StatefulSet pod if headless."""
        suffixes = ["", ".tessera", ".tessera.svc", ".tessera.svc.cluster.local"]
        groups = [[service + s for s in suffixes]]
        for doc in self.docs:
            if doc["kind"] == "StatefulSet" and doc["spec"].get("serviceName") == service:
                for i in range(doc["spec"].get("replicas", 1)):
                    groups.append([f"{doc['metadata']['name']}-{i}.{service}{s}" for s in suffixes])
        return groups

    def wire(self, net: PodNetwork, pod_name: str) -> None:
        """Write the pod's /etc/hosts and open every Service address it can resolve (stable across pods)."""
        assert self.service_network is not None
        for service, targets in sorted(self.services.items()):
            for names in self.hostnames(service):
                if names[0].startswith(f"{pod_name}."):
                    net.resolve(names, net.ip)  # a StatefulSet pod's own name is its own IP
                    continue
                own = self.pod_routes.get(names[0], targets)  # a StatefulSet pod's name, or the Service's
                address = self.addresses.setdefault(
                    names[0], f"10.96.{len(self.addresses) // 250}.{len(self.addresses) % 250 + 1}"
                )
                net.resolve(names, address)
                for port, target in own.items():
                    self.service_network.listen(address, port, target)
        for port in self.loopback:
            net.forward_loopback(port, Endpoint("127.0.0.1", port))
        net.write_hosts(pod_name)

    def start(
        self, pod_name: str, workload: dict, container: str | None = None, image: Image | None = None
    ) -> Container:
        """Start ``container`` (default: the first) of ``workload``'s pod template, from ``image`` (default: the
        Tessera image)."""
        template = workload["spec"]["template"]
        spec = template["spec"]
        chosen = next(c for c in spec.get("initContainers", []) + spec["containers"] if container in (None, c["name"]))
        net = self.network(pod_name)
        self.wire(net, pod_name)
        claims = [t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])]
        started = Container(
            self, pod_name, template.get("metadata", {}), spec, chosen, net, claims, image or self.image
        )
        self.pods.append(started)
        return started

    def stop(self) -> None:
        for pod in self.pods:
            pod.stop()
        for net in self.networks.values():
            net.delete()
        if self.service_network is not None:
            self.service_network.delete()


class Container:
    """One running container: its process (in its own session), its pod's network, its probes."""

    def __init__(
        self,
        cluster: Cluster,
        pod_name: str,
        metadata: dict,
        spec: dict,
        container: dict,
        net: PodNetwork,
        claims: list[str],
        image: Image,
    ):
        self.cluster, self.name, self.spec, self.container, self.net = cluster, pod_name, spec, container, net
        self.claims = claims  # the StatefulSet's volumeClaimTemplates: one claim per pod, <template>-<pod>
        self.image = image
        self.metadata = metadata
        self.folder = cluster.root / "pods" / pod_name
        self.folder.mkdir(parents=True)
        self.log = self.folder / "log"
        self.uid, self.gid, self.groups = self._identity()
        self.env = self._environment()
        self.argv = self._argv()
        enter = {
            "uid": self.uid,
            "gid": self.gid,
            "groups": self.groups,
            "passwd_line": image.user_line,
            "mounts": self._mounts(),
            "workdir": container.get("workingDir", image.workdir),
            "argv": self.argv,
            "scratch": str(self._scratch()),
            "expose": hidden_interpreter() if image.ours else [],
            "image_paths": [str(PROJECT)] if image.ours else [],
            "env": self.env,
            "no_new_privs": self._security("allowPrivilegeEscalation") is False,
            "drop_all_capabilities": "ALL" in (self._security("capabilities") or {}).get("drop", []),
        }
        spec_file = self.folder / "enter.json"
        spec_file.write_text(json.dumps(enter))
        argv = [*net.exec_prefix(), sys.executable, "-P", str(ENTER), str(spec_file)]
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)

    # --- what the kubelet works out before starting the container -------------------------------------------------

    def _security(self, key: str) -> object:
        own = self.container.get("securityContext", {})
        return own[key] if key in own else self.spec.get("securityContext", {}).get(key)

    def _identity(self) -> tuple[int, int, list[int]]:
        uid = self._security("runAsUser")
        uid = self.image.uid if uid is None else uid
        if self._security("runAsNonRoot") and uid == 0:
            raise PodError(f"{self.name}: runAsNonRoot with user 0 (the kubelet refuses to start it)")
        gid = self._security("runAsGroup")
        gid = uid if gid is None else gid
        pod = self.spec.get("securityContext", {})
        groups = [gid, *([pod["fsGroup"]] if "fsGroup" in pod else []), *pod.get("supplementalGroups", [])]
        return uid, gid, sorted(set(groups))

    def _field(self, path: str) -> str:
        labels = self.metadata.get("labels", {})
        label = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
        values = {
            "metadata.name": self.name,
            "metadata.namespace": "tessera",
            "status.podIP": self.net.ip,
            "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
        }
        if label:
            if label.group(1) not in labels:
                raise PodError(f"{self.name}: fieldRef {path}: no such label")
            return labels[label.group(1)]
        if path not in values:
            raise PodError(f"{self.name}: fieldRef {path} is not emulated")
        return values[path]

    def _environment(self) -> dict[str, str]:
        declared: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            if "configMapRef" in source:
                declared.update(self.cluster.config_map(source["configMapRef"]["name"]))
            if "secretRef" in source:
                declared.update(self.cluster.secret(source["secretRef"]["name"]))
        for var in self.container.get("env", []):
            if "value" in var:
                declared[var["name"]] = expand(var["value"], declared)
                continue
            ref = var["valueFrom"]
            if "secretKeyRef" in ref:
                data, key = self.cluster.secret(ref["secretKeyRef"]["name"]), ref["secretKeyRef"]["key"]
            elif "configMapKeyRef" in ref:
                data, key = self.cluster.config_map(ref["configMapKeyRef"]["name"]), ref["configMapKeyRef"]["key"]
            else:
                declared[var["name"]] = self._field(ref["fieldRef"]["fieldPath"])
                continue
            if key not in data:
                raise PodError(f"{self.name}: env {var['name']}: key {key} is not in its source")
            declared[var["name"]] = data[key]
        env = {**self.image.env(), "HOSTNAME": self.name, **FAKE_API, **declared}
        return env

    def _argv(self) -> list[str]:
        # Kubernetes: command replaces the image's ENTRYPOINT (and drops its CMD); args replace CMD.
        command, args = self.container.get("command"), self.container.get("args")
        if command is None:
            command = list(self.image.entrypoint)
            args = list(self.image.cmd) if args is None else args
        return [expand(part, self.env) for part in [*command, *(args or [])]]

    def _token_mounted(self) -> bool:
        if "automountServiceAccountToken" in self.spec:
            return bool(self.spec["automountServiceAccountToken"])
        account = self.spec.get("serviceAccountName", "default")
        for doc in self.cluster.docs:
            if doc["kind"] == "ServiceAccount" and doc["metadata"]["name"] == account:
                return doc.get("automountServiceAccountToken", True)
        return True

    def _volume_source(self, volume: dict) -> tuple[Path, bool]:
        """The folder on this machine that holds ``volume``, and whether Kubernetes mounts it read-only."""
        folder = self.folder / "volumes" / volume["name"]
        if "emptyDir" in volume:
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)
            return folder, False
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]
            folder = self.cluster.claim_dir(claim["claimName"])
            folder.chmod(0o2775)
            os.chown(folder, 0, self.groups[-1] if "fsGroup" in self.spec.get("securityContext", {}) else 0)
            return folder, bool(claim.get("readOnly"))
        if "configMap" in volume or "secret" in volume:
            if "configMap" in volume:
                data, items = self.cluster.config_map(volume["configMap"]["name"]), volume["configMap"].get("items")
            else:
                data, items = self.cluster.secret(volume["secret"]["secretName"]), volume["secret"].get("items")
            folder.mkdir(parents=True, exist_ok=True)
            for key, path in ((i["key"], i["path"]) for i in items) if items else ((k, k) for k in data):
                (folder / path).write_text(data[key])
            for path in folder.rglob("*"):
                path.chmod(0o755 if path.is_dir() else 0o644)
            folder.chmod(0o755)
            return folder, True
        raise PodError(f"{self.name}: volume {volume['name']}: kind not emulated")

    def _mounts(self) -> list[dict]:
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        for claim in self.claims:
            volumes[claim] = {"name": claim, "persistentVolumeClaim": {"claimName": f"{claim}-{self.name}"}}
        mounts = []
        for mount in self.container.get("volumeMounts", []):
            if mount["name"] not in volumes:
                raise PodError(f"{self.name}: volumeMount {mount['name']} names no volume of the pod")
            folder, read_only = self._volume_source(volumes[mount["name"]])
            source = folder / mount["subPath"] if "subPath" in mount else folder
            if not source.exists():
                raise PodError(f"{self.name}: subPath {mount.get('subPath')} is not in volume {mount['name']}")
            mounts.append(
                {
                    "target": mount["mountPath"],
                    "source": str(source),
                    "file": source.is_file(),
                    "read_only": read_only or bool(mount.get("readOnly")),
                }
            )
        if self._token_mounted():
            token = self.folder / "serviceaccount"
            token.mkdir()
            for name, text in (("token", "not-a-real-token"), ("namespace", "tessera"), ("ca.crt", "")):
                (token / name).write_text(text)
            mounts.append({"target": SA_PATH, "source": str(token), "file": False, "read_only": True})
        return mounts

    def _scratch(self) -> Path:
        folder = self.folder / "root"
        folder.mkdir()
        return folder

    # --- running ----------------------------------------------------------------------------------------------------

    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise PodError(f"{self.name}: still running after {timeout} s:\n{self.tail()}") from None

    def stop(self, grace: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def _port(self, port: int | str) -> int:
        if isinstance(port, int):
            return port
        for declared in self.container.get("ports", []):
            if declared.get("name") == port:
                return declared["containerPort"]
        raise PodError(f"{self.name}: probe port {port} names no port of container {self.container['name']}")

    def ask(self, probe: dict) -> str | None:
        """One attempt of ``probe``'s handler: None on success, else why it failed."""
        timeout = probe.get("timeoutSeconds", 1) * PROBE_TIMEOUT_SCALE
        if "httpGet" in probe:
            get = probe["httpGet"]
            connection = http.client.HTTPConnection(self.net.ip, self._port(get["port"]), timeout=timeout)
            connection.sock = socket_in(self.net.path)
            connection.sock.settimeout(timeout)
            try:
                connection.sock.connect((self.net.ip, self._port(get["port"])))
                connection.request("GET", get.get("path", "/"), headers={"User-Agent": "kube-probe/1.32"})
                status = connection.getresponse().status
            except OSError as exc:
                return f"GET {get.get('path')}: {exc}"
            finally:
                connection.close()
            return None if 200 <= status < 400 else f"GET {get.get('path')}: HTTP {status}"
        if "tcpSocket" in probe:
            try:
                Endpoint(self.net.ip, self._port(probe["tcpSocket"]["port"]), self.net.path).connect(timeout).close()
            except OSError as exc:
                return f"tcp: {exc}"
            return None
        if "exec" in probe:
            return self.exec(probe["exec"]["command"], timeout)
        if "grpc" in probe:
            return self.grpc_health(probe["grpc"]["port"], probe["grpc"].get("service", ""), timeout)
        raise PodError(f"{self.name}: probe kind not emulated: {sorted(probe)}")

    def grpc_health(self, port: int, service: str, timeout: float) -> str | None:
        """The kubelet's gRPC probe: grpc.health.v1 Check on the pod IP, from the node (here: in the pod network)."""
        argv = ["nsenter", "-t", str(self.proc.pid), "-n", "--", sys.executable, "-P", "-c", GRPC_CHECK]
        argv += [f"{self.net.ip}:{port}", service, str(timeout)]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5, check=False)
        except subprocess.TimeoutExpired:
            return f"grpc {port}: no answer in {timeout} s"
        return None if result.returncode == 0 else f"grpc {port}: {(result.stdout + result.stderr)[-300:]}"

    def exec(self, command: list[str], timeout: float) -> str | None:
        """Run ``command`` in the container (its namespaces, user, environment), as an exec probe does."""
        setpriv = ["/usr/bin/setpriv", f"--reuid={self.uid}", f"--regid={self.gid}"]
        setpriv += [f"--groups={','.join(map(str, self.groups))}", "--no-new-privs"] if self.groups else []
        argv = ["nsenter", "-t", str(self.proc.pid), "-n", "-m", "-r", "-w", "--", *setpriv, "--", *command]
        try:
            result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return f"{command}: no answer in {timeout} s"
        return None if result.returncode == 0 else f"{command}: exit {result.returncode}: {result.stderr[-500:]}"

    def probe(self, kind: str, cap: float) -> None:
        """Ask the container's ``kind`` probe (startupProbe, readinessProbe, livenessProbe) until it passes, within its
        declared budget (initialDelaySeconds + failureThreshold x periodSeconds) and at most ``cap`` seconds."""
        probe = self.container.get(kind)
        if probe is None:
            raise PodError(f"{self.name}: container {self.container['name']} declares no {kind}")
        budget = probe.get("initialDelaySeconds", 0) + probe.get("failureThreshold", 3) * probe.get("periodSeconds", 10)
        deadline = time.monotonic() + min(budget, cap)
        spacing = min(PROBE_SPACING, probe.get("periodSeconds", 10))
        while True:
            if not self.running():
                raise PodError(f"{self.name}: exited ({self.proc.returncode}) before its {kind} passed:\n{self.tail()}")
            failure = self.ask(probe)
            if failure is None:
                return
            if time.monotonic() > deadline:
                raise PodError(f"{self.name}: {kind} failed: {failure}\n{self.tail()}")
            time.sleep(spacing)

    def probes(self, cap: float) -> list[str]:
        """Every declared probe, startup first; the kinds that passed."""
        kinds = [k for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in self.container]
        for kind in kinds:
            self.probe(kind, cap)
        return kinds


def copy_model(source: Path, claim: Path, folder: str) -> Path:
    """Put a file into a claim's folder, readable by any pod that mounts it."""
    target = claim / folder
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o755)
    shutil.copy(source, target / source.name)
    (target / source.name).chmod(0o644)
    return target / source.name
