"""How to run Patroni as the server user: PostgreSQL refuses root, and Patroni starts PostgreSQL.

Not root: our own interpreter runs it, as ourselves. Root: the unprivileged server user may be unable to read
our virtualenv (a clone under /root), so it runs Patroni from the server runtime built for it
(``shardctl.stack.server_runtime``). Either way the entry point is run as a file, with no import of shardctl.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

from shardctl.stack.ha import patroni_entry
from shardctl.stack.server_runtime import patroni_runtime

# The entry point runs as a plain file (not ``-m shardctl...``): the server user may not be able to read shardctl.
ENTRY_SOURCE = Path(patroni_entry.__file__)


@lru_cache(maxsize=4)
def patroni_command(user: str | None) -> list[str]:
    """The command prefix (before the member's YAML) that starts Patroni as ``user`` (None: ourselves)."""
    if user is None:
        return [sys.executable, "-P", str(ENTRY_SOURCE)]
    return patroni_runtime(user, ENTRY_SOURCE)


def patroni_environment(user_home: Path, passfile: Path | None = None) -> dict[str, str]:
    """Environment for a Patroni process: a HOME it can write, no inherited PG*/PATRONI_*/PYTHON* settings, and
    ``passfile`` as PGPASSFILE: the Postgres it starts inherits it, so the subscriptions resharding creates find
    the superuser's password there (Patroni's own connections carry theirs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PATRONI_", "PYTHON"))}
    env.update(HOME=str(user_home), LC_ALL="C.UTF-8", LANG="C.UTF-8")
    if passfile is not None:
        env["PGPASSFILE"] = str(passfile)
    return env
