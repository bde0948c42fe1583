"""`shardctl`: the control plane's command line, one module per command group (``shardctl/cli/``). The root
group prints an expected failure (a ``shardctl.errors.ShardctlError``) as one message and exits 1; anything
else is one line naming the file that keeps its traceback (exit 70). Each command imports what it needs when it
runs: `shardctl --help` must not pay for pydantic, psycopg, sqlglot, Patroni's cluster code and the stack
manager (1.7 s together; the help answers in ~0.1 s)."""

from __future__ import annotations

import click

from shardctl.cli.backup import backup
from shardctl.cli.ha import ha
from shardctl.cli.keys import keys
from shardctl.cli.migrate import migrate
from shardctl.cli.models import models
from shardctl.cli.options import ShardctlGroup
from shardctl.cli.restore import restore
from shardctl.cli.servers import servers
from shardctl.cli.shards import roles, shards
from shardctl.cli.stack import stack


@click.group(cls=ShardctlGroup)
def main() -> None:
    """Tessera's sharded feature store and its control plane."""


for _group in (stack, ha, shards, roles, servers, migrate, models, keys, backup, restore):
    main.add_command(_group)
