"""High availability per shard: etcd plus a Patroni cluster (primary and replicas) for each shard."""
