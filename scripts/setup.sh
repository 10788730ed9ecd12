# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/demo.sh: installs everything on a fresh machine.
#   - a virtualenv in .venv with the provider (editable), its test extras and the simulator
#   - with KALEYRA_SETUP_POSTGRES=1: a throwaway PostgreSQL server for the store tests, Redis and Chromium
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

# apt-get as root, waiting (up to 10 minutes) while another install holds the package manager's lock
# instead of failing with exit 100: DPkg::Lock::Timeout covers dpkg's lock, the loop the lists lock.
apt_get() {
  local as_root=() err waited=0
  [ "$(id -u)" = 0 ] || as_root=(sudo)
  err="$(mktemp)"
  until "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@" 2>"$err"; do
    if ! grep -qE "Could not get lock|Unable to lock|is held by process" "$err" || [ "$waited" -ge 600 ]; then
      cat "$err" >&2 && rm -f "$err" && return 1
    fi
    [ "$waited" = 0 ] && echo "==> waiting for another package install to finish" >&2
    sleep 5 && waited=$((waited + 5))
  done
  rm -f "$err"
}

start_postgres() {
  local port="${KALEYRA_PG_PORT:-55432}"
  local bindir
  bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$bindir" ]; then
    echo "==> installing PostgreSQL"
    apt_get update -qq
    apt_get install -y -qq postgresql >/dev/null
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
    KALEYRA_PG_STOP=("${run_as[@]}" "$bindir/pg_ctl" -D "$data" -m fast stop)  # we started it
  fi
  export KALEYRA_TEST_POSTGRES_URL="postgresql+psycopg://kaleyra@127.0.0.1:$port/kaleyra_test"
}

# The CeleryExecutor end-to-end test starts its own Redis broker: Debian's redis-server.
install_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "==> installing redis-server"
    apt_get update -qq
    apt_get install -y -qq redis-server >/dev/null
  fi
}

# The report's browser test renders the preflight report with Debian's headless Chromium.
install_chromium() {
  if ! command -v chromium >/dev/null 2>&1; then
    echo "==> installing chromium"
    apt_get update -qq
    apt_get install -y -qq chromium >/dev/null
  fi
}

# The PostgreSQL server this shell started (none if it was already running), stopped on exit unless
# KALEYRA_KEEP_POSTGRES=1 (a developer rerunning the tests keeps it; the next run reuses it).
KALEYRA_PG_STOP=()
stop_postgres() {
  if [ "${#KALEYRA_PG_STOP[@]}" -gt 0 ] && [ "${KALEYRA_KEEP_POSTGRES:-0}" != 1 ]; then
    echo "==> stopping the PostgreSQL server started for this run"
    "${KALEYRA_PG_STOP[@]}" >/dev/null || true
  fi
}

if [ "${KALEYRA_SETUP_POSTGRES:-0}" = 1 ]; then
  start_postgres
  install_redis
  install_chromium
fi
