"""One local PostgreSQL server: created from a template cluster, started with pg_ctl as an unprivileged
user, and stopped by the postmaster's PID. Every role logs in with a SCRAM password (pg_hba has no ``trust``
line); clients name a libpq passfile, never the password."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from shardctl.errors import LocalStackError
from shardctl.process import log_tail, pid_alive, stop_pid, wait_until
from shardctl.stack.binaries import PostgresBinaries
from shardctl.stack.users import as_user, chown_tree

SUPERUSER = "tessera"
REPLICATION_USER = "replicator"  # HA only: Patroni's streaming replicas connect as it
DATABASE = "tessera"
# The server's own passfile (the superuser's password), inside its data directory (0700, the server user's):
# the subscriptions resharding creates connect from the server process to another server with it, since the
# client's passfile path means nothing to the server (see shardctl.control.migration.replication).
SERVER_PASSFILE = "tessera_server.pgpass"

# Settings for a small shared machine; wal_level=logical leaves room for online resharding.
SERVER_CONF = """
listen_addresses = '127.0.0.1'
max_connections = 200
shared_buffers = 128MB
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_wal_size = 2GB
checkpoint_timeout = 15min
logging_collector = off
"""


class PostgresStartError(LocalStackError, RuntimeError):
    """The server did not come up; the message carries the tail of its log."""


def dsn(
    port: int,
    dbname: str = DATABASE,
    host: str = "127.0.0.1",
    passfile: Path | None = None,
    root_cert: str | None = None,
) -> str:
    """The superuser's DSN of a local server: ``passfile`` (a libpq passfile holding its password) is a path, not
    a secret; with ``root_cert`` (a TLS stack) it verifies the server against it."""
    login = {"passfile": str(passfile)} if passfile is not None else {}
    plain = make_conninfo(host=host, port=port, dbname=dbname, user=SUPERUSER, **login)
    return plain if root_cert is None else verify_full(plain, root_cert)


def verify_full(location: str, root_cert: str) -> str:
    """``location`` over TLS, the server's certificate checked against ``root_cert`` and the host name."""
    return make_conninfo(location, sslmode="verify-full", sslrootcert=root_cert)


@dataclass
class PostgresServer:
    name: str
    port: int
    data_dir: Path  # the cluster directory (PGDATA)
    binaries: PostgresBinaries
    user: str | None
    passfile: Path | None = None  # the client's passfile with the superuser's password
    tls_root_cert: str | None = None  # a TLS stack's CA: clients verify the server with it (shardctl/stack/tls.py)

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "sockets"

    def dsn(self, dbname: str = DATABASE) -> str:
        return dsn(self.port, dbname, passfile=self.passfile, root_cert=self.tls_root_cert)

    def pid(self) -> int | None:
        """The postmaster's PID from postmaster.pid, if it is running."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (FileNotFoundError, ValueError, IndexError, PermissionError):
            return None
        return pid if pid_alive(pid) else None

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init_from(self, template: Path) -> None:
        """Create the cluster by copying an initdb'd template (much faster than another initdb)."""
        shutil.copytree(template, self.data_dir, symlinks=True)
        self.socket_dir.mkdir(exist_ok=True)
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nunix_socket_directories = '{self.socket_dir}'\n")
        chown_tree(self.data_dir, self.user)
        self.data_dir.chmod(0o700)

    def start(self, timeout: float = 60.0) -> int:
        """Start the server and wait until it accepts connections; returns the postmaster PID."""
        if self.pid():
            return self.pid()  # type: ignore[return-value]
        argv = as_user(
            self.user,
            [
                self.binaries.tool("pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(int(timeout)),
            ],
        )
        env = {**os.environ, "PGPASSFILE": str(self.data_dir / SERVER_PASSFILE)}
        result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        if result.returncode != 0 or not wait_until(self.accepts_connections, timeout):
            raise PostgresStartError(f"{self.name} (port {self.port}) did not start:\n{self.log_tail()}")
        return self.pid()  # type: ignore[return-value]

    def accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def ensure_database(self, dbname: str) -> None:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{dbname}"')

    def stop(self, timeout: float = 30.0) -> bool:
        """Fast shutdown (SIGINT to the postmaster), escalating if it hangs; True once stopped."""
        pid = self.pid()
        if pid is None:
            return True
        return stop_pid(pid, signal.SIGINT, timeout)

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_file, lines)


def make_template(binaries: PostgresBinaries, path: Path, user: str | None, password: str) -> Path:
    """initdb once into ``path``, the superuser's password ``password``; every server of the stack starts as a
    copy of it. pg_hba asks every role, over TCP and the Unix socket alike, for a SCRAM password."""
    if (path / "PG_VERSION").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    chown_tree(tmp, user)
    pwfile = path.with_name(path.name + ".pw")  # initdb reads the password from a file, never from argv
    write_owned(pwfile, password + "\n", user)
    argv = as_user(
        user,
        [
            binaries.tool("initdb"),
            "-D",
            str(tmp),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
    )
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise PostgresStartError(f"initdb failed:\n{result.stderr[-2000:]}")
    with open(tmp / "postgresql.conf", "a") as conf:
        conf.write(SERVER_CONF)
    write_owned(tmp / SERVER_PASSFILE, pgpass_line(SUPERUSER, password), user)
    tmp.rename(path)
    return path


def enable_ssl(data_dir: Path, cert_file: Path, key_file: Path, user: str | None) -> None:
    """Turn TLS on in an initialized cluster directory (the stack's template: every server copied from it
    inherits it): the certificate and its key in the data dir (the key 0600 and the server user's: PostgreSQL
    refuses a key others may read), ``ssl = on``, and every TCP line of pg_hba made ``hostssl``, so a client that
    does not encrypt finds no line that admits it. Idempotent."""
    shutil.copyfile(cert_file, data_dir / "server.crt")
    key = data_dir / "server.key"
    key.unlink(missing_ok=True)
    with os.fdopen(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as sink:
        sink.write(key_file.read_bytes())
    conf = data_dir / "postgresql.conf"
    if SSL_CONF not in conf.read_text():
        with open(conf, "a") as sink:
            sink.write(SSL_CONF)
    hba = data_dir / "pg_hba.conf"
    hba.write_text(hostssl_only(hba.read_text()))
    chown_tree(data_dir, user)


# server.crt and server.key in the data dir are PostgreSQL's defaults for ssl_cert_file and ssl_key_file.
SSL_CONF = "\n# TLS (shardctl stack up --tls)\nssl = on\nssl_min_protocol_version = 'TLSv1.2'\n"


def hostssl_only(hba: str) -> str:
    """pg_hba.conf with each ``host`` line (TCP, encrypted or not) turned into ``hostssl`` (TCP with TLS only);
    ``local`` (Unix socket) lines and comments stay."""
    lines = []
    for line in hba.splitlines():
        words = line.split(None, 1)
        lines.append(line.replace("host", "hostssl", 1) if words and words[0] == "host" else line)
    return "\n".join(lines) + "\n"


def write_owned(path: Path, text: str, user: str | None = None) -> None:
    """Write ``text`` to ``path`` readable by ``user`` (None: ourselves) alone: 0600 from the first byte, and
    replaced in one step, so a reader never sees half a password."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(tmp, entry.pw_uid, entry.pw_gid)
    tmp.replace(path)


def pgpass_line(role: str, password: str) -> str:
    """A libpq passfile line for ``role`` on any host, port and database (``:`` and ``\\`` escaped)."""
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:{role}:{escaped}\n"
