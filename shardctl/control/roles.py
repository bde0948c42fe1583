"""Create the parts' login roles on a server (idempotent), as its superuser.

Roles are per server (a Patroni replica gets them from its primary). Each role can log in and nothing else:
no superuser, no CREATEDB, no CREATEROLE, no REPLICATION, no BYPASSRLS; what it may touch is granted table by
table in the schema step (``shardctl.store.grants``). A password is encrypted on the client (libpq's
``PQencryptPasswordConn``, SCRAM-SHA-256) before it is sent, so it never appears in the server's statement log.
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg
from psycopg import sql

from shardctl.errors import ControlError, first_line
from shardctl.store.connection import connect
from shardctl.store.grants import PART_ROLES, PIPELINE_ROLE

_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"


class RoleSetupError(ControlError, RuntimeError):
    """The roles could not be created (not a superuser, or the server refused)."""


def ensure_roles(dsn: str, passwords: Mapping[str, str | None] | None = None, *, connect_timeout: int = 5) -> None:
    """Create (or bring back to their least-privilege attributes) every part's role on the server at ``dsn``.

    ``passwords`` maps a role to its password; a role absent or mapped to None gets no password (it cannot log
    in where pg_hba asks for one, as every server of the local stack does). An existing role's password is
    replaced only when one is given.
    """
    passwords = dict(passwords or {})
    unknown = set(passwords) - set(PART_ROLES)
    if unknown:
        raise RoleSetupError(f"no such part role: {', '.join(sorted(unknown))} (known: {', '.join(PART_ROLES)})")
    try:
        with connect(dsn, autocommit=True, connect_timeout=connect_timeout) as conn:
            if not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
                raise RoleSetupError(f"creating roles needs a superuser; {conn.info.user!r} is not one")
            for role in PART_ROLES:
                _ensure_role(conn, role, passwords.get(role))
    except psycopg.Error as exc:
        raise RoleSetupError(f"could not create the part roles: {first_line(exc)}") from exc


def _ensure_role(conn: psycopg.Connection, role: str, password: str | None) -> None:
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    verb = "ALTER ROLE" if exists else "CREATE ROLE"
    statement = sql.SQL(f"{verb} {{}} {_ATTRIBUTES}").format(sql.Identifier(role))
    if password is not None:
        encrypted = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
        statement = sql.SQL("{} PASSWORD {}").format(statement, sql.Literal(encrypted))
    conn.execute(statement)


def own_database(dsn: str, database: str, role: str = PIPELINE_ROLE, *, connect_timeout: int = 5) -> None:
    """Make ``role`` the owner of ``database`` (Dagster's storage belongs to the pipeline that runs Dagster)."""
    with connect(dsn, autocommit=True, connect_timeout=connect_timeout) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(role)))
