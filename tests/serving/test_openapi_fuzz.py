"""A bounded property-based run (Schemathesis) against the served OpenAPI schema: no input yields a 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.req("JTBD-02.openapi")
def test_schemathesis_finds_no_server_error(service, tmp_path):
    schema = service.client.get("/schema/openapi.json")
    assert schema.status_code == 200
    assert "/v1/predictions" in schema.json()["paths"]
    cli = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [
            str(cli),
            "run",
            f"{service.url}/schema/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "40",
            "--seed",
            "5",
            "--request-timeout",
            "10",
            "--generation-database",
            ":memory:",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
