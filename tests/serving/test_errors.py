"""Every error case of the prediction API: its status, an RFC 9457 problem detail with the message in
``detail``, and never a traceback. Every body a client can send is a 4xx, never a 5xx."""

from __future__ import annotations

import contextlib
import socket

import pytest

from shardctl.process import free_port
from testkit.serving import PredictionService
from tests.serving.conftest import entity_id, service_env

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

DEEP = 100_000
# Bodies meant to break the parser or the handler. Before the route decoded its body itself, the deep ones
# (Litestar's untyped decode: RecursionError) and the non-UTF-8 ones (UnicodeDecodeError) were answered 500.
# Sent as application/json.
HOSTILE_JSON = [
    ("empty", b""),
    ("whitespace only", b" \n\t "),
    ("null", b"null"),
    ("a string", b'"c1"'),
    ("a number", b"42"),
    ("true", b"true"),
    ("deep arrays as the id", b'{"entity_id": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
    ("deep arrays in the batch", b'{"entity_ids": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
    ("deep objects at the top", b'{"a": ' * DEEP + b"1" + b"}" * DEEP),
    ("deep objects as the id", b'{"entity_id": ' + b'{"a": ' * DEEP + b"1" + b"}" * (DEEP + 1)),
    ("deep arrays at the top", b"[" * DEEP + b"]" * DEEP),
    ("id is true", b'{"entity_id": true}'),
    ("id is a float", b'{"entity_id": 1.5}'),
    ("id is an object", b'{"entity_id": {"id": "c1"}}'),
    ("id is a list", b'{"entity_id": ["c1"]}'),
    ("ids is a string", b'{"entity_ids": "c1"}'),
    ("ids is an object", b'{"entity_ids": {"0": "c1"}}'),
    ("ids hold null", b'{"entity_ids": [null]}'),
    ("ids hold objects", b'{"entity_ids": [{"id": "c1"}]}'),
    ("ids hold lists", b'{"entity_ids": [["c1"]]}'),
    ("ids hold an empty id", b'{"entity_ids": ["c1", ""]}'),
    ("id too long", b'{"entity_id": "' + b"x" * 257 + b'"}'),
    ("id with NUL", b'{"entity_id": "a\\u0000b"}'),
    ("huge integer", b'{"entity_id": 1' + b"0" * 5000 + b"}"),
    ("huge exponent", b'{"entity_id": 1e999999}'),
    ("huge negative", b'{"entity_ids": [-1e999999]}'),
    ("invalid UTF-8", b'{"entity_id": "\xff\xfe"}'),
    ("UTF-16", '{"entity_id": "c1"}'.encode("utf-16")),
    ("UTF-8 BOM", b'\xef\xbb\xbf{"entity_id": "c1"}'),
    ("lone surrogate escape", b'{"entity_id": "\\ud800"}'),
    ("trailing garbage", b'{"entity_id": "c1"} {}'),
    ("duplicate keys, both fields", b'{"entity_id": "a", "entity_id": "b", "entity_ids": ["c"]}'),
    ("huge array", b'{"entity_ids": [' + b",".join([b'"e"'] * 200_000) + b"]}"),
]
# Other encodings and content types: (case, body, content type or None).
HOSTILE_OTHER = [
    (
        "latin-1 named as its charset",
        '{"entity_id": "caf\u00e9"}'.encode("latin-1"),
        "application/json; charset=latin-1",
    ),
    ("form encoded", b"entity_id=c1", "application/x-www-form-urlencoded"),
    (
        "multipart",
        b'--b\r\nContent-Disposition: form-data; name="entity_id"\r\n\r\nc1\r\n--b--\r\n',
        "multipart/form-data; boundary=b",
    ),
    ("xml", b"<entity_id>c1</entity_id>", "application/xml"),
    ("binary", bytes(range(256)), "application/octet-stream"),
    ("no content type", b"entity_id", None),
]
HOSTILE_BODIES = [(case, body, "application/json") for case, body in HOSTILE_JSON] + HOSTILE_OTHER


def _no_traceback(response) -> None:
    assert "Traceback" not in response.text
    assert 'File "' not in response.text


def _problem(response, status: int) -> dict:
    """The answer is an RFC 9457 problem detail of ``status`` with a message, and no traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    _no_traceback(response)
    return body


@pytest.mark.req("JTBD-02.errors")
def test_unknown_entity_is_404_with_its_name(service):
    response = service.client.post("/v1/predictions", json={"entity_id": "nobody-here"})
    assert "nobody-here" in _problem(response, 404)["detail"]
    batch = service.client.post("/v1/predictions", json={"entity_ids": [entity_id(1), "nobody-here"]}).json()
    assert [item["status"] for item in batch["items"]] == [200, 404]
    assert "nobody-here" in batch["items"][1]["error"]


@pytest.mark.req("JTBD-02.errors")
@pytest.mark.parametrize(("case", "body"), BAD_BODIES, ids=[c for c, _ in BAD_BODIES])
def test_bad_body_is_422_with_a_message(service, case, body):
    response = service.client.post("/v1/predictions", content=body, headers={"content-type": "application/json"})
    _problem(response, 422)


@pytest.mark.req("JTBD-02.hostile-bodies")
@pytest.mark.parametrize(("case", "body", "content_type"), HOSTILE_BODIES, ids=[c for c, _, _ in HOSTILE_BODIES])
def test_a_hostile_body_is_422_never_a_server_error(service, case, body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = service.client.post("/v1/predictions", content=body, headers=headers)
    _problem(response, 422)
    assert service.client.get("/healthz").status_code == 200  # the worker survived it


@pytest.mark.req("JTBD-02.hostile-bodies")
def test_a_body_over_the_size_limit_is_413(service):
    body = b'{"entity_ids": ["' + b"x" * (11 * 1024 * 1024) + b'"]}'
    response = service.client.post("/v1/predictions", content=body, headers={"content-type": "application/json"})
    _problem(response, 413)


@pytest.mark.req("JTBD-02.errors")
def test_oversized_batch_is_422_naming_the_limit(service):
    response = service.client.post("/v1/predictions", json={"entity_ids": [f"e{i}" for i in range(151)]})
    assert "150" in _problem(response, 422)["detail"]
    at_limit = service.client.post("/v1/predictions", json={"entity_ids": [f"e{i}" for i in range(150)]})
    assert at_limit.status_code == 200


@pytest.mark.req("JTBD-02.errors")
def test_no_promoted_model_is_503_with_a_message(serving_stack, own_redis, models, api_key, tmp_path):
    """A service whose model name has no promoted version: predict and model info 503, not ready, still live."""
    _, settings = serving_stack
    port = free_port()
    env = service_env(settings, own_redis.url, port, TESSERA_MODEL_NAME="never_promoted")
    svc = PredictionService(env, port, tmp_path / "serving.log", api_key=api_key)
    try:
        svc.wait_ready("/healthz")
        response = svc.client.post("/v1/predictions", json={"entity_id": entity_id(1)})
        assert "never_promoted" in _problem(response, 503)["detail"]
        assert response.headers["retry-after"] == "7"
        model = svc.client.get("/v1/models/current")
        assert "never_promoted" in _problem(model, 503)["detail"]
        assert model.headers["retry-after"] == "7"
        ready = svc.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["detail"] == "no model promoted"
    finally:
        svc.stop()


def _raw_exchange(port: int, request: bytes, *, close_write: bool = False) -> bytes:
    """Send ``request`` bytes as they are on a new connection; return all the server answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        if close_write:
            conn.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and len(answer.split(b"\r\n\r\n", 1)[1]) >= _content_length(answer):
                    break
        return answer


def _content_length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


HEAD = b"POST /v1/predictions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"


def _with_key(request: bytes, service) -> bytes:
    """``request`` with the service's API key after its request line (else it is a 401 before its body is read)."""
    line, _, rest = request.partition(b"\r\n")
    (name, value), *_ = service.auth_headers.items()
    return line + f"\r\n{name}: {value}\r\n".encode() + rest


BROKEN_FRAMING = [
    (
        "malformed chunk size",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + b'{"entity_id": "c"}' + b"\r\n0\r\n\r\n",
    ),
    ("chunk longer than its size", HEAD + b'Transfer-Encoding: chunked\r\n\r\n2\r\n{"entity_id": "c"}\r\n0\r\n\r\n'),
    ("body shorter than its Content-Length", HEAD + b'Content-Length: 200\r\n\r\n{"entity_id": "c'),
]


@pytest.mark.req("JTBD-02.errors")
@pytest.mark.parametrize(("case", "request_bytes"), BROKEN_FRAMING, ids=[c for c, _ in BROKEN_FRAMING])
def test_a_broken_body_framing_is_the_clients_error_never_a_5xx(service, case, request_bytes):
    """Granian reports a body that never arrives whole as a disconnect; the answer is a 400 problem detail (or
    a closed connection, if the server gives up on the framing first), never a 5xx, and the worker serves on."""
    server_errors = service.metric("tessera_serving_requests_total", status_code="500")
    answer = _raw_exchange(service.port, _with_key(request_bytes, service), close_write=True)
    if answer:
        status_line, _, rest = answer.partition(b"\r\n")
        status = int(status_line.split()[1])
        assert 400 <= status < 500, f"{case}: {answer[:300]!r}"
        assert b"application/problem+json" in rest.split(b"\r\n\r\n", 1)[0].lower(), answer[:300]
        assert b"body ended before it was complete" in rest, answer[:300]
    assert service.metric("tessera_serving_requests_total", status_code="500") == server_errors
    assert service.client.post("/v1/predictions", json={"entity_id": entity_id(1)}).status_code == 200


@pytest.mark.req("JTBD-02.errors")
def test_a_client_that_leaves_mid_body_costs_no_server_error_and_others_are_served(service):
    server_errors = service.metric("tessera_serving_requests_total", status_code="500")
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", service.port), timeout=10) as conn:
            conn.sendall(_with_key(HEAD, service) + b'Content-Length: 500\r\n\r\n{"entity_id": ')
    assert service.client.post("/v1/predictions", json={"entity_id": entity_id(2)}).status_code == 200
    assert service.metric("tessera_serving_requests_total", status_code="500") == server_errors
