"""Online resharding building blocks: move whole logical shards between servers.

``plan`` decides which logical shards move (pure logic), ``estimate`` sizes the moves, ``disk`` checks that each
target has room for its copy, ``replication`` copies them and keeps them in sync through a row-filtered
publication and a subscription, ``verify`` compares source and target, ``cleanup`` removes moved rows from the
source without leaving bloat; ``journal`` keeps the phases in the catalog and ``engine`` drives them. Design and
measured facts: docs/architecture/resharding.md. The package sits on the store (the shard map, the schema, the
logical-shard fence, connections), as the control plane does: it never imports the local stack or the CLI.
"""
