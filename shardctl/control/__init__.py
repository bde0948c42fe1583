"""Layer 2, the control plane: operations on a running topology (HA status, switchover, dynamic config).

Imports the store (``shardctl.store``) and the base helpers, never the local stack (``shardctl.stack``).
"""
