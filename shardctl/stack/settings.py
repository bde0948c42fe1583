"""The local stack's own knobs (``TESSERA_STACK__*``, or the ``stack`` object of the settings file)."""

from __future__ import annotations

from pydantic import Field

from shardctl.settings import SectionSettings, section_config


class StackSettings(SectionSettings):
    """Knobs of the local development stack (`shardctl stack`)."""

    section = "stack"
    model_config = section_config(section)

    servers: int = Field(default=2, ge=1, le=64)
    shards: int | None = Field(default=None, ge=1, le=64)  # deprecated name of ``servers``
    base_port: int = Field(default=15432, ge=1024, le=65000)
    postgres_bin_dir: str | None = None
    run_as_user: str | None = None
    # `stack up` starts the precomputing scorer (python -m serving.scorer) beside the servers; `--no-scorer` or
    # false here: it does not.
    scorer: bool = True
