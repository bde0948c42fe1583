"""The code location reads the settings once, when it is built: the daily calendar starts on the settings' start
date, the resources carry the settings' values as fields, and a password is bound as ``dg.EnvVar`` (resolved when a
step runs, never part of the definitions). No stack needed."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from orchestration.definitions import defs

CATALOG = "host=127.0.0.1 port=1 dbname=catalog"
STACK_FILE = {"catalog_dsn": CATALOG, "pipeline": {"start_date": "2026-10-01", "rows_per_day": 123, "db_user": "p"}}


@pytest.mark.req("PLAT.settings")
def test_the_code_location_takes_the_settings_once_when_it_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "settings.json").write_text(json.dumps({**STACK_FILE, "data_dir": str(tmp_path)}))
    monkeypatch.setenv("TESSERA_SETTINGS_FILE", str(tmp_path / "settings.json"))
    for name in ("TESSERA_CATALOG_DSN", "TESSERA_PIPELINE__ROWS_PER_DAY", "TESSERA_PIPELINE__START_DATE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TESSERA_PIPELINE__DB_PASSWORD", "planted-secret")
    built = defs()
    calendar = built.resolve_job_def("daily_partitions").partitions_def
    assert calendar.get_first_partition_key() == "2026-10-01"
    tessera, source = built.resources["tessera"], built.resources["raw_data"]
    assert (tessera.catalog_dsn, tessera.db_user) == (CATALOG, "p")
    assert source.rows_per_day == 123
    assert tessera.db_password == dg.EnvVar("TESSERA_PIPELINE__DB_PASSWORD")
    assert "planted-secret" not in repr(built.resources)
    # Settings changed afterwards reach the next build of the code location, not the one built.
    monkeypatch.setenv("TESSERA_PIPELINE__ROWS_PER_DAY", "7")
    assert built.resources["raw_data"].rows_per_day == 123
    assert defs().resources["raw_data"].rows_per_day == 7
