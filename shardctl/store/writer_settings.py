"""The writer's own section (``TESSERA_WRITER__*``): the database role a process writing features through
``FeatureStore`` connects as, when its caller passes no credentials of its own (the pipeline passes its own)."""

from __future__ import annotations

from typing import ClassVar

from shardctl.credentials import DbCredentialFields
from shardctl.settings import SectionSettings, section_config


class WriterSettings(SectionSettings, DbCredentialFields):
    """Credentials of a feature-writing process (``db_user``, ``db_password`` or ``db_passfile``)."""

    section: ClassVar[str] = "writer"
    model_config = section_config(section)
