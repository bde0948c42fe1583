"""`python -m shardctl.cli`: the `shardctl` command (tests start it so, with the interpreter they run on)."""

from shardctl.cli import main

main()
