"""The shard map: which server holds each logical shard, under a monotonically increasing epoch, in the catalog.

Routing is ``entity id -> logical shard -> server``: ``logical_shard = Hash(entity_id) % 256`` never changes,
and each epoch places the 256 logical shards on named servers (``placement``; the first epoch puts logical
shard ``l`` on server ``l % N``, which for a power-of-two N is exactly where ``hash % N`` put every row before
logical shards existed). Servers are registered by name (``tessera_servers``); plans, the CLI and run config
name servers, never DSNs.

Readers and writers cache the current map. A new epoch is announced with ``NOTIFY`` on commit, and a
``ShardMapWatcher`` thread blocked in ``LISTEN`` picks it up (no polling loop); each watcher also records the
epoch it follows in ``tessera_epoch_acks`` (a heartbeat), so a migration knows when every live process has
moved on. Every write carries the epoch it routed with, and each server's per-logical-shard fence, which a
cutover raises on the moving logical shards only (``shardctl/store/fence.py``), refuses a write routed on an
older epoch.

One module per job: ``value`` (the ``ShardMap`` value type and server names), ``catalog`` (``ShardMapStore``:
read, publish, register and unregister servers, epoch acknowledgements) and ``watcher`` (``ShardMapWatcher``:
the thread that follows the published epochs). Import the names from here.
"""

from shardctl.store.shardmap.catalog import ShardMapStore
from shardctl.store.shardmap.value import ShardMap, ShardMapError, check_server_name, initial_placement, server_name
from shardctl.store.shardmap.watcher import ShardMapWatcher

__all__ = [
    "ShardMap",
    "ShardMapError",
    "ShardMapStore",
    "ShardMapWatcher",
    "check_server_name",
    "initial_placement",
    "server_name",
]
