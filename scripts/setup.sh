# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/demo.sh: installs everything on a fresh machine.
#   - a virtualenv in .venv with the provider (editable), its test extras and the simulator
#   - with KALEYRA_SETUP_POSTGRES=1: a throwaway PostgreSQL server for the store tests
# Safe to run again: each step is skipped when already done.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "Python 3.11+ is required (found $("$PYTHON" --version))" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

stamp=".venv/.installed-$(cat pyproject.toml simulator/pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "==> installing the provider and its test dependencies (Airflow included)"
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -e ".[test]" -e ./simulator  # the simulator: a test-only package
  touch "$stamp"
fi

export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/.airflow-home}"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
mkdir -p "$AIRFLOW_HOME"

start_postgres() {
  local port="${KALEYRA_PG_PORT:-55432}"
  local bindir
  bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$bindir" ]; then
    echo "==> installing PostgreSQL"
    if [ "$(id -u)" = 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
    "${apt_get[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq postgresql >/dev/null
    bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  fi
  local data="/tmp/kaleyra-pg-$port"
  local run_as=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --create-home postgres
    run_as=(runuser -u postgres --)
  fi
  if ! "${run_as[@]}" "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    echo "==> starting PostgreSQL on 127.0.0.1:$port"
    rm -rf "$data" && mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres "$data"
    "${run_as[@]}" "$bindir/initdb" -D "$data" -U kaleyra --auth=trust >/dev/null
    "${run_as[@]}" "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w \
      -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    "${run_as[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U kaleyra kaleyra_test
  fi
  export KALEYRA_TEST_POSTGRES_URL="postgresql+psycopg://kaleyra@127.0.0.1:$port/kaleyra_test"
}

# The CeleryExecutor end-to-end test starts its own Redis broker: Debian's redis-server.
install_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "==> installing redis-server"
    if [ "$(id -u)" = 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
    "${apt_get[@]}" update -qq
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq redis-server >/dev/null
  fi
}

if [ "${KALEYRA_SETUP_POSTGRES:-0}" = 1 ]; then
  start_postgres
  install_redis
fi
