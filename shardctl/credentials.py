"""Each part's database credentials, kept apart from where the servers are.

The catalog's shard map and the settings' DSNs say *where* a server is (host, port, dbname, libpq options);
each part (serving, the writer, the pipeline, the control plane) brings *who it is* from its own settings
section: ``TESSERA_<SECTION>__DB_USER`` and ``__DB_PASSWORD`` or ``__DB_PASSFILE``. ``with_credentials``
joins the two with psycopg's conninfo functions (no string surgery), so the same location serves every part
under its own Postgres role (docs/architecture/physical.md, "Database roles").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import BaseModel, SecretStr

from shardctl.errors import BadDsnError, SettingsError

CREDENTIAL_KEYS = ("user", "password", "passfile")
# What the catalog's shard map never stores: the credentials, and the password of a client key (``sslkey``).
# TLS parameters (sslmode, sslrootcert, sslcert, sslkey) are locations of files and stay.
SECRET_KEYS = (*CREDENTIAL_KEYS, "sslpassword")


@dataclass(frozen=True)
class DbCredentials:
    """Who connects: a Postgres role and, optionally, its password or a libpq passfile (``.pgpass`` format)."""

    user: str | None = None
    password: str | None = None
    passfile: str | None = None

    def __post_init__(self) -> None:
        if self.password is not None and self.passfile is not None:
            raise SettingsError("give a password or a passfile, not both")
        if (self.password is not None or self.passfile is not None) and not self.user:
            raise SettingsError("a password or passfile needs a user")

    def __repr__(self) -> str:  # never print a password
        secret = ", password=***" if self.password is not None else ""
        return f"DbCredentials(user={self.user!r}{secret}, passfile={self.passfile!r})"

    @property
    def empty(self) -> bool:
        return self.user is None


def with_credentials(dsn: str, credentials: DbCredentials | None) -> str:
    """``dsn`` (a location) connecting as ``credentials``; unchanged when they are empty.

    The credentials replace any the DSN carries (a password left from another user would be wrong for this
    one), so a part never runs as whoever the DSN happened to name.
    """
    if credentials is None or credentials.empty:
        return dsn
    location = _without(dsn, CREDENTIAL_KEYS)
    return make_conninfo(location, user=credentials.user, password=credentials.password, passfile=credentials.passfile)


def location_only(dsn: str) -> str:
    """``dsn`` without user, password, passfile and sslpassword: where a server is, for the catalog's shard map
    (TLS parameters included: every part verifies the server the same way)."""
    return _without(dsn, SECRET_KEYS)


def _without(dsn: str, keys: tuple[str, ...]) -> str:
    return make_conninfo("", **{k: v for k, v in _params(dsn).items() if k not in keys})


def credentials_of(dsn: str) -> DbCredentials:
    """The credentials a DSN carries (empty if it names no user)."""
    params = _params(dsn)
    user = params.get("user")
    if not user:
        return DbCredentials()
    return DbCredentials(str(user), _str_or_none(params.get("password")), _str_or_none(params.get("passfile")))


def _params(dsn: str) -> dict[str, object]:
    """The DSN's parameters; ``BadDsnError`` (which never quotes the DSN) if libpq cannot parse it."""
    try:
        return conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise BadDsnError from None


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


class DbCredentialFields(BaseModel):
    """Mixed into a part's ``SectionSettings``: ``db_user``, ``db_password``, ``db_passfile`` of its section.

    Unset ``db_user``: the part connects as the settings' DSN says (the local stack writes each part's user)."""

    db_user: str | None = None
    db_password: SecretStr | None = None
    db_passfile: Path | None = None

    def db_credentials(self) -> DbCredentials:
        password = self.db_password.get_secret_value() if self.db_password is not None else None
        passfile = str(self.db_passfile) if self.db_passfile is not None else None
        return DbCredentials(self.db_user, password, passfile)


class RedisCredentialFields(BaseModel):
    """Mixed into the ``SectionSettings`` of a part that uses the prediction cache's Redis: who it is there (an ACL
    user of ``shardctl.redis_acl``) and either its password or a file holding it (the local stack writes the
    file's path, never the password). Unset user: Redis's default user, as the URL says."""

    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_password_file: Path | None = None

    def redis_credentials(self) -> tuple[str | None, str | None]:
        """(user, password) for redis-py; the password read from ``redis_password_file`` when that is given."""
        if self.redis_password is not None:
            return self.redis_username, self.redis_password.get_secret_value()
        if self.redis_password_file is not None:
            return self.redis_username, self.redis_password_file.read_text().strip()
        return self.redis_username, None
