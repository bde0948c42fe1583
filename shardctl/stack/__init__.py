"""The local stack: real Postgres, Redis and Java found (or installed) on this machine, run on ports of
their own under a local data dir, and stopped by PID."""
