"""A pod network on one machine: each pod gets its own network namespace (its ports are its own, as in a cluster)
with a pod IP on its loopback, an /etc/hosts that resolves the Service names it may use, and a TCP forwarder
from each Service address to the server behind it (a local stack's server, or another pod).

Sockets keep the namespace they were made in, so the forwarder makes each socket in a short-lived thread that
first joins the namespace (setns is per thread) and then uses it from anywhere."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def socket_in(netns: Path | None) -> socket.socket:
    """A TCP socket in the network namespace ``netns`` (None: this process's own)."""
    if netns is None:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the caller's thread
            made.append(exc)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


@dataclass(frozen=True)
class Endpoint:
    """Where a connection goes: ``host:port`` inside ``netns`` (None: this machine's own network)."""

    host: str
    port: int
    netns: Path | None = None

    def connect(self, timeout: float = 5.0) -> socket.socket:
        sock = socket_in(self.netns)
        sock.settimeout(timeout)
        sock.connect((self.host, self.port))
        sock.settimeout(None)
        return sock


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


class Forwarder:
    """Accepts on ``listen`` and joins each connection to ``target`` (no target answering: the client is closed)."""

    def __init__(self, listen: Endpoint, target: Endpoint):
        self.target = target
        self.server = socket_in(listen.netns)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((listen.host, listen.port))
        self.server.listen(64)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = self.target.connect()
            except OSError:
                client.close()
                continue
            threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _new_netns() -> str:
    name = f"tessera-k8s-{uuid.uuid4().hex[:10]}"
    _ip("netns", "add", name)
    _ip("-n", name, "link", "set", "lo", "up")
    return name


SERVICE_RANGE = "10.96.0.0/16"


@dataclass
class ServiceNetwork:
    """Where Service addresses live (as kube-proxy's virtual IPs do, outside every pod): one namespace holding a
    forwarder per Service address and port, reached from each pod over a veth pair."""

    name: str = field(default_factory=_new_netns)
    forwarders: dict[tuple[str, int], Forwarder] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.name

    def listen(self, address: str, port: int, target: Endpoint) -> None:
        if (address, port) in self.forwarders:
            return
        if not any(a == address for a, _ in self.forwarders):
            _ip("-n", self.name, "addr", "add", f"{address}/32", "dev", "lo")
        self.forwarders[(address, port)] = Forwarder(Endpoint(address, port, self.path), target)

    def delete(self) -> None:
        for forwarder in self.forwarders.values():
            forwarder.close()
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@dataclass
class PodNetwork:
    """One pod's network namespace (``ip netns``) with its pod IP on a veth to the Service network, and the
    /etc/hosts ``ip netns exec`` mounts in it."""

    name: str
    ip: str
    hosts: dict[str, str] = field(default_factory=dict)  # hostname -> address
    forwarders: list[Forwarder] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.name

    @classmethod
    def create(cls, ip: str, services: ServiceNetwork) -> PodNetwork:
        net = cls(_new_netns(), ip)
        link = uuid.uuid4().hex[:8]
        pod_end, service_end = f"vp{link}", f"vs{link}"
        _ip("link", "add", pod_end, "type", "veth", "peer", "name", service_end)
        _ip("link", "set", pod_end, "netns", net.name)
        _ip("link", "set", service_end, "netns", services.name)
        _ip("-n", net.name, "link", "set", pod_end, "up")
        _ip("-n", services.name, "link", "set", service_end, "up")
        _ip("-n", net.name, "addr", "add", f"{ip}/32", "dev", pod_end)
        _ip("-n", net.name, "route", "add", SERVICE_RANGE, "dev", pod_end)
        _ip("-n", services.name, "route", "add", f"{ip}/32", "dev", service_end)
        return net

    def resolve(self, names: list[str], address: str) -> None:
        for hostname in names:
            self.hosts[hostname] = address

    def forward_loopback(self, port: int, target: Endpoint) -> None:
        """``127.0.0.1:port`` inside the pod leads to ``target``."""
        self.forwarders.append(Forwarder(Endpoint("127.0.0.1", port, self.path), target))

    def write_hosts(self, pod_hostname: str) -> None:
        lines = ["127.0.0.1 localhost", f"{self.ip} {pod_hostname}"]
        lines += [f"{address} {hostname}" for hostname, address in sorted(self.hosts.items())]
        folder = Path("/etc/netns") / self.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hosts").write_text("\n".join(lines) + "\n")

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def delete(self) -> None:
        for forwarder in self.forwarders:
            forwarder.close()
        subprocess.run(["ip", "netns", "del", self.name], check=False)
        shutil.rmtree(Path("/etc/netns") / self.name, ignore_errors=True)
