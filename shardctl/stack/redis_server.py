"""One local Redis server, run in the foreground of its own session so its PID is ours to stop. With an ACL
file (the stack's: ``shardctl.redis_acl``) its default user is off and every client names a user and password."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

import redis

from shardctl.errors import LocalStackError
from shardctl.process import log_tail, pid_alive, spawn_in_own_session, stop_pid, wait_until


class RedisStartError(LocalStackError, RuntimeError):
    """Redis did not come up; the message carries the tail of its log."""


@dataclass
class RedisServer:
    port: int
    dir: Path
    binary: str
    pid: int | None = None
    acl_file: Path | None = None  # users and password digests; None: Redis's open default user
    username: str | None = None  # who `answers` connects as (the stack's admin)
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.dir / "redis.log"

    def start(self, timeout: float = 20.0) -> int:
        if pid_alive(self.pid) and self.answers():
            return self.pid  # type: ignore[return-value]
        self.dir.mkdir(parents=True, exist_ok=True)
        # A cache: nothing is persisted, so a restart is a cold cache, never stale data.
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.log_file),
            "--daemonize",
            "no",
            "--maxmemory",
            "512mb",
            "--maxmemory-policy",
            "allkeys-lru",
            *(["--aclfile", str(self.acl_file)] if self.acl_file is not None else []),
        ]
        self.pid = spawn_in_own_session(argv)  # it writes its own --logfile
        # Stop waiting as soon as it answers or exits (a redis that cannot bind exits at once).
        wait_until(lambda: self.answers() or not pid_alive(self.pid), timeout)
        if not self.answers():
            self.stop()
            raise RedisStartError(f"redis on port {self.port} did not start:\n{log_tail(self.log_file)}")
        return self.pid

    def answers(self) -> bool:
        try:
            client = redis.Redis.from_url(self.url, socket_timeout=1, username=self.username, password=self.password)
            return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self, timeout: float = 10.0) -> bool:
        if self.pid is None:
            return True
        stopped = stop_pid(self.pid, signal.SIGTERM, timeout)
        if stopped:
            self.pid = None
        return stopped
