"""Each part's own settings: its TESSERA_<SECTION>__* variables win over its section of the stack's file, which
wins over the defaults; a part never reads another part's section."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from orchestration.resources import H2OResource
from orchestration.settings import H2OSettings, PipelineSettings
from serving.settings import ServingSettings
from shardctl.java import JavaSettings


@pytest.fixture
def stack_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "settings.json"
    path.write_text(
        json.dumps(
            {
                "catalog_dsn": "host=localhost port=1",
                "serving": {"port": 8100, "max_batch": 50},
                "pipeline": {"start_date": "2026-10-01"},
                "h2o": {"java_home": "/opt/java17", "max_mem": "3G"},
            }
        )
    )
    monkeypatch.setenv("TESSERA_SETTINGS_FILE", str(path))
    for name in ("TESSERA_SERVING__PORT", "TESSERA_SERVING__MAX_BATCH", "TESSERA_H2O__MAX_MEM", "TESSERA_H2O__URL"):
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.mark.req("PLAT.settings")
def test_env_beats_the_stack_file_which_beats_the_defaults(stack_file: Path, monkeypatch) -> None:
    monkeypatch.setenv("TESSERA_SERVING__PORT", "9123")
    serving = ServingSettings()
    assert (serving.port, serving.max_batch, serving.workers) == (9123, 50, 1)
    assert PipelineSettings().start_date == date(2026, 10, 1)
    assert H2OSettings().max_mem == "3G"
    monkeypatch.setenv("TESSERA_H2O__MAX_MEM", "512m")
    assert H2OSettings().max_mem == "512m"


@pytest.mark.req("PLAT.settings")
def test_training_and_scoring_read_the_one_java_home_the_stack_records(stack_file: Path) -> None:
    assert H2OSettings().java_home == JavaSettings().java_home == "/opt/java17"


@pytest.mark.req("PLAT.settings")
def test_the_h2o_heap_has_one_default(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TESSERA_SETTINGS_FILE", str(tmp_path / "absent.json"))
    monkeypatch.delenv("TESSERA_H2O__MAX_MEM", raising=False)
    assert H2OResource().max_mem == H2OSettings().max_mem == "auto"


def test_a_bad_value_is_refused_by_its_section() -> None:
    with pytest.raises(ValueError, match="read_target"):
        ServingSettings(read_target="primary")
    with pytest.raises(ValueError, match="max_mem"):
        H2OSettings(max_mem="lots")


@pytest.mark.req("PLAT.settings")
def test_a_section_of_another_stack_comes_from_that_stacks_file(tmp_path: Path, monkeypatch) -> None:
    """A process whose own stack is A, handed stack B's settings, reads B's part credentials for B's servers
    (each stack generates its own passwords); its variables still win."""
    from shardctl.store.writer_settings import WriterSettings

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "settings.json").write_text(
            json.dumps({"writer": {"db_user": "tessera_writer", "db_passfile": f"/stacks/{name}/writer.pgpass"}})
        )
    monkeypatch.delenv("TESSERA_SETTINGS_FILE", raising=False)
    monkeypatch.delenv("TESSERA_WRITER__DB_PASSFILE", raising=False)
    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path / "a"))
    assert str(WriterSettings().db_passfile) == "/stacks/a/writer.pgpass"
    assert str(WriterSettings.of_stack(tmp_path / "b").db_passfile) == "/stacks/b/writer.pgpass"
    assert str(WriterSettings().db_passfile) == "/stacks/a/writer.pgpass"  # the process's own stack again
    monkeypatch.setenv("TESSERA_WRITER__DB_PASSFILE", "/from/env.pgpass")
    assert str(WriterSettings.of_stack(tmp_path / "b").db_passfile) == "/from/env.pgpass"
