"""Run k8s/generate-secrets.sh against a stand-in kubectl that records every command line and every manifest it
is given on stdin: the Secrets a fresh install creates, and proof of what a `ps` would have shown."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.k8s.render import K8S

STAND_IN = """#!/usr/bin/env bash
# A cluster with nothing in it: `get` finds nothing; `apply -f -` records the manifest from stdin.
printf '%s\\0' "$@" >> "$RECORD/argv"; printf '\\n' >> "$RECORD/argv"
case " $* " in
  *" get "*) exit 1 ;;
  *" apply -f - "*|*" apply -f -") cat >> "$RECORD/stdin"; printf '\\n---\\n' >> "$RECORD/stdin" ;;
esac
"""


@dataclass
class Generated:
    secrets: dict[str, dict[str, str]]  # name -> key -> value
    command_lines: list[list[str]]  # every kubectl invocation's argv


def generate_secrets(folder: Path, script: Path = K8S / "generate-secrets.sh") -> Generated:
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "kubectl").write_text(STAND_IN)
    (bin_dir / "kubectl").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(folder)}
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True)
    lines = (folder / "argv").read_text().splitlines()
    argvs = [line.split("\0")[:-1] for line in lines if line]
    docs = [d for d in yaml.safe_load_all((folder / "stdin").read_text()) if d] if (folder / "stdin").exists() else []
    secrets = {d["metadata"]["name"]: dict(d["stringData"]) for d in docs if d["kind"] == "Secret"}
    return Generated(secrets, argvs)
