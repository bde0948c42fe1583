"""HTTPS: the prediction service on real Granian with a certificate of a test CA (made here, at test time), and
its settings checked before Granian starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serving.settings import ServingSettings
from serving.tls import TLSSettingsError, tls_files
from shardctl.process import free_port, port_in_use
from shardctl.stack.certificates import Certified, issue_server, new_authority, write_certificate, write_private_key
from testkit.serving import REPO, PredictionService
from tests.serving.conftest import entity_id, service_env


def _pair(authority: Certified, folder: Path, password: bytes | None = None) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and its key (0600; encrypted with ``password`` if given)."""
    folder.mkdir(parents=True, exist_ok=True)
    issued = issue_server(authority, ["127.0.0.1"])
    key = write_private_key(folder / "server.key", issued.key, password)
    return write_certificate(folder / "server.crt", issued.pem), key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tls")
    authority = new_authority("Tessera test CA")
    cert, key = _pair(authority, root / "server")
    other_cert, other_key = _pair(authority, root / "other")
    _, encrypted_key = _pair(authority, root / "encrypted", b"a-key-password")
    open_key = root / "open.key"
    open_key.write_bytes(key.read_bytes())
    open_key.chmod(0o644)
    ca = write_certificate(root / "ca.crt", authority.pem)
    return dict(
        ca=ca, cert=cert, key=key, other_cert=other_cert, other_key=other_key, encrypted_key=encrypted_key,
        open_key=open_key, missing=root / "missing.pem",
    )  # fmt: skip


@pytest.mark.req("PLAT.tls-serving")
def test_https_predictions_verify_against_the_test_ca_and_plain_http_is_refused(
    serving_stack, own_redis, models, trained, api_key, certs, tmp_path: Path
) -> None:
    """Granian serves HTTPS: a client that trusts the test CA predicts as over HTTP; a client that does not trust it
    is refused by its own verification; plain HTTP to the TLS port gets no answer."""
    _, settings = serving_stack
    port = free_port()
    tls_env = {"TESSERA_SERVING__TLS_CERTIFICATE": str(certs["cert"]), "TESSERA_SERVING__TLS_KEY": str(certs["key"])}
    env = service_env(settings, own_redis.url, port, **tls_env)
    with PredictionService(env, port, tmp_path / "https.log", api_key=api_key, ca_file=certs["ca"]) as svc:
        svc.wait_ready("/readyz")
        assert svc.url.startswith("https://")
        version = svc.client.get("/v1/models/current").json()["version"]
        served = [m.version for m in models].index(version)
        answer = svc.client.post("/v1/predictions", json={"entity_id": entity_id(3)})
        assert answer.status_code == 200, answer.text
        assert answer.json()["score"] == pytest.approx(trained.expected[served][entity_id(3)], abs=1e-6)
        assert answer.json()["model_version"] == version

        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{svc.url}/healthz", timeout=5)  # the system's CAs never signed the test CA's certificate
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def _settings(certs: dict[str, Path], **chosen: str) -> ServingSettings:
    return ServingSettings(**{field: certs[name] for field, name in chosen.items()})


BAD = {
    "certificate without key": ({"tls_certificate": "cert"}, "TESSERA_SERVING__TLS_KEY"),
    "key without certificate": ({"tls_key": "key"}, "TESSERA_SERVING__TLS_CERTIFICATE"),
    "missing key file": ({"tls_certificate": "cert", "tls_key": "missing"}, "cannot read"),
    "key as certificate": ({"tls_certificate": "key", "tls_key": "key"}, "no PEM certificate"),
    "key of another certificate": ({"tls_certificate": "cert", "tls_key": "other_key"}, "is not the key of"),
    "encrypted key": ({"tls_certificate": "cert", "tls_key": "encrypted_key"}, "is encrypted"),
    "key others may read": ({"tls_certificate": "cert", "tls_key": "open_key"}, "other users may read"),
}


@pytest.mark.req("PLAT.tls-serving")
def test_bad_tls_settings_are_one_line_naming_what_to_fix(certs) -> None:
    """Each bad input is a ``TLSSettingsError`` of one line that names the variable to fix and holds no key; the
    good settings pass (HTTP when none is set)."""
    for case, (chosen, expected) in BAD.items():
        with pytest.raises(TLSSettingsError) as bad:
            tls_files(_settings(certs, **chosen))
        said = str(bad.value)
        assert expected in said, (case, said)
        assert len(said.splitlines()) == 1, (case, said)
        assert "PRIVATE KEY" not in said, (case, said)
    good = tls_files(_settings(certs, tls_certificate="cert", tls_key="key"))
    assert good is not None
    assert (good.certificate, good.key) == (certs["cert"], certs["key"])
    assert tls_files(ServingSettings()) is None


@pytest.mark.req("PLAT.tls-serving")
def test_python_m_serving_exits_before_granian_on_bad_tls_settings(certs, tmp_path: Path) -> None:
    """`python -m serving` with a certificate and an encrypted key (which Granian's worker would panic on): one line
    on stderr, exit 2, no traceback, nothing listening on its port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env |= {
        "PYTHONPATH": str(REPO),
        "TESSERA_SETTINGS_FILE": str(tmp_path / "none.json"),
        "TESSERA_CATALOG_DSN": "host=127.0.0.1 port=1 dbname=tessera",
        "TESSERA_SERVING__PORT": str(port),
        "TESSERA_SERVING__TLS_CERTIFICATE": str(certs["cert"]),
        "TESSERA_SERVING__TLS_KEY": str(certs["encrypted_key"]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "serving"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "is encrypted" in done.stderr
    assert "Traceback" not in done.stderr
    assert not port_in_use(port)
