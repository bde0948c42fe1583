"""One launcher for the prediction service (and the benchmark's baseline servers): a subprocess in a session of
its own with its output in a log file, ready once a path answers 200, stopped by PID (SIGTERM, then SIGKILL).

The tests and the benchmarks start ``python -m serving`` (Granian) the way an operator does, so what they
measure is the real server; one launcher keeps them starting it the same way. The service needs an API key on
every route but the probes: ``create_api_key`` makes one in the catalog, and a ``PredictionService`` given it
sends it on every request of its ``client`` (``auth_headers`` for other clients).
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

from shardctl.java import find_java_home
from shardctl.process import stop_pid, wait_until
from shardctl.store.api_keys import SCOPES, KeyStore, parse_rate

REPO = Path(__file__).resolve().parents[1]


def service_env(settings_file: Path | str, port: int | None = None, **extra: str) -> dict[str, str]:
    """A service's environment: ours without any ``TESSERA_*`` setting (only the stack's settings file and
    ``extra`` count), the repository importable, a Java for the MOJO scorer, and the port when given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update(PYTHONPATH=str(REPO), TESSERA_SETTINGS_FILE=str(settings_file), JAVA_HOME=str(find_java_home()))
    if port is not None:
        env["TESSERA_SERVING__PORT"] = str(port)
    env.update(extra)
    return env


def create_api_key(
    catalog_dsn: str, name: str = "tests", scopes: Sequence[str] = SCOPES, rate: str | None = "1000000/s"
) -> str:
    """A new API key (every scope and a limit no test reaches, unless told otherwise), named ``name`` plus a
    unique suffix; returns the key itself."""
    store = KeyStore(catalog_dsn)
    store.ensure_schema()
    _, token = store.create(f"{name}-{uuid.uuid4().hex[:8]}", tuple(scopes), parse_rate(rate) if rate else None)
    return token


def bearer(api_key: str | None) -> dict[str, str]:
    """The header that carries ``api_key`` (none without one)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class ServerProcess:
    """An HTTP server started from ``argv`` in the repository, its stdout and stderr in ``log``; its ``client``
    sends ``api_key`` with every request when given one. With ``ca_file`` it speaks HTTPS and ``client`` trusts
    only that CA (it verifies the certificate names 127.0.0.1)."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        port: int,
        log: Path,
        api_key: str | None = None,
        ca_file: Path | None = None,
    ):
        self.port = port
        self.url = f"{'https' if ca_file else 'http'}://127.0.0.1:{port}"
        self.log = log
        self.auth_headers = bearer(api_key)
        with log.open("wb") as sink:
            self.proc = subprocess.Popen(
                list(argv), cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        verify = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        self.client = httpx.Client(base_url=self.url, timeout=10, verify=verify, headers=self.auth_headers)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples, over those carrying every given label value."""
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        total = 0.0
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                head, value = line.rsplit(" ", 1)
                if (head == name or head.startswith(name + "{")) and all(w in head for w in wanted):
                    total += float(value)
        return total

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_ready(self, path: str = "/readyz", timeout: float = 60.0, method: str = "GET") -> None:
        """Wait until ``path`` answers 200; raises with the log's tail if the server exits or never answers."""

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.proc.args} exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return self.client.request(method, path, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        if not wait_until(answers, timeout, 0.2):
            raise RuntimeError(f"{self.proc.args} not ready on {path} after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; safe to call twice."""
        self.client.close()
        if self.proc.poll() is None:
            if not stop_pid(self.proc.pid, timeout=timeout):
                raise RuntimeError(f"server {self.proc.pid} did not stop")
            self.proc.wait(timeout=5)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


class PredictionService(ServerProcess):
    """``python -m serving``: Tessera's prediction service on Granian, configured by ``env``
    (see `service_env`); ``args`` go to its command line; ``api_key`` rides on its client's requests. When
    ``env`` asks for HTTPS (``TESSERA_SERVING__TLS_CERTIFICATE``), ``ca_file`` is the CA its client verifies the
    service with."""

    def __init__(
        self,
        env: dict[str, str],
        port: int,
        log: Path,
        args: Sequence[str] = (),
        api_key: str | None = None,
        ca_file: Path | None = None,
    ):
        if bool(env.get("TESSERA_SERVING__TLS_CERTIFICATE")) != (ca_file is not None):
            raise ValueError("an HTTPS service needs the CA its client verifies it with, and only an HTTPS one")
        super().__init__([sys.executable, "-m", "serving", *args], env, port, log, api_key, ca_file)

    def __enter__(self) -> PredictionService:
        return self


class ScorerProcess(ServerProcess):
    """``python -m serving.scorer run`` (or ``module``: a test's variant of it), configured by ``env`` (see
    `service_env`), its probes on ``port``; ready once it follows every server's change log."""

    def __init__(self, env: dict[str, str], port: int, log: Path, module: str = "serving.scorer"):
        super().__init__([sys.executable, "-m", module, "run", "--port", str(port)], env, port, log)
