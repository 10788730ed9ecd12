"""Input that users have: Excel's scientific notation, headerless and semicolon CSVs, gzipped audiences.

The bulk operator runs over real HTTP against ``hostile_server`` answering well, so what is
checked is what reaches Kaleyra (nothing, for a file that cannot be read) and what the
output says for every line. Error messages never show a whole phone number.
"""

from __future__ import annotations

import csv
import gzip
import re
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hostile_server import HostileServer, bulk_answer

from airflow_provider_kaleyra.client.api import INVALID, RCS_DISABLED, RCS_ENABLED
from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
from airflow_provider_kaleyra.numbers.audience import open_audience
from airflow_provider_kaleyra.numbers.normalize import SCIENTIFIC_NOTATION, normalize
from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator
from airflow_provider_kaleyra.utils.storage import as_path

ANSWERED = {RCS_ENABLED, RCS_DISABLED}
WHOLE_NUMBER = re.compile(r"\+?1?415555\d{4}")


@pytest.fixture
def server(use_connection: Callable[..., None]) -> Iterator[HostileServer]:
    """A server answering every lookup well, with ``kaleyra_default`` pointing at it."""
    with HostileServer(bulk_answer()) as hostile:
        use_connection(hostile.url, max_retries=1)
        yield hostile


def run(tmp_path: Any, audience: str, **kwargs: Any) -> list[dict[str, str]]:
    output = tmp_path / "out.csv"
    KaleyraRcsBulkLookupOperator(task_id="bulk", audience=audience, output=str(output), **kwargs).execute({})
    with output.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_excel_scientific_notation_is_invalid_not_another_number(server, tmp_path):
    cells = ["1.41555527E10", "4.15555268E9", "1,41555527E+10", "+14155552671", "(415) 555-2672"]
    audience = tmp_path / "audience.csv"
    audience.write_text("name,phone\n" + "".join(f'n{i},"{cell}"\n' for i, cell in enumerate(cells)))
    rows = run(tmp_path, str(audience))
    assert [row["status"] for row in rows[:3]] == [INVALID] * 3
    assert all(row["error"] == SCIENTIFIC_NOTATION and not row["e164"] for row in rows[:3])
    assert {row["status"] for row in rows[3:]} <= ANSWERED
    asked = " ".join(request.path for request in server.requests)
    assert "4155552710" not in asked and "4155552680" not in asked  # what the cells would have become
    # the same through the hook and the one normalizer
    results = list(KaleyraHook().lookup_rcs_many(cells))
    assert [r.status for r in results[:3]] == [INVALID] * 3
    assert normalize("4.15555268E9", "US").reason == SCIENTIFIC_NOTATION


def test_an_audience_without_a_header_row_fails_with_the_number_masked(server, tmp_path):
    audience = tmp_path / "audience.csv"
    audience.write_text("+14155552671\n+14155552672\n")
    with pytest.raises(ValueError, match="line 1 holds numbers") as raised:
        run(tmp_path, str(audience))
    message = str(raised.value)
    assert "+1415*****71" in message and not WHOLE_NUMBER.search(message), message
    assert "audience_format='text'" in message
    assert server.count == 0


def test_numbers_in_header_names_are_masked_in_the_error(server, tmp_path):
    audience = tmp_path / "audience.csv"
    audience.write_text("name,+1 (415) 555-2671\nalice,+14155552672\n")
    with pytest.raises(ValueError, match="no column 'phone'") as raised:
        run(tmp_path, str(audience))
    assert not WHOLE_NUMBER.search(re.sub(r"[ ()-]", "", str(raised.value))), str(raised.value)


@pytest.mark.parametrize(("delimiter", "word"), [(";", "semicolon"), ("\t", "tab")])
def test_a_semicolon_delimited_csv_gets_a_hint(server, tmp_path, delimiter, word):
    audience = tmp_path / "audience.csv"
    audience.write_text(f"name{delimiter}phone\nalice{delimiter}+14155552671\n")
    with pytest.raises(ValueError, match=f"the header looks {word}-delimited") as raised:
        run(tmp_path, str(audience))
    assert "comma-separated" in str(raised.value)
    assert server.count == 0


@pytest.mark.parametrize(("name", "text"), [("audience.csv.gz", "phone,name\n"), ("audience.txt.gz", "")])
def test_gzipped_audiences_are_read_by_suffix(server, tmp_path, name, text):
    numbers = [f"+1415555{i:04d}" for i in range(150)] + ["not a number"]
    text += "".join(f"{n},x\n" if name.startswith("audience.csv") else f"{n}\n" for n in numbers)
    (tmp_path / name).write_bytes(gzip.compress(text.encode()))
    rows = run(tmp_path, str(tmp_path / name))
    assert [row["input"] for row in rows] == numbers
    assert {row["status"] for row in rows[:-1]} <= ANSWERED and rows[-1]["status"] == INVALID


@pytest.mark.parametrize(
    "damage",
    [lambda data: data[: len(data) // 2], lambda data: b"not gzip at all" + data],
    ids=["truncated", "not-gzip"],
)
def test_a_damaged_gzip_audience_fails_with_its_name(tmp_path, damage):
    body = "phone\n" + "".join(f"+1415555{i:04d}\n" for i in range(20_000))
    path = tmp_path / "audience.csv.gz"
    path.write_bytes(damage(gzip.compress(body.encode())))
    with pytest.raises(ValueError, match=r"audience\.csv\.gz is not a whole gzip file"):
        list(open_audience(as_path(str(path))).rows())


def test_a_gzipped_audience_streams_in_bounded_memory(tmp_path):
    line = "+14155552671," + "x" * 86 + "\n"  # 100 bytes
    path = tmp_path / "big.csv.gz"
    with gzip.open(path, "wt", compresslevel=1) as handle:
        handle.write("phone,pad\n")
        for _ in range(40):
            handle.write(line * 5_000)  # 20 MB in all
    tracemalloc.start()
    try:
        count = sum(1 for _ in open_audience(as_path(str(path))).rows())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 200_000
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB for a 20 MB audience"
