"""API keys and per-key rate limits against the real service (Granian, the catalog's key table, Redis), and
`shardctl keys` against the same catalog. Shares test_api.py's service (tests/scheduling.py groups them)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

import serving.metrics  # noqa: F401  # registers the limiter's counter in this process
from serving.app import create_app
from serving.rate_limit import RateLimiter
from serving.runtime import open_gate
from serving.security import ApiKeyAuthentication
from serving.settings import ServingSettings
from shardctl.cli import main
from shardctl.process import free_port
from shardctl.redis_acl import SERVING_USER
from shardctl.settings import TesseraSettings
from shardctl.store.api_keys import SCOPES, ApiKey, Rate
from testkit.serving import bearer, create_api_key
from tests.serving.conftest import N_ENTITIES, entity_id, wait_for

ALL_IDS = [entity_id(i) for i in range(N_ENTITIES)]
PATH = "/v1/predictions"
JSON = {"content-type": "application/json"}
REFRESH_BOUND = 1.0  # TESSERA_SERVING__AUTH_REFRESH_SECONDS, the default the test service runs with
SLACK = 2.0  # a busy 2-core machine's scheduling on top of the bound (the measured time is in the message)
TOKEN = re.compile(r"^tsr_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")
REPO = Path(__file__).resolve().parents[2]


def _problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["detail"]
    assert "score" not in body
    return body


def _key(serving_stack, name: str, scopes=SCOPES, rate: str | None = "1000000/s") -> str:
    _, settings = serving_stack
    return create_api_key(settings.catalog_dsn or "", name, scopes=scopes, rate=rate)


def _loaded(service, token: str, path: str = "/v1/models/current") -> None:
    """Wait until the service's key table has ``token`` (a new key is taken up within the refresh interval)."""

    def known() -> bool:
        return httpx.get(service.url + path, headers=bearer(token), timeout=5).status_code != 401

    assert wait_for(known, timeout=REFRESH_BOUND + 10), "the service never took up the new key"


def _cli(serving_stack, *args: str, stdin: str | None = None):
    """`shardctl keys ...` as an operator of the serving tests' stack runs it (its data dir: its credentials)."""
    stack, settings = serving_stack
    env = {"TESSERA_CATALOG_DSN": settings.catalog_dsn, "TESSERA_DATA_DIR": str(stack.data_dir)}
    return CliRunner().invoke(main, ["keys", *args], env=env, input=stdin)


@pytest.mark.req("JTBD-02.auth")
def test_no_key_a_wrong_key_or_a_missing_scope_is_refused_as_a_problem_detail(service, serving_stack):
    predict_only = _key(serving_stack, "predict-only", scopes=("predict",))
    models_only = _key(serving_stack, "models-only", scopes=("models:read",))
    _loaded(service, models_only)
    _loaded(service, predict_only, "/metrics")
    routes = [
        ("POST", PATH, {"entity_id": ALL_IDS[1]}),
        ("POST", PATH, {"entity_ids": ALL_IDS[:3]}),
        ("GET", "/v1/models/current", None),
        ("GET", "/metrics", None),
    ]
    forged = predict_only[:-1] + ("A" if predict_only[-1] != "A" else "B")  # the right id, a wrong secret
    wrong = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer tsr_000000000000_" + "x" * 43},
        {"Authorization": f"Bearer {forged}"},
        {"Authorization": f"Basic {predict_only}"},
        {"Authorization": f"Bearer {predict_only.replace('tsr_', 'abc_', 1)}"},
        {"X-API-Key": predict_only},  # not a header the service reads
    ]
    with httpx.Client(base_url=service.url, timeout=10) as http:
        for method, path, body in routes:
            for headers in wrong:
                response = http.request(method, path, json=body, headers=headers)
                assert "API key" in _problem(response, 401)["detail"], (method, path, headers)
                assert response.headers["www-authenticate"].startswith("Bearer")
        # Open without a key: the probes and the schema.
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
        assert http.get("/schema/openapi.json").status_code == 200
        # A key without the route's scope: 403, whichever path the request takes (single, batch, models, metrics).
        models_h, predict_h = bearer(models_only), bearer(predict_only)
        assert "predict" in _problem(http.post(PATH, json={"entity_id": ALL_IDS[1]}, headers=models_h), 403)["detail"]
        _problem(http.post(PATH, json={"entity_ids": ALL_IDS[:3]}, headers=models_h), 403)
        _problem(http.get("/metrics", headers=models_h), 403)
        assert "models:read" in _problem(http.get("/v1/models/current", headers=predict_h), 403)["detail"]
        assert http.get("/v1/models/current", headers=models_h).status_code == 200
        assert http.post(PATH, json={"entity_id": ALL_IDS[1]}, headers=predict_h).status_code == 200
        assert http.post(PATH, json={"entity_ids": ALL_IDS[:3]}, headers=predict_h).status_code == 200


