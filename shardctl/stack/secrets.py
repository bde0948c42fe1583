"""The local stack's passwords: generated once by `stack up` (``secrets.token_urlsafe``), one 0600 file each in a
0700 folder under the data dir (``<data_dir>/secrets``), and read back by whoever connects.

Postgres roles get a password file and a libpq passfile (``*:*:*:role:password``), so a DSN names only the
passfile's path; Redis gets an ACL file of password digests (``shardctl.redis_acl``); Patroni's REST API and
etcd get a password each. No password goes into ``settings.json``, a command line, a log or an error: readers
take them from here (docs/architecture/physical.md, "Passwords of the local stack").
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from shardctl.errors import LocalStackError
from shardctl.redis_acl import ADMIN_USER, SCORER_USER, SERVING_USER, acl_lines
from shardctl.stack.postgres import REPLICATION_USER, SUPERUSER, pgpass_line, write_owned
from shardctl.store.grants import PIPELINE_ROLE, SCORER_ROLE, SERVING_ROLE, WRITER_ROLE

SECRETS_DIR_NAME = "secrets"
PG_ROLES = (SUPERUSER, REPLICATION_USER, SERVING_ROLE, WRITER_ROLE, PIPELINE_ROLE, SCORER_ROLE)
REDIS_USERS = (ADMIN_USER, SERVING_USER, SCORER_USER)
PATRONI_API_USER = "patroni"
ETCD_USERS = ("root", "patroni")


class SecretsMissingError(LocalStackError, RuntimeError):
    """A stack without its secrets folder: made before the stack had passwords, or the folder was removed."""


@dataclass(frozen=True)
class StackSecrets:
    """The secrets folder of one stack (``<data_dir>/secrets``)."""

    dir: Path

    @classmethod
    def of(cls, data_dir: Path) -> StackSecrets:
        return cls(Path(data_dir).absolute() / SECRETS_DIR_NAME)

    def exists(self) -> bool:
        return (self.dir / _password_file_name("postgres", SUPERUSER)).exists()

    def ensure(self) -> StackSecrets:
        """Create the folder and every password not made yet (existing ones are kept), then the files derived
        from them (passfiles, Redis's ACL file)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        names = [("postgres", r) for r in PG_ROLES] + [("redis", u) for u in REDIS_USERS]
        names += [("patroni", "api")] + [("etcd", u) for u in ETCD_USERS]
        for kind, name in names:
            path = self.dir / _password_file_name(kind, name)
            if not path.exists():
                write_owned(path, secrets.token_urlsafe(24))
        for role in PG_ROLES:
            write_owned(self.pgpass(role), pgpass_line(role, self.pg_password(role)))
        redis = {user: self.redis_password(user) for user in REDIS_USERS}
        write_owned(self.redis_acl_file, "\n".join(acl_lines(redis)) + "\n")
        return self

    def preset_pg_password(self, role: str, password: str) -> None:
        """Give ``role`` this password instead of a generated one, before the stack is laid out (`ensure` keeps
        it): for a stack that must share a password with something else, e.g. the k8s tests' Secrets."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_owned(self.dir / _password_file_name("postgres", role), password)

    def _read(self, kind: str, name: str) -> str:
        path = self.dir / _password_file_name(kind, name)
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            raise SecretsMissingError(f"no {kind} password for {name} in {self.dir}") from None

    # -- Postgres ----------------------------------------------------------------------------------------
    def pg_password(self, role: str) -> str:
        return self._read("postgres", role)

    def pgpass(self, role: str) -> Path:
        """The libpq passfile holding ``role``'s password (any host, port and database)."""
        return self.dir / f"postgres-{role}.pgpass"

    # -- Redis ---------------------------------------------------------------------------------------------
    def redis_password(self, user: str) -> str:
        return self._read("redis", user)

    def redis_password_file(self, user: str) -> Path:
        return self.dir / _password_file_name("redis", user)

    @property
    def redis_acl_file(self) -> Path:
        return self.dir / "redis.acl"

    # -- Patroni and etcd ------------------------------------------------------------------------------------
    def api_auth(self) -> tuple[str, str]:
        """User and password of the Patroni REST API's unsafe endpoints (switchover, restart, reinit, config)."""
        return PATRONI_API_USER, self._read("patroni", "api")

    def etcd_password(self, user: str) -> str:
        return self._read("etcd", user)

    def all_passwords(self) -> list[str]:
        """Every password of the stack (leak scans look for each)."""
        return [p.read_text().strip() for p in sorted(self.dir.glob("*.password"))]


def _password_file_name(kind: str, name: str) -> str:
    return f"{kind}-{name}.password"
