"""Start and stop `dg dev` (webserver + daemon + code server) as one process tree we own by PID.

Used by the end-to-end test and the screenshot script. `dg dev` runs in its own session; stopping it
sends SIGINT to its PID and each descendant's (as Ctrl-C would), then kills any descendant still alive by its own
PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from orchestration.instance import REPO_ROOT, WORKSPACE_YAML, prepare_home
from shardctl.process import free_port, pid_alive, stop_pid
from shardctl.settings import TesseraSettings


class DagsterDevError(RuntimeError):
    """The webserver did not come up; the message carries the tail of its log."""


@dataclass
class DagsterDev:
    pid: int
    url: str
    log_file: Path

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 30.0) -> dict:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise DagsterDevError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def descendants(self) -> list[int]:
        try:
            return [p.pid for p in psutil.Process(self.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 30.0) -> list[int]:
        """Stop the tree; returns the PIDs still alive afterwards (empty when all stopped)."""
        children = self.descendants()
        # SIGINT to the parent and to each descendant, by PID, is what Ctrl-C does (the terminal signals the whole
        # foreground group): each of the webserver, daemon and code servers shuts down at once. SIGINT to the parent
        # alone left it waiting on its children for the whole timeout (40-44 s per test teardown); a SIGTERM would
        # end only the parent, and the children ignore SIGTERM: they would be orphaned.
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
        stop_pid(self.pid, signal.SIGINT, timeout=timeout)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(pid_alive(pid) for pid in children):
            time.sleep(0.2)
        for pid in children:
            if pid_alive(pid):
                stop_pid(pid, signal.SIGKILL, timeout=5)
        return [pid for pid in [self.pid, *children] if pid_alive(pid)]


def dev_command(host: str, port: int) -> list[str]:
    """`dg dev` (the current CLI); `dagster dev -w workspace.yaml` where dagster-dg-cli is not installed."""
    bin_dir = Path(sys.executable).parent
    if (bin_dir / "dg").exists():
        return [str(bin_dir / "dg"), "dev", "--use-active-venv", "--no-check-yaml", "--host", host, "--port", str(port)]
    return [str(bin_dir / "dagster"), "dev", "-w", str(WORKSPACE_YAML), "--host", host, "--port", str(port)]


def start_dagster_dev(settings: TesseraSettings, extra_env: dict[str, str] | None = None, timeout: float = 90.0):
    """`dg dev` on a free port against the stack's Postgres instance; returns once the UI answers."""
    env = {**os.environ, **prepare_home(settings), **(extra_env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    port = free_port()
    log_file = Path(env["DAGSTER_HOME"]) / f"dagster-dev-{port}.log"
    # `dg dev` (the current CLI) loads the project's code location from pyproject.toml's [tool.dg] with
    # this interpreter, and runs the same webserver + daemon as `dagster dev`.
    argv = dev_command("127.0.0.1", port)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    dev = DagsterDev(proc.pid, f"http://127.0.0.1:{port}", log_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            data = dev.graphql("{ repositoriesOrError { __typename ... on RepositoryConnection { nodes { name } } } }")
            if data["repositoriesOrError"].get("nodes"):
                return dev
        except (requests.RequestException, DagsterDevError, ValueError):
            pass
        time.sleep(0.5)
    dev.stop()
    tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
    raise DagsterDevError(f"dg dev did not answer on {dev.url} within {timeout:.0f} s:\n{tail}")