@pytest.mark.req("JTBD-02.auth")
def test_the_fast_path_refuses_a_keyless_request_for_a_cached_entity(service, serving_stack):
    """A single prediction with a small Content-Length is the fast path's to answer; for a cached entity it would
    answer without touching Litestar. Without a key (or without the predict scope) it must not: the refusal is a
    problem detail, and the predictor is never asked (no cache lookup counted)."""
    body = json.dumps({"entity_id": ALL_IDS[21]}).encode()
    service.client.post(PATH, content=body, headers=JSON).raise_for_status()
    cached = service.client.post(PATH, content=body, headers=JSON)
    assert cached.status_code == 200
    assert cached.json()["cached"] is True
    no_predict = _key(serving_stack, "fast-path-no-predict", scopes=("models:read",))
    _loaded(service, no_predict)
    lookups = service.metric("tessera_cache_lookups_total")
    refused = service.metric("tessera_serving_requests_total", path=PATH, status_code="401")
    keyless = httpx.post(service.url + PATH, content=body, headers=JSON, timeout=10)
    assert keyless.request.headers["content-length"] == str(len(body))  # the fast path's kind of request
    _problem(keyless, 401)
    _problem(httpx.post(service.url + PATH, content=body, headers=JSON | bearer(no_predict), timeout=10), 403)
    assert service.metric("tessera_cache_lookups_total") == lookups  # the predictor was never asked
    assert service.metric("tessera_serving_requests_total", path=PATH, status_code="401") == refused + 1


@pytest.mark.req("JTBD-02.auth-revocation")
def test_a_revoked_key_is_refused_within_the_refresh_interval(service, serving_stack):
    token = _key(serving_stack, "to-revoke", scopes=("predict", "models:read"))
    _loaded(service, token)
    body = json.dumps({"entity_id": ALL_IDS[22]}).encode()
    with httpx.Client(base_url=service.url, timeout=10, headers=bearer(token)) as http:
        assert http.post(PATH, content=body, headers=JSON).status_code == 200  # fast path, then cached
        revoked = _cli(serving_stack, "revoke", token.split("_")[1], "--force")
        assert revoked.exit_code == 0, revoked.output
        started = time.monotonic()
        assert wait_for(lambda: http.post(PATH, content=body, headers=JSON).status_code == 401, REFRESH_BOUND + 30)
        took = time.monotonic() - started
        assert took <= REFRESH_BOUND + SLACK, f"refused {took:.2f} s after the revocation"
        _problem(http.get("/v1/models/current"), 401)
        _problem(http.post(PATH, json={"entity_ids": ALL_IDS[:2]}), 401)


@pytest.mark.req("JTBD-02.rate-limit")
def test_a_key_over_its_rate_limit_gets_429_with_retry_after(service, serving_stack):
    token = _key(serving_stack, "limited", scopes=("predict", "models:read"), rate="3/min")
    body = json.dumps({"entity_id": ALL_IDS[23]}).encode()
    statuses, limited = [], []
    with httpx.Client(base_url=service.url, timeout=10, headers=bearer(token)) as http:
        # The first answer that is not a 401 shows the service took the key up (and spent one of its 3 requests).
        first: list[int] = []

        def taken_up() -> bool:
            first.append(http.post(PATH, content=body, headers=JSON).status_code)
            return first[-1] != 401

        assert wait_for(taken_up, timeout=REFRESH_BOUND + 10)
        statuses.append(first[-1])
        for n in range(9):  # single predictions (the fast path), a batch and model info: one limit for the key
            if n % 3 == 1:
                response = http.post(PATH, json={"entity_ids": ALL_IDS[:2]})
            elif n % 3 == 2:
                response = http.get("/v1/models/current")
            else:
                response = http.post(PATH, content=body, headers=JSON)
            statuses.append(response.status_code)
            if response.status_code == 429:
                limited.append(response)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) <= 6, statuses  # 3 a minute: the run can straddle two windows, never three
    assert len(limited) >= 3, statuses
    for response in limited:
        assert "rate limit" in _problem(response, 429)["detail"]
        assert 1 <= int(response.headers["retry-after"]) <= 60
    fast_path = [r for r in limited if r.request.method == "POST" and b"entity_ids" not in r.request.content]
    assert fast_path, "no single prediction was refused: the fast path let the key through"
    assert service.client.post(PATH, json={"entity_id": ALL_IDS[23]}).status_code == 200  # other keys unaffected


