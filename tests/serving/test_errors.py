"""Every error case of the prediction API: its status, a message, and never a traceback."""

from __future__ import annotations

import pytest

from shardctl.process import free_port
from tests.serving.conftest import Service, entity_id, service_env

BAD_BODIES = [
    ("malformed json", b'{"entity_id": '),
    ("not an object", b"[1, 2]"),
    ("id is a number", b'{"entity_id": 123}'),
    ("ids are numbers", b'{"entity_ids": [1, 2]}'),
    ("empty id", b'{"entity_id": ""}'),
    ("empty batch", b'{"entity_ids": []}'),
    ("neither field", b"{}"),
    ("both fields", b'{"entity_id": "a", "entity_ids": ["b"]}'),
    ("unknown field", b'{"entity": "a"}'),
]


def _no_traceback(response) -> None:
    assert "Traceback" not in response.text
    assert 'File "' not in response.text


@pytest.mark.req("JTBD-02.errors")
def test_unknown_entity_is_404_with_its_name(service):
    response = service.client.post("/v1/predictions", json={"entity_id": "nobody-here"})
    assert response.status_code == 404
    assert "nobody-here" in response.json()["detail"]
    _no_traceback(response)
    batch = service.client.post("/v1/predictions", json={"entity_ids": [entity_id(1), "nobody-here"]}).json()
    assert [item["status"] for item in batch["items"]] == [200, 404]
    assert "nobody-here" in batch["items"][1]["error"]


@pytest.mark.req("JTBD-02.errors")
@pytest.mark.parametrize(("case", "body"), BAD_BODIES, ids=[c for c, _ in BAD_BODIES])
def test_bad_body_is_422_with_a_message(service, case, body):
    response = service.client.post("/v1/predictions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, (case, response.status_code, response.text)
    assert response.json()["detail"]
    _no_traceback(response)


@pytest.mark.req("JTBD-02.errors")
def test_oversized_batch_is_422_naming_the_limit(service):
    response = service.client.post("/v1/predictions", json={"entity_ids": [f"e{i}" for i in range(151)]})
    assert response.status_code == 422
    assert "150" in response.json()["detail"]
    at_limit = service.client.post("/v1/predictions", json={"entity_ids": [f"e{i}" for i in range(150)]})
    assert at_limit.status_code == 200


@pytest.mark.req("JTBD-02.errors")
def test_no_promoted_model_is_503_with_a_message(serving_stack, own_redis, models, tmp_path):
    """A service whose model name has no promoted version: predict and model info 503, not ready, still live."""
    _, settings = serving_stack
    port = free_port()
    env = service_env(settings, own_redis.url, port, TESSERA_MODEL_NAME="never_promoted")
    svc = Service(env, port, tmp_path / "serving.log")
    try:
        svc.wait_ready("/healthz")
        response = svc.client.post("/v1/predictions", json={"entity_id": entity_id(1)})
        assert response.status_code == 503
        assert "never_promoted" in response.json()["detail"]
        _no_traceback(response)
        assert svc.client.get("/v1/models/current").status_code == 503
        ready = svc.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["detail"] == "no model promoted"
    finally:
        svc.stop()
