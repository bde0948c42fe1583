"""How to run Patroni as the unprivileged server user: Postgres refuses root, and Patroni starts Postgres.

Patroni is a Python program from our virtualenv. When we are root and the virtualenv's interpreter lives
where the server user cannot go (e.g. under /root), we run the system's interpreter of the same Python
version with the virtualenv's site-packages on its path instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

import shardctl
from shardctl.stack.binaries import MissingBinaryError
from shardctl.stack.users import as_user

PROJECT_ROOT = Path(shardctl.__file__).resolve().parent.parent


def _python_path() -> str:
    """Our code first (so a worktree's shardctl wins), then the virtualenv's packages."""
    entries = [str(PROJECT_ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return os.pathsep.join(dict.fromkeys(entries))


def _runs_patroni(user: str | None, python: list[str]) -> bool:
    check = [*python, "-c", "import patroni, patroni.dcs.etcd3, psycopg, yaml"]
    env = {**os.environ, "PYTHONPATH": _python_path()}
    result = subprocess.run(as_user(user, check), env=env, capture_output=True, check=False, timeout=60)
    return result.returncode == 0


@lru_cache(maxsize=4)
def patroni_python(user: str | None) -> list[str]:
    """An interpreter command that ``user`` can execute and that imports Patroni with our PYTHONPATH.

    A system interpreter runs with ``-S`` so the system's own packages (e.g. an old pyOpenSSL) cannot
    shadow the virtualenv's.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if _runs_patroni(user, [sys.executable]):
        return [sys.executable]
    for python in dict.fromkeys([shutil.which(version), f"/usr/bin/{version}", f"/usr/local/bin/{version}"]):
        if python and Path(python).exists() and _runs_patroni(user, [python, "-S"]):
            return [python, "-S"]
    raise MissingBinaryError(
        f"no {version} interpreter that user {user or 'current'} can run imports Patroni: install the "
        "system's python3 or put the virtualenv where that user can read it"
    )


def patroni_environment(user_home: Path) -> dict[str, str]:
    """Environment for a Patroni process: our PYTHONPATH, a HOME it can write, no inherited PG* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PATRONI_"))}
    env.update(PYTHONPATH=_python_path(), HOME=str(user_home), LC_ALL="C.UTF-8", LANG="C.UTF-8")
    return env
