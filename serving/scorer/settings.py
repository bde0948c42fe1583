"""The scorer's own settings: ``TESSERA_SCORER__*`` variables, then the ``scorer`` object of the stack's settings
file, then these defaults (docs/configuration.md lists them)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from shardctl.credentials import DbCredentialFields, RedisCredentialFields
from shardctl.settings import SectionSettings, section_config
from shardctl.store.predictions import DEFAULT_SCORER


class ScorerSettings(SectionSettings, DbCredentialFields, RedisCredentialFields):
    """The precomputing scorer (``python -m serving.scorer``): its batches and threads, how often it reads the
    change logs, its probe listener, and the database role it connects as (``db_user``, ``db_password`` or
    ``db_passfile``: reads features and the change log, writes predictions and its cursor), and who it is to the
    prediction cache's Redis (``redis_username``, ``redis_password`` or ``redis_password_file``: the ``scorer``
    ACL user, limited to cache entries; unset URL: predictions go to the table alone)."""

    section: ClassVar[str] = "scorer"
    model_config = section_config(section)

    # The cursor's name on every server: one scorer per deployment (a second one with the same name would score
    # the same changes twice; with another name it keeps a cursor of its own).
    name: str = Field(default=DEFAULT_SCORER, pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    # Entities per scoring call and per write transaction.
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    # The ThreadPoolExecutor that runs the MOJO (a batch is split over its threads).
    threads: int = Field(default=2, ge=1, le=64)
    # How often each server's change log is read (a feature write is scored within about this plus a batch).
    poll_ms: float = Field(default=50, gt=0, le=60_000)
    # While nothing changes, the cursor (and with it the lag serving reports) is saved this often.
    heartbeat_seconds: float = Field(default=1.0, gt=0, le=3600)
    # Probes and metrics (GET /healthz, /readyz, /metrics).
    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=0, le=65_535)
    # Liveness fails when no round has completed for this long (a stuck loop).
    stall_seconds: float = Field(default=60.0, gt=0, le=3600)
    # How long a prediction the scorer writes into the cache stays there (Redis's LRU evicts earlier under memory
    # pressure). Long on purpose: the scorer rewrites an entity's entry whenever its features change, so an entry
    # is as current as the scorer is, however old (serving/freshness.py, "the scorer's epoch").
    cache_ttl_seconds: int = Field(default=86_400, ge=1, le=30 * 86_400)
