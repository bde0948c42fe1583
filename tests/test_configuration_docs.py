"""docs/configuration.md is the one place that documents the settings: every store, stack and HA field is there."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings

from shardctl.settings import SectionSettings, StoreSettings
from shardctl.stack.ha.settings import HASettings
from shardctl.stack.settings import StackSettings

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def _variables(cls: type[BaseSettings]) -> list[str]:
    prefix = f"TESSERA_{cls.section.upper()}__" if issubclass(cls, SectionSettings) else "TESSERA_"
    return [f"`{prefix}{name.upper()}`" for name in cls.model_fields]


def test_every_store_stack_and_ha_variable_is_documented() -> None:
    text = DOC.read_text()
    missing = [v for cls in (StoreSettings, StackSettings, HASettings) for v in _variables(cls) if v not in text]
    assert missing == []


def test_readme_points_at_the_configuration_page() -> None:
    readme = (DOC.parent.parent / "README.md").read_text()
    assert "(docs/configuration.md)" in readme
