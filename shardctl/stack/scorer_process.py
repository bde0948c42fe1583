"""The local stack's scorer (``python -m serving.scorer``, serving's precomputing scorer): started by `stack up`
after the servers, by PID, in a session of its own, its output in ``<data dir>/scorer.log``; stopped by `stack
down` before the servers. The stack only launches the process by its module name: shardctl never imports
serving (docs/architecture/development.md), and the scorer finds the stack through the settings file like every
other part, connecting as its own role (the ``scorer`` section ``write_settings`` writes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shardctl.errors import LocalStackError
from shardctl.process import free_port, log_tail, pid_alive, port_in_use, stop_pid, wait_until

SCORER_MODULE = "serving.scorer"
START_TIMEOUT_S = 120.0  # imports, the JVM and the promoted MOJO (when there is one) before its probes listen
REPO = Path(__file__).resolve().parents[2]


def start(settings_file: Path, log_file: Path) -> tuple[int, int]:
    """Start the scorer for the stack whose settings are in ``settings_file`` and wait until its probes listen;
    returns (PID, probe port). ``LocalStackError`` with its log's tail if it exits or never listens."""
    port = free_port()
    env = dict(os.environ)
    env["TESSERA_SETTINGS_FILE"] = str(settings_file)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", SCORER_MODULE, "run", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    if not wait_until(lambda: proc.poll() is not None or port_in_use(port), START_TIMEOUT_S) or proc.poll() is not None:
        if proc.poll() is None:
            stop(proc.pid)
        raise LocalStackError(f"the scorer did not start (log: {log_file}):\n{log_tail(log_file)}")
    return proc.pid, port


def stop(pid: int | None, timeout: float = 20.0) -> bool:
    """SIGTERM (it finishes its round), then SIGKILL after ``timeout``; True once it is gone."""
    if not pid_alive(pid):
        return True
    return stop_pid(pid, timeout=timeout)  # type: ignore[arg-type]
