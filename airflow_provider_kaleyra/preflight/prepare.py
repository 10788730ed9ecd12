"""Step 1 of a preflight: read the audience once, normalize every row once, plan the RCS shards.

Writes, under the run folder:

- ``work/rows.csv``: every audience row, all its columns, then its E.164 number (empty when invalid)
  and the reason it is invalid. The channel step reads this file instead of normalizing again.
- ``work/numbers.csv``: the distinct valid numbers in first-seen order, the input of the RCS shards
  (which are told the input is E.164 already, so nothing is parsed twice).

Memory holds the distinct numbers (:class:`~airflow_provider_kaleyra.numbers.normalize.DistinctNumbers`), never the rows.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_kaleyra.numbers.audience import open_audience  # the one audience reader
from airflow_provider_kaleyra.numbers.normalize import DistinctNumbers
from airflow_provider_kaleyra.preflight import files
from airflow_provider_kaleyra.rcs.batching import shard_bounds
from airflow_provider_kaleyra.utils.storage import as_path


def write_sample_audience(path: ObjectStoragePath, size: int, seed: int, column: str = "phone") -> int:
    """A deterministic sample audience (customer_id, phone, segment) as a CSV; its rows."""
    from airflow_provider_kaleyra.preflight.sample import generate_audience_rows

    return files.write_csv(path, ("customer_id", column, "segment"), generate_audience_rows(size, seed))


def prepare_audience(
    audience: str | ObjectStoragePath,
    run_dir: str | ObjectStoragePath,
    *,
    column: str,
    region: str | None,
    shard_count: int,
    storage_conn_id: str | None = None,
) -> dict[str, Any]:
    """Normalize and de-duplicate ``audience``; returns a summary (counts, no number) and the shard plan.

    :param region: ISO country for numbers written without a country code (the connection's
        ``default_region``); ``None``: such numbers are invalid.
    :raises ValueError: the audience is empty or has no ``column``.
    :raises FileNotFoundError: the audience is not there.
    """
    source = as_path(audience, storage_conn_id)
    folder = as_path(run_dir, storage_conn_id)
    if not source.exists():
        raise FileNotFoundError(
            f"audience not found: {source} (the preflight's `audience`, DAG param audience_location; "
            "when tasks run on several hosts it must be on storage every worker shares, e.g. s3://)"
        )
    distinct = DistinctNumbers(region)
    try:  # a CSV by contract (.csv.gz decompressed); every line one row, the same reasons as the operators'
        audience = open_audience(source, column=column, fmt="csv", keep_columns=True)
    except ValueError as exc:
        raise ValueError(f"{exc} (the preflight's `column`, DAG param phone_column)") from None
    header = audience.header or []
    width = len(header)
    with files.CsvWriter() as out:
        out.open("rows", folder / files.ROWS, [*header, files.E164, files.INVALID_REASON])
        for block in audience.blocks():
            for record, e164, reason in zip(
                block.records or (), *distinct.add_block(block.raws, block.problems)
            ):
                record = (record + [""] * width)[:width] if len(record) != width else record
                out.write("rows", [*record, e164 or "", reason or ""])
    numbers = folder / files.NUMBERS
    files.write_csv(numbers, (files.E164,), ((e164,) for e164 in distinct.numbers()))
    bounds = shard_bounds(len(distinct), shard_count) if distinct else []
    shards = [
        {
            "audience": str(numbers),
            "shard_index": i,
            "shard_count": len(bounds),
            "output": files.shard_output(folder, i),
        }
        for i in range(len(bounds))
    ]
    summary = {
        "run_dir": str(folder),
        "audience": str(source),
        "columns": header,
        "counts": {
            "rows": distinct.inputs,
            "invalid": distinct.invalid,
            "duplicates": distinct.duplicates,
            "distinct": len(distinct),
        },
        "invalid_reasons": dict(distinct.reasons.most_common()),
        "shards": len(shards),
    }
    return {"summary": summary, "shards": shards}