@pytest.mark.req("JTBD-02.rate-limit")
def test_workers_share_a_keys_limit_in_redis_and_a_dead_redis_admits_unchecked(own_redis, serving_stack):
    """Two limiters on one Redis (two workers), logged in as serving's Redis user (limited to serving's prefix),
    admit exactly the key's limit between them; a limiter whose Redis does not answer admits every request and
    counts it (fail open: see serving/rate_limit.py)."""
    key = ApiKey(uuid.uuid4().hex[:12], "shared", frozenset({"predict"}), Rate(50, 3600), datetime.now(UTC))
    login = {"username": SERVING_USER, "password": serving_stack[0].layout.secrets.redis_password(SERVING_USER)}

    async def run() -> tuple[int, int]:
        workers = [RateLimiter(own_redis.url, Rate(1000, 1), **login) for _ in range(2)]
        dead = RateLimiter(f"redis://127.0.0.1:{free_port()}/0", Rate(1, 3600))
        try:
            admitted = [await workers[n % 2].admit(key) for n in range(200)].count(None)
            unchecked = [await dead.admit(key) for _ in range(5)].count(None)
        finally:
            for limiter in (*workers, dead):
                await limiter.close()
        return admitted, unchecked

    def counted() -> float:
        return REGISTRY.get_sample_value("tessera_rate_limit_unchecked_total") or 0.0

    before = counted()
    admitted, unchecked = asyncio.run(run())
    assert admitted == 50
    assert unchecked == 5
    assert counted() == before + 5


@pytest.mark.req("PLAT.api-keys")
@pytest.mark.req("JTBD-02.auth-secrets")
def test_keys_cli_shows_the_secret_once_stores_only_its_hash_and_revokes(service, serving_stack):
    _, settings = serving_stack
    created = _cli(serving_stack, "create", "cli-key", "--scope", "predict", "--scope", "metrics", "--rate-limit=50/s")
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert TOKEN.match(token), created.stdout  # stdout is the key alone: KEY="$(shardctl keys create ...)"
    assert "shown this once" in created.stderr
    key_id, secret = token.split("_")[1], token.split("_", 2)[2]
    with psycopg.connect(settings.catalog_dsn or "") as conn:
        digest, whole_row = conn.execute(
            "SELECT digest, row_to_json(k)::text FROM tessera_api_keys k WHERE key_id = %s", (key_id,)
        ).fetchone()
    assert bytes(digest) == hashlib.sha256(token.encode()).digest()
    assert secret not in whole_row
    assert token not in whole_row
    _loaded(service, token, "/metrics")
    assert service.client.post(PATH, json={"entity_id": ALL_IDS[2]}, headers=bearer(token)).status_code == 200
    as_json = _cli(serving_stack, "create", "cli-key-json", "--scope", "models:read", "--json")
    assert as_json.exit_code == 0, as_json.output
    second = json.loads(as_json.stdout)
    assert TOKEN.match(second["key"])
    assert second["scopes"] == ["models:read"]
    assert second["rate_limit"] is None
    outputs = []
    for args in (["list"], ["list", "--json"], ["list", "--all", "--json"]):
        listed = _cli(serving_stack, *args)
        assert listed.exit_code == 0, listed.output
        outputs.append(listed.output)
    listing = json.loads(outputs[1])["keys"]
    mine = next(k for k in listing if k["name"] == "cli-key")
    expected = {"key_id": key_id, "scopes": ["metrics", "predict"], "rate_limit": "50/s", "revoked_at": None}
    assert mine == mine | expected
    assert "cli-key" in outputs[0]
    assert "50/s" in outputs[0]
    kept = _cli(serving_stack, "revoke", "cli-key", stdin="n\n")  # asks first; no means nothing changes
    assert kept.exit_code == 1
    assert "Aborted" in kept.output
    revoked = _cli(serving_stack, "revoke", "cli-key", "--force", "--json")
    assert revoked.exit_code == 0, revoked.output
    assert json.loads(revoked.stdout)["revoked_at"]
    outputs.append(revoked.output)
    after = json.loads(_cli(serving_stack, "list", "--json").stdout)["keys"]
    assert "cli-key" not in {k["name"] for k in after}
    every = json.loads(_cli(serving_stack, "list", "--all", "--json").stdout)["keys"]
    assert next(k for k in every if k["key_id"] == key_id)["revoked_at"]
    for text in outputs:  # nothing but create ever prints a key, or a digest of one
        for shown in (token, secret, second["key"], second["key"].split("_", 2)[2], bytes(digest).hex()):
            assert shown not in text


