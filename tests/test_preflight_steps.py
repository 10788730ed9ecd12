"""The preflight's building blocks without Airflow: prepare (read and normalize once) and the channel decision."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from airflow_provider_kaleyra.preflight import channels as ch, files
from airflow_provider_kaleyra.preflight.prepare import default_region_warning, prepare_audience
from airflow_provider_kaleyra.rcs.answers import Answer
from airflow_provider_kaleyra.utils.storage import as_path

IN_ENABLED, IN_DISABLED = "+919876543210", "+919812345678"
US_A, US_B = "+14155550100", "+12025550143"


def write(path: Path, header: list[str], rows: list[list[str]]) -> str:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_prepare_normalizes_once_keeps_every_column_and_plans_shards(tmp_path: Path) -> None:
    audience = write(
        tmp_path / "a.csv",
        ["customer_id", "Phone", "segment", "e164"],
        [
            ["C1", "(415) 555-0100", "vip", "x"],
            ["C2", "junk", "new", ""],
            ["C3", "+1 415 555 0100", "new", ""],
        ]
        + [[f"C{i}", f"+1202555{i:04d}", "bulk", ""] for i in range(200)],
    )
    out = tmp_path / "run"
    summary = prepared = prepare_audience(audience, str(out), column="phone", region="US", shard_count=4)
    assert summary["counts"] == {"rows": 203, "invalid": 1, "duplicates": 1, "distinct": 201}
    assert list(summary["invalid_reasons"]) == [next(iter(summary["invalid_reasons"]))]  # one reason
    assert len(prepared["shards"]) == 2  # never fewer than 100 numbers a shard
    assert not re.search(
        r"\d{6}", json.dumps(prepared)
    )  # the summary and the plan hold no number (masked only)
    rows = list(csv.reader((out / "work" / "rows.csv").open(encoding="utf-8")))
    assert rows[0] == ["customer_id", "Phone", "segment", "e164", "e164", "invalid_reason"]
    assert rows[1] == ["C1", "(415) 555-0100", "vip", "x", US_A, ""]
    assert rows[2][:5] == ["C2", "junk", "new", "", ""] and rows[2][5]
    # each shard reads its own numbers file: normalized, distinct, no number in two shards
    shards = [[r["e164"] for r in read(Path(s["audience"]))] for s in prepared["shards"]]
    assert [s["audience"] for s in prepared["shards"]] == [
        str(out / f"work/numbers_00{i}.csv") for i in (0, 1)
    ]
    assert [len(s) for s in shards] == [101, 100]
    numbers = shards[0] + shards[1]
    assert US_A in numbers and len(numbers) == len(set(numbers)) == 201
    assert [s["output"] for s in prepared["shards"]] == [f"{out}/work/rcs_shard_00{i}.csv" for i in (0, 1)]


def test_prepare_refuses_a_missing_column_or_audience(tmp_path: Path) -> None:
    audience = write(tmp_path / "a.csv", ["customer_id", "mobile"], [["C1", "+14155550100"]])
    with pytest.raises(
        ValueError, match=r"no column 'phone'; columns found: 'customer_id', 'mobile'.*phone_column"
    ):
        prepare_audience(audience, str(tmp_path / "run"), column="phone", region=None, shard_count=1)
    with pytest.raises(FileNotFoundError, match="audience not found"):
        prepare_audience(
            str(tmp_path / "nope.csv"), str(tmp_path / "run"), column="phone", region=None, shard_count=1
        )
    headless = write(tmp_path / "h.csv", ["+14155550100", "vip"], [])  # a number where the header should be
    with pytest.raises(ValueError, match=r"not a header") as caught:
        prepare_audience(headless, str(tmp_path / "r0"), column="phone", region=None, shard_count=1)
    assert "+14155550100" not in str(caught.value)  # masked: a phone number is personal data
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        prepare_audience(
            str(tmp_path / "empty.csv"), str(tmp_path / "r"), column="phone", region=None, shard_count=1
        )


@pytest.mark.parametrize(
    ("e164", "invalid", "rcs", "asked", "outcome", "expected"),
    [
        ("", "empty", None, False, None, ("none", "invalid: empty")),
        (US_A, "", Answer("rcs_enabled", "c"), False, None, ("rcs", "rcs_enabled")),
        (US_A, "", Answer("rcs_disabled", "c"), False, None, ("sms", "not_rcs_capable")),
        (US_A, "", Answer("failed", error="HTTP 503"), False, None, ("sms", "lookup_failed: HTTP 503")),
        (US_A, "", None, False, None, ("sms", "lookup_failed: no RCS answer recorded")),
        (IN_DISABLED, "", Answer("rcs_disabled"), True, "capable", ("soip", "soip_capable")),
        (
            IN_DISABLED,
            "",
            Answer("rcs_disabled"),
            True,
            "not_capable",
            ("sms", "soip_not_capable"),
        ),
        (
            IN_DISABLED,
            "",
            Answer("rcs_disabled"),
            True,
            "unparseable",
            ("sms", "soip_no_callback"),
        ),
        (IN_DISABLED, "", Answer("rcs_disabled"), True, None, ("sms", "soip_no_callback")),
    ],
)
def test_one_channel_and_reason_per_row(e164, invalid, rcs, asked, outcome, expected) -> None:
    assert ch.decide(e164, invalid, rcs, asked, outcome) == expected


def test_regions_and_soip_candidates(tmp_path: Path) -> None:
    assert [ch.region_of(n) for n in (US_A, IN_ENABLED, "+442079460000", "+4930123456")] == [
        "US",
        "IN",
        "GB",
        "DE",
    ]
    header = ["row", "input", "e164", "status", "carrier_id", "carrier_status", "error"]
    one = write(
        tmp_path / "s0.csv",
        header,
        [
            ["0", "", IN_ENABLED, "rcs_enabled", "", "", ""],
            ["1", "", IN_DISABLED, "rcs_disabled", "", "", ""],
        ],
    )
    two = write(
        tmp_path / "s1.csv",
        header,
        [["0", "", US_A, "rcs_disabled", "", "", ""], ["1", "", "+919800000001", "failed", "", "", "503"]],
    )
    outputs = [as_path(one), as_path(two)]
    assert list(ch.soip_candidates(outputs, ch.DEFAULT_SOIP_REGIONS)) == [IN_DISABLED]  # failed: not asked
    assert list(ch.soip_candidates(outputs, ["in", "us"])) == [IN_DISABLED, US_A]


def test_channel_lists_keep_every_audience_column_and_every_row(tmp_path: Path) -> None:
    audience = write(
        tmp_path / "a.csv",
        ["customer_id", "phone", "segment"],
        [
            ["C1", IN_ENABLED, "vip"],
            ["C2", IN_DISABLED, "new"],
            ["C3", US_A, "new"],
            ["C4", "nonsense", "lapsed"],
            ["C5", "09812345678", "dup"],  # IN_DISABLED again, written nationally
            ["C6", US_B, "x"],
        ],
    )
    run = tmp_path / "run"
    prepare_audience(audience, str(run), column="phone", region="IN", shard_count=1)
    shard = run / "work" / "rcs_shard_000.csv"
    write(
        shard,
        ["row", "input", "e164", "status", "carrier_id", "carrier_status", "error"],
        [
            ["0", IN_ENABLED, IN_ENABLED, "rcs_enabled", "jio", "launched", ""],
            ["1", IN_DISABLED, IN_DISABLED, "rcs_disabled", "airtel", "launched", ""],
            ["2", US_A, US_A, "rcs_disabled", "att", "launched", ""],
            ["3", US_B, US_B, "failed", "", "", "HTTP 503"],
        ],
    )
    asked = write(run / "work" / "soip_numbers.csv", ["e164"], [[IN_DISABLED]])
    (run / "work" / "soip.jsonl").write_text(json.dumps({"number": IN_DISABLED, "outcome": "capable"}) + "\n")
    result = ch.write_channel_lists(
        as_path(str(run)), [as_path(str(shard))], as_path(asked), as_path(str(run / "work" / "soip.jsonl"))
    )
    assert result["rows"] == {"rcs": 1, "soip": 2, "sms": 2, "none": 1}
    assert result["numbers"] == {"rcs": 1, "soip": 1, "sms": 2}
    assert result["soip_asked"] == result["soip_answered"] == 1
    assert result["reasons"] == {
        "soip_capable": 2,
        "rcs_enabled": 1,
        "not_rcs_capable": 1,
        "lookup_failed": 1,
        "invalid": 1,
    }
    soip = read(run / "soip.csv")
    assert [(r["customer_id"], r["segment"], r["e164"], r["reason"]) for r in soip] == [
        ("C2", "new", IN_DISABLED, "soip_capable"),
        ("C5", "dup", IN_DISABLED, "soip_capable"),
    ]
    assert list(soip[0]) == ["customer_id", "phone", "segment", "e164", "channel", "reason"]
    sms = {r["customer_id"]: r["reason"] for r in read(run / "sms.csv")}
    assert sms == {"C3": "not_rcs_capable", "C6": "lookup_failed: HTTP 503"}
    assert [r["customer_id"] for r in read(run / "invalid.csv")] == ["C4"]
    assert result["carriers"]["jio"] == {"numbers": 1, "rcs_capable": 1, "rcs_rate": 1.0}
    assert result["countries"]["IN"]["numbers"] == 2 and result["countries"]["US"]["numbers"] == 2


def test_missing_work_files_fail_at_once_naming_the_setting(tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match=r"not visible from this worker.*output_location"):
        list(ch.rcs_answers([as_path(str(tmp_path / "elsewhere.csv"))]))
    assert dict(ch.soip_outcomes(as_path(str(tmp_path / "none.jsonl")))) == {}
    path = tmp_path / "soip.jsonl"
    path.write_text('{"number": "+919812345678", "outcome": "capable"}\n\n{"number": "+919800000001"}\n')
    outcomes = dict(ch.soip_outcomes(as_path(str(path))))
    assert outcomes == {IN_DISABLED: "capable", "+919800000001": "missing"}


def test_csv_writer_publishes_nothing_when_interrupted(tmp_path: Path) -> None:
    target = as_path(str(tmp_path / "x.csv"))

    def interrupted() -> None:
        with files.CsvWriter() as out:
            out.open("x", target, ["a"])
            out.write("x", ["1"])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        interrupted()
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_a_region_column_reads_a_mixed_audience_right_and_default_region_rows_are_counted(
    tmp_path: Path,
) -> None:
    from airflow_provider_kaleyra.preflight.prepare import region_for

    assert [region_for(v) for v in ("US", " in ", "India", "united  kingdom", "USA", "+91", "44", "1")] == [
        "US",
        "IN",
        "IN",
        "GB",
        "US",
        "IN",
        "GB",
        "US",
    ]
    assert [region_for(v) for v in ("Narnia", "ZZ", "+999", "")] == [None, None, None, None]
    rows = [  # national numbers, as a CRM export writes them, with the country beside them
        ["C1", "617.433.1307", "United States", "+16174331307"],
        ["C2", "98765 43210", "IN", "+919876543210"],
        ["C3", "07911 123456", "44", "+447911123456"],
        ["C4", "9812345678", "India", "+919812345678"],
        ["C5", "+1 202 555 0143", "India", "+12025550143"],  # a country code wins over the column
        ["C6", "(718) 821-3470", "", "+17188213470"],  # no country: the default region
        ["C7", "9876543210", "Narnia", ""],
    ]
    audience = write(tmp_path / "a.csv", ["customer_id", "phone", "country"], [r[:3] for r in rows])
    run = tmp_path / "run"
    prepared = prepare_audience(
        audience, str(run), column="phone", region="US", shard_count=1, region_column="country"
    )
    got = {r["customer_id"]: (r["e164"], r["invalid_reason"]) for r in read(run / "work" / "rows.csv")}
    assert {c: e164 for c, (e164, _) in got.items()} == {r[0]: r[3] for r in rows}  # 0 wrong
    assert got["C7"][1] == "unknown country in the region column"
    assert prepared["national"]["default_rows"] == 1
    assert prepared["national"]["by_region"] == {"US": 2, "IN": 2, "GB": 1}
    assert prepared["national"]["examples"] == ["(718)*******70 -> +1718*****70"]
    # without the column, national numbers are read as the default region's, and those that read are counted
    plain = prepare_audience(audience, str(tmp_path / "r2"), column="phone", region="US", shard_count=1)
    assert plain["national"]["default_rows"] == 2 and plain["national"]["by_region"] == {"US": 2}
    assert plain["counts"]["invalid"] == 4  # the Indian and British national numbers are not valid US ones
    assert default_region_warning(plain).startswith(
        "2 of 7 rows (28.6%) have no country code and were read as US"
    )
    assert "(718)*******70 -> +1718*****70" in default_region_warning(plain)
    assert default_region_warning({**plain, "counts": {**plain["counts"], "rows": 40}}) is None  # 5%: quiet


def test_the_soip_check_takes_the_e164_candidates_as_they_are(tmp_path: Path, monkeypatch) -> None:
    from airflow_provider_kaleyra.numbers import normalize as phone
    from airflow_provider_kaleyra.operators.soip import KaleyraSoipCapabilityCheckOperator

    extra = {"callback_profile_id": "p", "callback_store_url": f"sqlite:///{tmp_path / 'c.db'}"}
    conn = {
        "conn_type": "kaleyra",
        "login": "AC-TEST-SID",
        "password": "test-api-key-0123456789",
        "extra": extra,
    }
    monkeypatch.setenv("AIRFLOW_CONN_KALEYRA_DEFAULT", json.dumps(conn))
    monkeypatch.setattr(phone, "normalize", lambda *args: pytest.fail("an E.164 candidate was parsed again"))
    audience = write(tmp_path / "soip_numbers.csv", ["e164"], [[IN_DISABLED], [IN_ENABLED], ["98765 43210"]])
    check = KaleyraSoipCapabilityCheckOperator(task_id="c", audience=audience, column="e164", e164_input=True)
    sent: list[str] = []
    monkeypatch.setattr(type(check.hook), "submit_soip", lambda self, chunk, profile: sent.extend(chunk))
    result = check.execute({})
    assert (
        sorted(sent) == sorted([IN_DISABLED, IN_ENABLED]) and result["invalid"] == 1
    )  # the shape is checked
