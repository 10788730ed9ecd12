"""``python -m airflow_provider_kaleyra.callbacks``: the standalone callback receiver."""

from airflow_provider_kaleyra.callbacks.cli import main

raise SystemExit(main())
