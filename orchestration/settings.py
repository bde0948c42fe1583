"""The pipeline's own settings: ``TESSERA_PIPELINE__*`` and ``TESSERA_H2O__*`` variables, then the ``pipeline``
and ``h2o`` objects of the stack's settings file, then these defaults. What orchestration shares with the other
parts (catalog, shards, model name, feature set, data dir, Dagster DSN) stays in
``shardctl.settings.TesseraSettings``."""

from __future__ import annotations

from datetime import date
from typing import ClassVar

from pydantic import Field

from shardctl.credentials import DbCredentialFields
from shardctl.java import JavaSettings
from shardctl.settings import SectionSettings, section_config

# The heap of an H2O JVM the pipeline starts itself (this section's default, and so the H2O resource's): sized
# from the data each step loads (orchestration/h2o_heap.py), at least 1 GB (what the demo's GBM trains in), so a
# 2-core development box gives no more than that to a JVM and a 10x larger training set gets what it needs.
DEFAULT_H2O_MAX_MEM = "auto"
H2O_MAX_MEM_PATTERN = r"^(\d+[mMgG]|auto)$"


class PipelineSettings(SectionSettings, DbCredentialFields):
    """The Dagster pipeline's synthetic raw data (seed, calendar, scale: tests use less, the demo more) and the
    database role its steps and Dagster's storage connect as (``db_user``, ``db_password`` or ``db_passfile``).
    Read once, when the code location loads (``defs/resources.py``, ``defs/daily.py``); per-run choices (the
    profile's method, the promotion rule, training) are the assets' run config instead."""

    section: ClassVar[str] = "pipeline"
    model_config = section_config(section)

    seed: int = 7
    start_date: date = date(2026, 9, 1)
    rows_per_day: int = Field(default=1000, ge=1)
    entities: int = Field(default=2000, ge=1)


class H2OSettings(JavaSettings):
    """How orchestration reaches H2O: an existing cluster URL, or a local JVM started on demand."""

    section: ClassVar[str] = "h2o"
    model_config = section_config(section)

    url: str | None = None
    nthreads: int = Field(default=2, ge=1, le=256)
    max_mem: str = Field(default=DEFAULT_H2O_MAX_MEM, pattern=H2O_MAX_MEM_PATTERN)


class ScorerRoleSettings(SectionSettings, DbCredentialFields):
    """The scorer's role, as the re-scoring job hands it to the pass it runs (``TESSERA_SCORER__DB_*``, or the
    stack's ``scorer`` section). The scorer's other knobs are its own to read (``serving/scorer/settings.py``,
    which documents the section)."""

    section: ClassVar[str] = "scorer"
    model_config = section_config(section)
