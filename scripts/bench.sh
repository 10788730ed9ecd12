#!/usr/bin/env bash
# The benchmarks: sets up everything on a fresh machine (PostgreSQL included, for the callback
# intake figures), then runs benchmarks/run.py. Arguments go to it (e.g. --quick, --only goodput).
set -euo pipefail
export KALEYRA_SETUP_POSTGRES=1
# shellcheck source=setup.sh
. "$(dirname "$0")/setup.sh"
trap stop_postgres EXIT
python benchmarks/run.py "$@"
