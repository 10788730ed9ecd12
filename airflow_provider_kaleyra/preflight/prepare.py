"""Step 1 of a preflight: read the audience once, normalize every row once (``work/rows.csv``: every
audience row, then its E.164 number and why it is invalid, so the channel step does not normalize again),
write each shard's distinct valid numbers, de-duplicated one :class:`~.files.Partitions` part at a time."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache, lru_cache
from itertools import islice

import phonenumbers
from airflow.sdk import ObjectStoragePath

from airflow_provider_kaleyra.numbers.audience import column_index, open_audience  # the one reader
from airflow_provider_kaleyra.numbers.masking import mask
from airflow_provider_kaleyra.numbers.normalize import DistinctNumbers, normalize, preclean
from airflow_provider_kaleyra.preflight import files
from airflow_provider_kaleyra.preflight.records import Counts, NationalRows, PreparedRun, Shard
from airflow_provider_kaleyra.preflight.sample import generate_audience_rows
from airflow_provider_kaleyra.rcs.batching import shard_bounds
from airflow_provider_kaleyra.utils.storage import as_path

EXAMPLES = 3
WARN_RATIO = 0.05  # more rows than this read with the default region: say so in the task log
UNKNOWN_COUNTRY = "unknown country in the region column"
# Names CRM exports use that are not the CLDR English names
_ALIASES = {"usa": "US", "united states of america": "US", "uk": "GB", "great britain": "GB", "uae": "AE"}


@cache
def _region_by_name() -> dict[str, str]:
    from babel import Locale  # a dependency of the Airflow task SDK; CLDR's English country names

    names = {name.casefold(): code for code, name in Locale("en").territories.items() if len(code) == 2}
    return {**names, **_ALIASES}


@lru_cache(maxsize=1024)  # a country column holds few values; a wrong column, many
def region_for(field: str) -> str | None:
    """The ISO region a CRM export's country field names (an ISO code, an English name or a calling
    code), or ``None`` when it names none phonenumbers knows."""
    text = field.strip()
    if text.lstrip("+").isdigit():
        region = phonenumbers.region_code_for_country_code(int(text.lstrip("+")))
        return None if region == phonenumbers.UNKNOWN_REGION else region
    region = text.upper() if len(text) == 2 else _region_by_name().get(" ".join(text.casefold().split()))
    return region if region in phonenumbers.SUPPORTED_REGIONS else None


def write_sample_audience(path: ObjectStoragePath, size: int, seed: int, column: str = "phone") -> int:
    """A deterministic sample audience (customer_id, phone, segment) as a CSV; its rows."""
    return files.write_csv(path, ("customer_id", column, "segment"), generate_audience_rows(size, seed))


class _Reader:
    """Reads each row's number with its own region (the region column) or the default."""

    def __init__(self, region: str | None) -> None:
        self.region = region
        self.national = NationalRows(default_region=region, default_rows=0, by_region={}, examples=[])

    def read(self, raw: str, country: str, problem: str | None = None) -> tuple[str | None, str | None]:
        """``problem``: why the reader refused the line unread (it is then invalid with that reason)."""
        region = region_for(country) if country.strip() else self.region
        e164, reason = (None, problem) if problem else normalize(raw, region)
        if e164 is None and region is None and country.strip() and not problem:
            reason = UNKNOWN_COUNTRY
        elif e164 and region and isinstance(cleaned := preclean(raw, region), tuple) and cleaned[1]:
            by_region = self.national["by_region"]
            by_region[region] = by_region.get(region, 0) + 1
            if not country.strip():
                self.national["default_rows"] += 1
                if len(self.national["examples"]) < EXAMPLES:
                    self.national["examples"].append(f"{mask(raw.strip())} -> {mask(e164)}")
        return e164, reason


def _deduplicate(parts: files.Partitions) -> int:
    """Each part keeps the first of each of its numbers, in order; the count of distinct numbers."""
    distinct = 0
    for path in parts.written():
        with open(path, encoding="utf-8") as fh:
            numbers = dict.fromkeys(fh.read().split())
        with open(path, "w", encoding="utf-8") as fh:
            fh.writelines(f"{n}\n" for n in numbers)
        distinct += len(numbers)
    return distinct


