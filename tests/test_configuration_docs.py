"""docs/configuration.md is the one place that documents the settings: every field of every part is there."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings

from orchestration.settings import H2OSettings, PipelineSettings
from serving.scorer.settings import ScorerSettings
from serving.settings import ServingSettings
from shardctl.backup.settings import BackupSettings
from shardctl.control.settings import ControlSettings
from shardctl.settings import SectionSettings, StoreSettings
from shardctl.stack.ha.settings import HASettings
from shardctl.stack.settings import StackSettings
from shardctl.store.writer_settings import WriterSettings

PARTS = (
    StoreSettings,
    StackSettings,
    HASettings,
    ServingSettings,
    ScorerSettings,
    PipelineSettings,
    H2OSettings,
    WriterSettings,
    ControlSettings,
    BackupSettings,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def _variables(cls: type[BaseSettings]) -> list[str]:
    prefix = f"TESSERA_{cls.section.upper()}__" if issubclass(cls, SectionSettings) else "TESSERA_"
    return [f"`{prefix}{name.upper()}`" for name in cls.model_fields]


def test_every_variable_of_every_part_is_documented() -> None:
    text = DOC.read_text()
    missing = [v for cls in PARTS for v in _variables(cls) if v not in text]
    assert missing == []


def test_readme_points_at_the_configuration_page() -> None:
    readme = (DOC.parent.parent / "README.md").read_text()
    assert "(docs/configuration.md)" in readme
