"""Layer 3, the local stack: real Postgres, Redis and Java found (or installed) on this machine, run on ports of
their own under a local data dir, and stopped by PID; the local Patroni clusters and drills (``ha/``).

For development and tests only: imports the store and the control plane; serving and orchestration never
import it at run time (tests/test_architecture_docs.py)."""
