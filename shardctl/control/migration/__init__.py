"""Online resharding building blocks: move whole logical shards between servers.

``plan`` decides which logical shards move (pure logic), ``estimate`` sizes the moves, ``replication``
copies them and keeps them in sync through a row-filtered publication and a subscription, ``verify`` compares
source and target, ``cleanup`` removes moved rows from the source without leaving bloat. Design and measured
facts: docs/architecture/resharding.md. Imports stay at psycopg and the standard library so the package can
move (``shardctl/control/``) without dragging the store along.
"""
