#!/usr/bin/env bash
# The test command: sets up everything on a fresh machine, then runs the whole suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k hook). Stops the PostgreSQL server it
# started when it ends (KALEYRA_KEEP_POSTGRES=1 keeps it running for the next run).
set -euo pipefail
export KALEYRA_SETUP_POSTGRES=1
# shellcheck source=setup.sh
. "$(dirname "$0")/setup.sh"
trap stop_postgres EXIT
echo "==> ruff (lint and format)"
ruff check .
ruff format --check .
python -m pytest -q -p no:cacheprovider "$@"
