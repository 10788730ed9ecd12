"""The bulk pipeline overlaps reading, lookups and writing, and still writes what the passes wrote."""

from __future__ import annotations

from airflow_provider_kaleyra.hooks.kaleyra import KaleyraHook
from airflow_provider_kaleyra.operators.kaleyra import KaleyraRcsBulkLookupOperator
from airflow_provider_kaleyra.rcs import blocks as blocks_module
from airflow_provider_kaleyra.rcs.blocks import input_blocks
from airflow_provider_kaleyra.rcs.engine import Engine
from airflow_provider_kaleyra.rcs.outputs import read_results, write_results
from airflow_provider_kaleyra.utils.storage import as_path

pytest_plugins = ["conftest_airflow"]


def us(i: int) -> str:
    return f"+1415{2_000_000 + i}"


def audience(count: int) -> list[str]:
    """Every 7th row repeats an earlier number, every 50th is garbage."""
    rows = []
    for i in range(count):
        if i % 50 == 49:
            rows.append("garbage")
        elif i % 7 == 6:
            rows.append(us(i // 2))
        else:
            rows.append(us(i))
    return rows


def test_calls_start_and_rows_are_written_before_the_audience_is_read(kaleyra_conn, tmp_path, monkeypatch):
    monkeypatch.setattr(blocks_module, "BLOCK_ROWS", 256)  # small blocks: the writer follows closely
    numbers = audience(60_000)
    read = 0
    read_at_first_call: list[int] = []
    written_at_call: list[int] = []
    real_answer = KaleyraHook._answer_batch

    def rows():
        nonlocal read
        for raw in numbers:
            read += 1
            yield raw

    hook = KaleyraHook()
    output = as_path(str(tmp_path / "out.csv"))
    with Engine(hook, checkpoint_at=output, checkpoint_batches=2) as run, write_results(output) as out:

        def answer(self, batch, retry_missing=True):
            read_at_first_call.append(read)
            written_at_call.append(run.stats.statuses.total())
            return real_answer(self, batch, retry_missing)

        monkeypatch.setattr(KaleyraHook, "_answer_batch", answer)
        for block in run.stream(input_blocks(rows())):
            out.write_block(block)
        stats = run.stats
    assert read_at_first_call[0] < len(numbers) // 2, "the first call waited for most of the audience"
    assert written_at_call[-1] > 0, "nothing was written before the last call"
    assert stats.rows == stats.inputs == len(numbers)
    assert stats.distinct == len(set(numbers) - {"garbage"})
    results = list(read_results(output))
    assert [r["row"] for r in results] == list(range(len(numbers)))
    assert [r["input"] for r in results] == numbers
    assert all(r["e164"] == r["input"] for r in results if r["status"] != "invalid")


def test_streamed_and_read_first_runs_write_the_same_bytes(kaleyra_conn, tmp_path):
    path = tmp_path / "audience.txt"
    path.write_text("\n".join(audience(23_456)) + "\n")
    common = {"audience": str(path), "checkpoint_batches": 3}
    streamed = KaleyraRcsBulkLookupOperator(task_id="s", output=str(tmp_path / "s.csv"), **common)
    read_first = KaleyraRcsBulkLookupOperator(  # a ratio to check needs the whole audience first
        task_id="r", output=str(tmp_path / "r.csv"), max_invalid_ratio=1.0, **common
    )
    one, two = streamed.execute({}), read_first.execute({})
    assert (tmp_path / "s.csv").read_bytes() == (tmp_path / "r.csv").read_bytes()
    assert {k: v for k, v in one.items() if k != "output"} == {k: v for k, v in two.items() if k != "output"}


def test_spool_keeps_order_in_memory_and_on_disk():
    from airflow_provider_kaleyra.rcs.spool import Spool

    spool = Spool(memory_rows=10)
    taken = []
    for i in range(0, 100, 4):  # blocks of 4 rows; the reader runs ahead of the writer
        spool.put([[i + j, None, "r"] for j in range(4)])
        if i % 12 == 0:
            taken += spool.get() or []
    while (block := spool.get()) is not None:
        taken += block
    spool.close()
    assert [row[0] for row in taken] == list(range(100))
    assert spool.spilled > 0
