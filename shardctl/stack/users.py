"""Run server processes as an unprivileged user: PostgreSQL refuses to run as root."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

FALLBACK_USER = "tessera"


def is_root() -> bool:
    return os.geteuid() == 0


def server_user(preferred: str | None = None) -> str | None:
    """The user servers run as: None means 'as ourselves' (we are not root).

    As root we use ``preferred``, else an existing ``postgres`` user, else a ``tessera`` system user
    that we create.
    """
    if not is_root():
        return None
    for name in (preferred, "postgres", FALLBACK_USER):
        if name and _user_exists(name):
            return name
    name = preferred or FALLBACK_USER
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    return name


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def as_user(user: str | None, argv: list[str]) -> list[str]:
    """``argv`` wrapped so it runs as ``user`` (unchanged when user is None)."""
    if user is None:
        return argv
    runuser = shutil.which("runuser") or "/sbin/runuser"
    return [runuser, "-u", user, "--", *argv]


def chown_tree(path: Path, user: str | None) -> None:
    """Give ``path`` (recursively) to ``user``."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def user_can_write(user: str | None, path: Path) -> bool:
    """True if ``user`` can reach and write into ``path`` (a directory that exists)."""
    if user is None:
        return os.access(path, os.W_OK | os.X_OK)
    result = subprocess.run(as_user(user, ["test", "-w", str(path), "-a", "-x", str(path)]), check=False)
    return result.returncode == 0
