"""A bounded property-based run (Schemathesis) against the served OpenAPI schema: valid and invalid inputs
(positive and negative mode, every phase) give no 5xx, and every answer conforms to the documented schema,
status codes, content types (problem details for errors) and headers (Retry-After on 503)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "unsupported_method",
    "allow_header_conformance",
]


@pytest.mark.req("JTBD-02.openapi")
@pytest.mark.req("JTBD-02.hostile-bodies")
def test_schemathesis_finds_no_server_error_and_no_schema_violation(service, tmp_path):
    schema = service.client.get("/schema/openapi.json")
    assert schema.status_code == 200
    predict = schema.json()["paths"]["/v1/predictions"]["post"]
    assert set(predict["responses"]) == {"200", "401", "403", "404", "413", "422", "429", "503"}
    assert predict["security"] == [{"apiKey": []}]
    assert "application/problem+json" in predict["responses"]["422"]["content"]
    assert "Retry-After" in predict["responses"]["503"]["headers"]
    assert "Retry-After" in predict["responses"]["429"]["headers"]
    # The run's API key: from the environment through schemathesis' config file, never on its command line.
    config = tmp_path / "schemathesis.toml"
    config.write_text('headers = { Authorization = "${TESSERA_TEST_AUTHORIZATION}" }\n')
    env = dict(os.environ, TESSERA_TEST_AUTHORIZATION=service.auth_headers["Authorization"])
    cli = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [
            str(cli),
            "--config-file",
            str(config),
            "run",
            f"{service.url}/schema/openapi.json",
            "--checks",
            ",".join(CHECKS),
            "--mode",
            "all",
            "--max-examples",
            "100",
            "--seed",
            "5",
            "--request-timeout",
            "10",
            "--generation-database",
            ":memory:",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