def _numbers(parts: files.Partitions) -> Iterator[str]:
    for path in parts.paths:
        with open(path, encoding="utf-8") as fh:
            yield from (line[:-1] for line in fh)


def prepare_audience(
    audience: str | ObjectStoragePath,
    run_dir: str | ObjectStoragePath,
    *,
    column: str,
    region: str | None,
    shard_count: int,
    storage_conn_id: str | None = None,
    region_column: str | None = None,
) -> PreparedRun:
    """Normalize and de-duplicate ``audience``; returns the counts (no number) and the shard plan.

    :param region: ISO country of numbers without a country code (``None``: they are invalid).
    :param region_column: a column naming each row's country (:func:`region_for`), used instead of ``region``.
    :raises ValueError: the audience is empty or has no ``column`` (or ``region_column``).
    :raises FileNotFoundError: the audience is not there.
    """
    source = as_path(audience, storage_conn_id)
    folder = as_path(run_dir, storage_conn_id)
    if not source.exists():
        raise FileNotFoundError(
            f"audience not found: {source} (the preflight's `audience`, DAG param audience_location; "
            "when tasks run on several hosts it must be on storage every worker shares, e.g. s3://)"
        )
    try:  # a CSV by contract (.csv.gz decompressed); every line one row, the same reasons as the operators'
        audience = open_audience(source, column=column, fmt="csv", keep_columns=True)
    except ValueError as exc:
        raise ValueError(f"{exc} (the preflight's `column`, DAG param phone_column)") from None
    header = audience.header or []
    try:
        country = column_index(header, region_column, source) if region_column else None
    except ValueError as exc:
        raise ValueError(f"{exc} (the preflight's `region_column`)") from None
    width = len(header)
    reader, tally = _Reader(region), DistinctNumbers()  # (the tally keeps no number: they go to parts)
    with files.Partitions("kaleyra-prepare-") as parts, files.CsvWriter() as out:
        out.open("rows", folder / files.ROWS, [*header, files.E164, files.INVALID_REASON])
        for block in audience.blocks():
            e164s: list[str | None] = []
            reasons: list[str | None] = []
            problems = block.problems or [None] * len(block.raws)
            for record, raw, problem in zip(block.records or (), block.raws, problems):
                record = (record + [""] * width)[:width] if len(record) != width else record
                e164, reason = reader.read(raw, record[country] if country is not None else "", problem)
                if e164:
                    parts.handles[parts.index(e164)].write(e164 + "\n")
                out.write("rows", [*record, e164 or "", reason or ""])
                e164s.append(e164)
                reasons.append(reason)
            tally.count(e164s, reasons)
        distinct = _deduplicate(parts)
        numbers = _numbers(parts)
        shards: list[Shard] = []
        for i, (start, stop) in enumerate(shard_bounds(distinct, shard_count) if distinct else []):
            path = folder / files.SHARD_NUMBERS.format(i)
            files.write_csv(path, (files.E164,), ([n] for n in islice(numbers, stop - start)))
            output = str(folder / files.SHARD_OUTPUT.format(i))
            shards.append(Shard(audience=str(path), output=output, storage_conn_id=storage_conn_id))
    duplicates = tally.inputs - tally.invalid - distinct
    return PreparedRun(
        run_dir=str(folder),
        storage_conn_id=storage_conn_id,
        audience=str(source),
        counts=Counts(rows=tally.inputs, invalid=tally.invalid, duplicates=duplicates, distinct=distinct),
        invalid_reasons=dict(tally.reasons.most_common()),
        national=reader.national,
        shards=shards,
    )


def default_region_warning(prepared: PreparedRun) -> str | None:
    """What the task log says when many rows were read with the default region (masked examples)."""
    rows, national = prepared["counts"]["rows"], prepared["national"]
    if not rows or national["default_rows"] <= WARN_RATIO * rows:
        return None
    return (
        f"{national['default_rows']:,} of {rows:,} rows ({100 * national['default_rows'] / rows:.1f}%) have no "
        f"country code and were read as {national['default_region']} numbers (the connection's default_region), "
        f"e.g. {', '.join(national['examples'])}; if the audience mixes countries, give the preflight a region_column"
    )
