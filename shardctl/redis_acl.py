"""Who may do what in the prediction cache's Redis: serving's key prefix and the ACL rules of each Redis user.

Serving keeps every key and channel under ``SERVING_PREFIX`` (its cache entries, and anything else it stores in
Redis, e.g. a rate limiter's counters), so its Redis user is limited to that prefix and to ordinary data
commands; the stack's admin user may do anything; the default user (no password) is off. Passwords are given
to Redis as SHA-256 digests (``#<hex>``): the ACL file holds no password. The local stack writes these rules
(``shardctl/stack/redis_server.py``); docs/architecture/physical.md, "Redis users", lists them.
"""

from __future__ import annotations

import hashlib

SERVING_PREFIX = "serving:"
ADMIN_USER = "admin"
SERVING_USER = "serving"
# The precomputing scorer (serving/scorer/) writes each prediction it makes into serving's cache, and a marker of how
# far it has caught up: only cache entries and markers, through the cache's scripts, nothing else.
SCORER_USER = "scorer"
# Data commands on serving's own keys and channels: reads, writes, expiry, Lua (the cache's scripts), pipelines
# and transactions, pub/sub on its channels; never the dangerous ones (KEYS, FLUSHALL, CONFIG, DEBUG, ...).
SERVING_RULES = (
    f"resetkeys ~{SERVING_PREFIX}* resetchannels &{SERVING_PREFIX}* "
    "-@all +@read +@write +@keyspace +@scripting +@transaction +@connection +@pubsub -@dangerous"
)
SCORER_RULES = (
    f"resetkeys ~{SERVING_PREFIX}fv:* ~{SERVING_PREFIX}pred:* ~{SERVING_PREFIX}scorer:* resetchannels "
    "-@all +@read +@write +@scripting +@connection -@dangerous"
)
ADMIN_RULES = "~* &* +@all"


def password_digest(password: str) -> str:
    """The ``#<sha256>`` form Redis accepts in an ACL rule instead of the password itself."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def acl_lines(passwords: dict[str, str]) -> list[str]:
    """The ACL file's lines: the default user off, the admin, serving limited to its prefix, and the scorer (when
    ``passwords`` has one) limited to the cache's entries.

    ``passwords`` maps ``ADMIN_USER``, ``SERVING_USER`` and optionally ``SCORER_USER`` to their passwords."""
    lines = [
        "user default off resetkeys resetchannels -@all",
        f"user {ADMIN_USER} on {password_digest(passwords[ADMIN_USER])} {ADMIN_RULES}",
        f"user {SERVING_USER} on {password_digest(passwords[SERVING_USER])} {SERVING_RULES}",
    ]
    if SCORER_USER in passwords:
        lines.append(f"user {SCORER_USER} on {password_digest(passwords[SCORER_USER])} {SCORER_RULES}")
    return lines