@pytest.mark.req("PLAT.api-keys")
def test_keys_cli_bad_input_is_a_clear_message_and_a_non_zero_exit(serving_stack):
    _, settings = serving_stack
    assert _cli(serving_stack, "create", "twice").exit_code == 0

    def fails(message: str, *args: str, code: int = 1, env: dict | None = None) -> None:
        result = _cli(serving_stack, *args) if env is None else CliRunner().invoke(main, ["keys", *args], env=env)
        assert result.exit_code == code, (args, result.output)
        assert "Traceback" not in result.output
        assert message in result.output, (args, result.output)
        assert not result.stdout.strip(), result.stdout  # no key, no half-made output
        if code == 1:
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr

    fails("Invalid value for '--scope'", "create", "k1", "--scope", "admin", code=2)
    fails("give N/s, N/min or N/h", "create", "k2", "--rate-limit", "fast", code=2)
    fails("give N/s, N/min or N/h", "create", "k3", "--rate-limit", "0/s", code=2)
    fails("key name 'has space'", "create", "has space")
    fails("already named 'twice'", "create", "twice")
    fails("no active key is named 'nobody'", "revoke", "nobody", "--force")
    fails("Missing argument 'NAME'", "create", code=2)
    no_catalog = {"TESSERA_CATALOG_DSN": "", "TESSERA_SETTINGS_FILE": "/nonexistent/settings.json"}
    fails("no catalog DSN", "list", env=no_catalog)
    # The installed command, as a user runs it: the same one line on stderr.
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "shardctl"), "keys", "revoke", "nobody", "--force"],
        env={"TESSERA_CATALOG_DSN": settings.catalog_dsn or "", "PATH": "/usr/bin:/bin"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "Error: no active key is named 'nobody' (or has that id): see `shardctl keys list`"
    ]


@pytest.mark.req("JTBD-02.auth-secrets")
def test_no_key_reaches_the_service_log(service, serving_stack, api_key):
    """Keys good, forged and revoked go to the service; its log (everything it wrote since it started) holds none
    of them, nor a secret part of one."""
    revoked = _key(serving_stack, "log-scan")
    _loaded(service, revoked)
    assert _cli(serving_stack, "revoke", revoked.split("_")[1], "--force").exit_code == 0
    forged = api_key[:-4] + "AAAA"
    sent = [api_key, revoked, forged, "tsr_not_a_key"]
    with httpx.Client(base_url=service.url, timeout=10) as http:
        for token in sent:
            http.post(PATH, json={"entity_id": ALL_IDS[3]}, headers=bearer(token))
            http.post(PATH, json={"entity_ids": ALL_IDS[:2]}, headers=bearer(token))
            for path in ("/v1/models/current", "/metrics"):
                http.get(path, headers=bearer(token))
    log = service.log.read_text(errors="replace")
    for token in sent:
        assert token not in log
        if TOKEN.match(token):
            assert token.split("_", 2)[2] not in log


@pytest.mark.req("JTBD-02.auth")
def test_turning_keys_off_takes_an_explicit_setting_and_every_worker_says_so(monkeypatch, caplog):
    """On by default; ``TESSERA_SERVING__AUTH=false`` turns it off, and the worker's startup logs a warning."""
    monkeypatch.delenv("TESSERA_SERVING__AUTH", raising=False)
    assert ServingSettings().auth is True
    monkeypatch.setenv("TESSERA_SERVING__AUTH", "false")
    off = ServingSettings()
    assert off.auth is False
    with caplog.at_level(logging.WARNING, logger="serving.runtime"):
        assert asyncio.run(open_gate(TesseraSettings(), off, "host=unused", None)) is None  # type: ignore[arg-type]
    assert "AUTHENTICATION IS OFF" in caplog.text

    def checks_keys(serving: ServingSettings) -> bool:
        app = create_app(TesseraSettings(catalog_dsn="postgresql://unused"), serving)
        return any(getattr(m, "middleware", None) is ApiKeyAuthentication for m in app.middleware)

    assert not checks_keys(off)
    monkeypatch.delenv("TESSERA_SERVING__AUTH")
    assert checks_keys(ServingSettings())
