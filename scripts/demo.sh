#!/usr/bin/env bash
# The main job: the campaign preflight DAG, end to end, on the embedded Kaleyra simulator.
#   bash scripts/demo.sh              # 50,000 generated numbers
#   bash scripts/demo.sh --size 5000  # other options: python scripts/demo.py --help
# Sets everything up on a fresh machine (scripts/setup.sh), then runs the DAG once with dag.test()
# in a throwaway Airflow home under .demo/; nothing talks to Kaleyra.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# A throwaway Airflow: none of the caller's Airflow settings (database, connections) may leak in.
while read -r name; do unset "$name"; done < <(compgen -e | grep -E '^(AIRFLOW__|AIRFLOW_CONN_|AIRFLOW_VAR_)' || true)
export AIRFLOW_HOME="${KALEYRA_DEMO_HOME:-$ROOT/.demo/airflow-home}"
# shellcheck source=setup.sh
. "$ROOT/scripts/setup.sh"

export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/example_dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor

echo "==> preparing the Airflow metadata database in $AIRFLOW_HOME"
airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 \
  || { tail -n 40 "$AIRFLOW_HOME/db-migrate.log" >&2; exit 1; }

python "$ROOT/scripts/demo.py" "$@"
