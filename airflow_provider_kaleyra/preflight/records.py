"""What the preflight's tasks hand each other through XCom: one record per hand-off, no phone number.
TypedDicts, so they travel as plain JSON (no ``allowed_deserialization_classes``)."""

from __future__ import annotations

from typing import TypedDict


class Shard(TypedDict):
    """The arguments of one mapped ``rcs_lookup``: its own numbers file (E.164, distinct) and output."""

    audience: str
    output: str
    storage_conn_id: str | None


class Counts(TypedDict):
    rows: int
    invalid: int
    duplicates: int
    distinct: int


class NationalRows(TypedDict):
    """Rows written without a country code, and the region each was read with."""

    default_region: str | None
    default_rows: int  # read with the connection's default_region (no region column value)
    by_region: dict[str, int]  # region used (the row's region column, or the default) -> rows
    examples: list[str]  # masked inputs read with the default region


class PreparedRun(TypedDict):
    """``prepare``'s result: where the run's files are, the audience's counts and the shard plan."""

    run_dir: str
    storage_conn_id: str | None
    audience: str
    counts: Counts
    invalid_reasons: dict[str, int]
    national: NationalRows
    shards: list[Shard]


class SoipLeg(TypedDict):
    """``soip_candidates``' result: the numbers file the SOIP check reads and where the wait writes."""

    audience: str
    results: str


class ChannelResult(TypedDict):
    """``channels``' result: rows and distinct numbers by channel, the reasons, the four lists."""

    rows: dict[str, int]
    numbers: dict[str, int]
    reasons: dict[str, int]
    carriers: dict[str, dict[str, float]]
    countries: dict[str, dict[str, float]]
    soip_asked: int
    soip_answered: int
    lists: dict[str, str]
