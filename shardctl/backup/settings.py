"""The ``backup`` section (``TESSERA_BACKUP__*``): where the repository is, how long backups are kept, and the
timings of a consistent restore point."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from shardctl.settings import SectionSettings, section_config


class BackupSettings(SectionSettings):
    """Knobs of `shardctl backup` and `shardctl restore`, and of the archiving the stack starts servers with."""

    section: ClassVar[str] = "backup"
    model_config = section_config(section)

    # The pgBackRest repository (and its config, logs, locks, restore points); unset: ``<postgres root>-backups``
    # beside the servers' data (``stack down --purge`` deletes it with the stack: set this to keep backups apart).
    repo_path: str | None = None
    retention_full: int = Field(default=2, ge=1, le=1000)  # full backups kept (older ones and their WAL expire)
    archive_timeout_s: int = Field(default=60, ge=0, le=86400)  # force a WAL switch this often (0: off)
    process_max: int = Field(default=2, ge=1, le=64)  # pgBackRest processes per backup and restore
    point_lock_timeout_s: float = Field(default=2.0, gt=0, le=60)  # a point waits this long for in-flight writes
    point_attempts: int = Field(default=5, ge=1, le=100)  # then gives up and tries again, this many times
    archive_wait_s: float = Field(default=60.0, gt=0, le=3600)  # a point waits this long for its WAL to be archived
    restore_timeout_s: float = Field(default=300.0, gt=0, le=86400)  # each server's recovery to the point
