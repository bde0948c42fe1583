"""Run in a pod's network (``python -m tests.k8s.etcd_login`` with a JSON request on stdin, never in argv: it holds
passwords): what etcd answers an anonymous client, Patroni's own etcd3 client configured as Spilo configures it
(``etcd3`` from the container's env), that client's user outside Patroni's namespace, and root. Prints JSON."""

from __future__ import annotations

import json
import sys

from patroni.dcs import get_dcs

from shardctl.control.etcd import authenticate, post

SYSID = "7400000000000000001"


def main() -> None:
    asked = json.load(sys.stdin)
    url = f"http://{asked['etcd3']['hosts'][0]}"
    out: dict = {}
    status, answer = post(url, "/v3/kv/put", {"key": "L29wZW4=", "value": "eA=="})  # "/open" = "x"
    out["anonymous_put"] = [status, answer.get("message", answer.get("error", ""))]
    config = {"scope": asked["scope"], "name": asked["name"], "ttl": 20, "loop_wait": 5, "retry_timeout": 5}
    dcs = get_dcs({**config, "etcd3": dict(asked["etcd3"])})
    created = dcs.initialize(create_new=True, sysid=SYSID)  # etcd's transaction answer: "succeeded" when created
    out["patroni_initialize"] = bool(created.get("succeeded") if isinstance(created, dict) else created)
    out["patroni_reads_back"] = dcs.get_cluster().initialize == SYSID
    token = authenticate(url, asked["etcd3"]["username"], asked["etcd3"]["password"])
    status, answer = post(url, "/v3/kv/put", {"key": "L290aGVyL3g=", "value": "eA=="}, token)  # "/other/x"
    out["patroni_outside_its_namespace"] = [status, answer.get("message", answer.get("error", ""))]
    out["root_login"] = authenticate(url, "root", asked["root_password"]) is not None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
