"""etcd, Patroni's DCS, through its v3 JSON gateway (no etcdctl: passwords travel in request bodies, never on a
command line): turning its authentication on for Patroni (``root``, and ``patroni`` with read-write on Patroni's
namespace only), logging in, and forgetting a Patroni cluster's keys. Used by the local HA stack
(``shardctl.stack.ha``) and by ``shardctl roles etcd`` on a deployment's etcd (Kubernetes: the tessera-etcd-auth
Job)."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from shardctl.errors import ControlError

PATRONI_USER = "patroni"


class EtcdAuthError(ControlError, RuntimeError):
    """etcd refused a step of its authentication set-up; the message names the step, never a password."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _prefix_range(prefix: str) -> tuple[str, str]:
    """``key`` and ``range_end`` (base64) of every key under ``prefix``."""
    raw = prefix.encode()
    return _b64(raw), _b64(raw[:-1] + bytes([raw[-1] + 1]))


def post(etcd_url: str, path: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    """POST to etcd's v3 JSON gateway; (HTTP status, answer). The body may hold a password: never logged."""
    headers = {"Content-Type": "application/json", **({"Authorization": token} if token else {})}
    request = urllib.request.Request(f"{etcd_url}{path}", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


def authenticate(etcd_url: str, user: str, password: str) -> str | None:
    """A token for ``user``; None while etcd's authentication is not enabled."""
    status, answer = post(etcd_url, "/v3/auth/authenticate", {"name": user, "password": password})
    if status == 200 and answer.get("token"):
        return str(answer["token"])
    if "not enabled" in str(answer.get("error", answer.get("message", ""))):
        return None
    raise EtcdAuthError(f"etcd refused {user}'s login (HTTP {status}: {answer.get('message', '')})")


def enable_auth(etcd_url: str, root_password: str, patroni_password: str, namespace: str = "/tessera/") -> None:
    """Turn on etcd's v3 authentication (idempotent): ``root``, and ``patroni`` with read-write on
    ``namespace`` only. After this every request needs a token; anonymous ones are refused."""
    if authenticate(etcd_url, "root", root_password) is not None:
        return  # already on (a restarted stack): the users are in etcd's data
    key, range_end = _prefix_range(namespace)
    steps = [
        ("/v3/auth/role/add", {"name": "root"}),
        ("/v3/auth/user/add", {"name": "root", "password": root_password}),
        ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
        ("/v3/auth/role/add", {"name": "patroni"}),
        (
            "/v3/auth/role/grant",
            {"name": "patroni", "perm": {"permType": "READWRITE", "key": key, "range_end": range_end}},
        ),
        ("/v3/auth/user/add", {"name": PATRONI_USER, "password": patroni_password}),
        ("/v3/auth/user/grant", {"user": PATRONI_USER, "role": "patroni"}),
        ("/v3/auth/enable", {}),
    ]
    for path, body in steps:
        status, answer = post(etcd_url, path, body)
        if status != 200 and "already exists" not in str(answer.get("message", "")):
            raise EtcdAuthError(f"etcd refused {path} (HTTP {status}: {answer.get('message', '')})")


def enable_auth_when_up(
    etcd_url: str,
    root_password: str,
    patroni_password: str,
    namespace: str,
    wait_seconds: float,
    on_retry: Callable[[str], None] = lambda why: None,
) -> None:
    """``enable_auth`` once etcd answers with a quorum: a deployment starts etcd, Patroni and this step together,
    so an unreachable etcd or a refusal (no leader yet) is retried until ``wait_seconds`` have passed, with
    ``on_retry`` told why (at most every 10 s). Then the last refusal is raised."""
    deadline = time.monotonic() + wait_seconds
    told = 0.0
    while True:
        try:
            enable_auth(etcd_url, root_password, patroni_password, namespace)
            return
        except (EtcdAuthError, OSError) as exc:
            why = str(exc) if isinstance(exc, EtcdAuthError) else f"etcd at {etcd_url} does not answer ({exc})"
            if time.monotonic() >= deadline:
                raise EtcdAuthError(f"{why}; gave up after {wait_seconds:.0f} s") from None
            if time.monotonic() - told >= 10:
                on_retry(why)
                told = time.monotonic()
            time.sleep(1)


def forget_scope(etcd_url: str, scope: str, namespace: str = "/tessera/", root_password: str | None = None) -> None:
    """Delete a Patroni cluster's keys (leader, members, initialize, config) from etcd, through its v3 JSON
    gateway, as ``root`` when a password is given: a cluster created later under the same scope then
    bootstraps instead of waiting to join the old one. Harmless when the keys are gone already."""
    token = authenticate(etcd_url, "root", root_password) if root_password is not None else None
    key, range_end = _prefix_range(f"{namespace}{scope}/")
    status, answer = post(etcd_url, "/v3/kv/deleterange", {"key": key, "range_end": range_end}, token)
    if status != 200:
        raise OSError(f"etcd refused to forget {scope} (HTTP {status}: {answer.get('message', '')})")
