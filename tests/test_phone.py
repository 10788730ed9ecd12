"""normalize(): same answers as plain phonenumbers, by property and by example; mask().

The reference for every input is ``preclean`` (the provider's own rules: separators out,
``00`` to ``+``, length cap) followed by plain ``phonenumbers.parse`` +
``is_valid_number`` + ``format_number(E164)``: the fast path must agree with it on the
E.164 result and on the reason, for every input.
"""

from __future__ import annotations

import random
import threading

import phonenumbers
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE, SUPPORTED_REGIONS

from airflow_provider_kaleyra.numbers import fastphone as _fastphone, normalize as phone
from airflow_provider_kaleyra.numbers.audience import RowBlock
from airflow_provider_kaleyra.numbers.masking import mask
from airflow_provider_kaleyra.numbers.normalize import (
    MAX_INPUT_LENGTH,
    MAX_REASONS,
    DistinctNumbers,
    Normalized,
    fast_path_enabled,
    normalize,
    normalize_block,
    normalize_with_phonenumbers,
    preclean,
)
from airflow_provider_kaleyra.rcs.blocks import read_block

ALL_REGIONS = sorted(SUPPORTED_REGIONS)
# Regions with rules worth aiming at: national prefixes, Italian leading zeros, AR/MX mobile
# prefix transforms, shared calling codes (NANPA, +7, +44, +61), carrier codes (BR), 8-prefix (RU).
FOCUS_REGIONS = [
    "US", "CA", "PR", "JM", "IN", "GB", "GG", "JE", "IM", "DE", "FR", "BR", "IT", "VA", "SM",
    "AR", "MX", "AU", "CX", "JP", "CN", "RU", "KZ", "AE", "NG", "ES", "NL", "ZA", "KR", "ID",
    "PK", "BD", "EG", "TR", "CO", "CL", "PE", "NZ", "SG", "HK", "AT", "CH", "BE", "SE", "NO",
    "FI", "AX", "MA", "RE", "GP", "CW", "UZ", "BY", "HU", "PL",
]  # fmt: skip
TYPES = [
    PhoneNumberType.MOBILE,
    PhoneNumberType.FIXED_LINE,
    PhoneNumberType.TOLL_FREE,
    PhoneNumberType.PREMIUM_RATE,
    PhoneNumberType.SHARED_COST,
    PhoneNumberType.VOIP,
    PhoneNumberType.PERSONAL_NUMBER,
    PhoneNumberType.PAGER,
    PhoneNumberType.UAN,
    PhoneNumberType.VOICEMAIL,
]
SEPARATORS = [" ", "-", ".", "/", "\u00a0", "\u2013", "(", ")", "\t"]


def reference(raw: object, region: str | None) -> Normalized:
    """The provider's pre-cleaning, then plain phonenumbers."""
    cleaned = preclean(raw, region)
    if isinstance(cleaned, Normalized):
        return cleaned
    return normalize_with_phonenumbers(*cleaned)


def assert_same(raw: object, region: str | None) -> Normalized:
    got = normalize(raw, region)
    assert got == reference(raw, region), (raw, region)
    # the block reader's path, with the input repeated (its per-block memory of answers)
    assert normalize_block([raw, raw], None, region) == ([got.e164] * 2, [got.reason] * 2), (raw, region)
    return got


# -- the fast path is exact ------------------------------------------------------------------


def test_fast_path_is_enabled_for_this_phonenumbers():
    assert fast_path_enabled(), f"phonenumbers {phonenumbers.__version__} failed the self-check: slow"
    assert _fastphone.parse("+16502530000", None) == (1, "6502530000", True)


def test_self_check_samples_many_regions_and_the_replay_answers_most_of_them():
    sample = phone._sample()
    assert len({region for _, region in sample}) > 30 and len(sample) > 500
    assert sum(_fastphone.parse(*item) is not None for item in sample) > 0.95 * len(sample)


@pytest.mark.parametrize("fault", ["differs", "raises"])
def test_any_self_check_mismatch_falls_back_to_plain_phonenumbers_and_logs_once(monkeypatch, caplog, fault):
    """A phonenumbers release that the replay no longer matches must cost speed, never answers."""
    replay = _fastphone.parse

    def broken(compact, region):
        if fault == "raises":
            raise AttributeError("a private internal moved")
        answer = replay(compact, region)
        return None if answer is None else (answer[0], answer[1], not answer[2])  # validity flipped

    monkeypatch.setattr(_fastphone, "parse", broken)
    fast_path_enabled.cache_clear()
    try:
        with caplog.at_level("WARNING", logger=phone.__name__):
            assert normalize("+1 650 253 0000") == Normalized("+16502530000")  # through plain phonenumbers
            assert normalize("+1 650 253 0000 1") == reference("+1 650 253 0000 1", None)
            assert normalize("020 7946 0000", "GB") == Normalized("+442079460000")
        assert not fast_path_enabled()
    finally:
        fast_path_enabled.cache_clear()  # the next test checks the real fast path again
    assert len([r for r in caplog.records if "plain phonenumbers" in r.getMessage()]) == 1


def test_plain_digit_strings_are_viable_at_every_length_up_to_the_cap():
    """The docstring's claim: parse's extraction and viability steps leave ``+digits``/``digits`` alone."""
    from phonenumbers.phonenumberutil import (
        _EXTN_PATTERN,
        _VALID_PHONE_NUMBER_PATTERN,
        _extract_possible_number,
    )

    for length in range(1, MAX_INPUT_LENGTH + 1):
        digits = "".join(random.Random(length).choice("0123456789") for _ in range(length))
        for text in (digits, "+" + digits):
            assert _extract_possible_number(text) == text
            assert _EXTN_PATTERN.search(text) is None
        assert bool(_VALID_PHONE_NUMBER_PATTERN.fullmatch(digits)) == (length >= 2)
        assert bool(_VALID_PHONE_NUMBER_PATTERN.fullmatch("+" + digits)) == (length >= 3)


def _phonenumbers_answer(compact: str, region: str | None) -> tuple[int, str, bool] | None:
    try:
        number = phonenumbers.parse(compact, region)
    except phonenumbers.NumberParseException:
        return None
    return (
        number.country_code,
        phonenumbers.national_significant_number(number),
        phonenumbers.is_valid_number(number),
    )


@settings(max_examples=3000, deadline=None)
@given(
    digits=st.text("0123456789", min_size=0, max_size=20),
    plus=st.booleans(),
    region=st.sampled_from(ALL_REGIONS),
)
@example(digits="5491123456789", plus=True, region="AR")
@example(digits="01115234567890", plus=False, region="AR")
@example(digits="0445512345678", plus=False, region="MX")
@example(digits="0212345678", plus=False, region="IT")
@example(digits="8800555353", plus=False, region="RU")
@example(digits="011442079460000", plus=False, region="US")
@example(digits="12684641234", plus=False, region="AG")
@example(digits="4641234", plus=False, region="AG")
@example(digits="0", plus=True, region="US")
def test_fast_parse_equals_phonenumbers_on_digit_strings(digits, plus, region):
    """Where the fast path answers, it is exactly phonenumbers' (calling code, NSN, validity)."""
    compact = ("+" if plus else "") + digits
    region_arg = None if plus else region
    ours = _fastphone.parse(compact, region_arg)
    if ours is not None:
        assert tuple(ours) == _phonenumbers_answer(compact, region_arg)
    assert_same(compact, region)


def test_fast_parse_equals_phonenumbers_on_many_random_digit_strings():
    """A wider, seeded sweep than hypothesis' example budget: every region, 200 strings each."""
    rng = random.Random(20240607)
    answered = 0
    for region in ALL_REGIONS:
        for _ in range(200):
            digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(2, 18)))
            plus = rng.random() < 0.4
            compact = ("+" if plus else "") + digits
            region_arg = None if plus else region
            ours = _fastphone.parse(compact, region_arg)
            if ours is not None:
                answered += 1
                assert tuple(ours) == _phonenumbers_answer(compact, region_arg), (compact, region_arg)
    assert answered > 0.8 * 200 * len(ALL_REGIONS)


messy_text = st.text(
    alphabet=st.one_of(
        st.sampled_from("0123456789" * 4 + "+" * 3 + "".join(SEPARATORS) + "xX#*;=,"),
        st.characters(codec="utf-8"),
    ),
    max_size=80,
)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=messy_text, region=st.sampled_from([None, "ZZ", "001", "us", *FOCUS_REGIONS]))
@example(raw="", region="US")
@example(raw="\ufeff", region="US")
@example(raw="+1 650 253 0000 ext. 123", region=None)
@example(raw="1-800-FLOWERS", region="US")
@example(raw="tel:+1-650-253-0000;phone-context=+1", region=None)
@example(raw="\uff0b\uff11\uff16\uff15\uff10\uff12\uff15\uff13\uff10\uff10\uff10\uff10", region=None)
@example(raw="\u0669\u0668\u0667\u0666\u0665\u0664\u0663\u0662\u0661\u0660", region="IN")
@example(raw="++16502530000", region=None)
@example(raw="-6502530000", region="US")
def test_normalize_equals_phonenumbers_on_arbitrary_text(raw, region):
    assert_same(raw, region)


@st.composite
def realistic_numbers(draw):
    """A plausible number of a region: an example number of some type with a randomized tail,
    written the way people write it (E.164, international, national, 00, separators)."""
    region = draw(st.sampled_from(FOCUS_REGIONS + ALL_REGIONS))
    kind = draw(st.sampled_from(TYPES))
    example_number = phonenumbers.example_number_for_type(region, kind)
    if example_number is None:
        example_number = phonenumbers.example_number(region)
    if example_number is None:
        return "+" + draw(st.text("0123456789", min_size=3, max_size=15)), region
    nsn = phonenumbers.national_significant_number(example_number)
    keep = draw(st.integers(min_value=max(1, len(nsn) - 7), max_value=len(nsn)))
    tail = draw(st.text("0123456789", min_size=len(nsn) - keep, max_size=len(nsn) - keep))
    number = phonenumbers.PhoneNumber(country_code=example_number.country_code)
    try:
        number = phonenumbers.parse(f"+{example_number.country_code}{nsn[:keep] + tail}")
    except phonenumbers.NumberParseException:
        return f"+{example_number.country_code}{nsn[:keep] + tail}", region
    style = draw(st.sampled_from(["e164", "international", "national", "00", "digits", "cc-digits"]))
    if style == "e164":
        text = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    elif style == "international":
        text = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    elif style == "00":
        text = "00" + phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)[1:]
    elif style == "national":
        text = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    elif style == "cc-digits":  # country code without "+", read in the default region
        text = phonenumbers.format_number(number, PhoneNumberFormat.E164)[1:]
    else:
        text = "".join(
            c for c in phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL) if c.isdigit()
        )
    separator = draw(st.sampled_from(["keep", *SEPARATORS]))
    if separator != "keep":
        text = text.replace(" ", separator)
    read_in = draw(st.sampled_from([region, region, region, "US", "IN", "GB", None]))
    return text, read_in


@settings(max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=realistic_numbers())
def test_normalize_equals_phonenumbers_on_realistic_numbers(case):
    raw, region = case
    assert_same(raw, region)


@pytest.mark.parametrize("region", ALL_REGIONS)
def test_every_region_example_numbers(region):
    """Deterministic coverage of every region: each type's example number, in each common writing."""
    for kind in TYPES:
        number = phonenumbers.example_number_for_type(region, kind)
        if number is None:
            continue
        e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
        national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
        international = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
        for raw, read_in in [
            (e164, None),
            (international, region),
            ("00" + e164[1:], None),
            (national, region),
            (e164[1:], region),
            (phonenumbers.national_significant_number(number), region),
        ]:
            got = assert_same(raw, read_in)
            if raw in (e164, international):
                assert got.e164 == e164  # an example number is valid: the fast path said so too


def test_every_non_geographic_calling_code():
    for cc, regions in COUNTRY_CODE_TO_REGION_CODE.items():
        if regions != ("001",):
            continue
        number = phonenumbers.example_number_for_non_geo_entity(cc)
        if number is None:
            continue
        e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
        assert assert_same(e164, None).e164 == e164
        assert_same(e164[:-1], None)
        assert_same(e164 + "1", None)


# -- by example ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("+1 (650) 253-0000", None, "+16502530000"),
        ("(650) 253-0000", "US", "+16502530000"),
        ("650.253.0000", "US", "+16502530000"),
        ("1-650-253-0000", "US", "+16502530000"),
        ("011 44 20 7946 0000", "US", "+442079460000"),  # US international prefix
        ("0044 20 7946 0000", None, "+442079460000"),
        ("020 7946 0000", "GB", "+442079460000"),
        ("+44 (0)20 7946 0000", None, "+442079460000"),
        ("9876543210", "IN", "+919876543210"),
        ("09876543210", "IN", "+919876543210"),
        ("919876543210", "IN", "+919876543210"),
        ("+91 98765 43210", None, "+919876543210"),
        ("02 1234 5678", "IT", "+390212345678"),  # Italian leading zero is kept
        ("+39 02 1234 5678", None, "+390212345678"),
        ("011 15-2345-6789", "AR", "+5491123456789"),  # AR mobile: 0 + area + 15 becomes 9 + area
        ("+54 9 11 2345-6789", None, "+5491123456789"),
        ("55 1234 5678", "MX", "+525512345678"),
        ("030 123456", "DE", "+4930123456"),
        ("06 12 34 56 78", "FR", "+33612345678"),
        ("(11) 96123-4567", "BR", "+5511961234567"),
        ("8 (912) 345-67-89", "RU", "+79123456789"),
        ("+7 912 345-67-89", None, "+79123456789"),
        ("090-1234-5678", "JP", "+819012345678"),
        ("138 0013 8000", "CN", "+8613800138000"),
        ("050 123 4567", "AE", "+971501234567"),
        ("0802 123 4567", "NG", "+2348021234567"),
        ("0412 345 678", "AU", "+61412345678"),
        ("  +16502530000\t", None, "+16502530000"),
        ("\ufeff+16502530000", None, "+16502530000"),
        ("+1 650 253 0000 ext. 123", None, "+16502530000"),
        ("1-800-FLOWERS", "US", "+18003569377"),
    ],
)
def test_messy_inputs(raw, region, e164):
    assert assert_same(raw, region) == Normalized(e164)


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("", "US", "empty"),
        ("   ", "US", "empty"),
        (None, "US", "not text: NoneType"),
        (16502530000, "US", "not text: int"),
        ("1" * (MAX_INPUT_LENGTH + 1), "US", f"too long: {MAX_INPUT_LENGTH + 1} characters"),
        ("9876543210", None, "no country code and no default region"),
        (
            "+9876543210",
            None,
            "not a valid number: no such area code or prefix in IR (+98)",
        ),  # +national trap
        ("hello", "US", "unparseable: The string supplied did not seem to be a phone number."),
        ("N/A", "US", "unparseable: The string supplied did not seem to be a phone number."),
        ("+", None, "unparseable: The string supplied did not seem to be a phone number."),
        ("00", None, "no country code and no default region"),
        ("000-000-0000", "US", "not a valid number: no such area code or prefix in US (+1)"),
        ("+0 123 456", None, "unparseable: Could not interpret numbers after plus-sign."),
        ("+999 123 456 789", None, "unparseable: Could not interpret numbers after plus-sign."),
        ("12", "US", "not a valid number: too short"),
        ("+123", None, "not a valid number: too short"),
        ("+1 650 253 00000", None, "not a valid number: too long"),
        ("044 55 1234 5678", "MX", "not a valid number: too long"),
    ],
)
def test_refused_inputs(raw, region, reason):
    assert assert_same(raw, region) == Normalized(None, reason)


def test_huge_strings_are_refused_before_parsing():
    assert normalize("+1" + "6" * 10_000, None) == Normalized(None, "too long: 10002 characters")
    assert normalize(" " * 10_000 + "+16502530000" + " " * 10_000, None) == Normalized("+16502530000")


def test_concurrent_first_use_gives_the_same_answers():
    """Metadata is compiled lazily; threads racing on a cold region agree with phonenumbers."""
    numbers = [f"+6{d}1234567{d}" for d in range(10)] + [f"0{d}9123456{d}" for d in range(10)]
    expected = [reference(n, "NZ") for n in numbers]
    results: list[list[Normalized]] = []

    def work():
        results.append([normalize(n, "NZ") for n in numbers])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 8


# -- mask --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+14155552671", "+1415*****71"),
        ("+919876543210", "+9198******10"),
        ("+4930123456", "+4930****56"),
        ("+6831234", "+6831*34"),
        ("123456", "******"),
        ("12", "**"),
        ("", "<none>"),
        (None, "<none>"),
    ],
)
def test_mask(number, masked):
    assert mask(number) == masked


@given(st.text(min_size=8, max_size=30))
def test_mask_never_shows_the_middle(number):
    masked = mask(number)
    assert len(masked) == len(number)
    assert masked[:5] == number[:5] and masked[-2:] == number[-2:]
    assert set(masked[5:-2]) <= {"*"}


# -- DistinctNumbers: the one de-duplication tally ---------------------------------------------


def test_distinct_numbers_gives_each_row_its_position_and_keeps_first_seen_order():
    distinct = DistinctNumbers()
    raws = ["+14155552671", "9876543210", "garbage", "+1 415-555-2671", "+919876543210", "+442079460000"]
    positions, new = distinct.add(*normalize_block(raws[:3], None, "IN"))
    assert (positions, new) == ([0, 1, -1], ["+14155552671", "+919876543210"])
    positions, new = distinct.add(*normalize_block(raws[3:], None, "IN"))
    assert (positions, new) == ([0, 1, 2], ["+442079460000"])  # two repeats
    assert list(distinct.seen) == ["+14155552671", "+919876543210", "+442079460000"] and len(distinct) == 3
    assert (distinct.inputs, distinct.invalid) == (6, 1)
    assert distinct.reasons == {"unparseable: The string supplied did not seem to be a phone number.": 1}


def test_distinct_numbers_counts_problem_rows_and_non_text_with_their_reason():
    distinct = DistinctNumbers()
    block = normalize_block(["+14155552671", 14155552671, None], ["not UTF-8 text", None, None], "US")
    assert distinct.add(*block) == ([-1, -1, -1], [])
    assert (distinct.inputs, distinct.invalid, list(distinct.seen)) == (3, 3, [])
    assert distinct.reasons == {"not UTF-8 text": 1, "not text: int": 1, "not text: NoneType": 1}


def test_distinct_numbers_caps_the_distinct_reasons_but_counts_every_invalid_input():
    distinct = DistinctNumbers()
    # "too long: N characters", one reason per length, in blocks of one; then a reason already kept
    for length in [
        *range(MAX_INPUT_LENGTH + 1, MAX_INPUT_LENGTH + 1 + 3 * MAX_REASONS),
        MAX_INPUT_LENGTH + 1,
    ]:
        distinct.add(*normalize_block(["1" * length], None, None))
    assert distinct.invalid == 3 * MAX_REASONS + 1
    assert len(distinct.reasons) == MAX_REASONS
    assert distinct.reasons[f"too long: {MAX_INPUT_LENGTH + 1} characters"] == 2


def test_distinct_numbers_count_tallies_without_keeping_numbers():
    distinct = DistinctNumbers()  # the preflight's prepare: the numbers are de-duplicated on disk
    assert distinct.count(["+14155552671", None], [None, "empty"]) is True
    assert distinct.count(["+14155552671"], [None]) is False
    assert (distinct.inputs, distinct.invalid, distinct.reasons, len(distinct)) == (3, 1, {"empty": 1}, 0)


def test_read_block_checks_only_the_shape_of_inputs_an_earlier_step_normalized():
    block = RowBlock(
        ["+919876543210", "9876543210", 919876543210, "+14155552671"], [None, None, None, "empty"]
    )
    e164s, reasons = read_block(block, "IN", e164_input=True)  # no second parse
    declared = "not E.164 (the input was declared normalized)"
    assert (e164s, reasons) == (["+919876543210", None, None, None], [None, declared, declared, "empty"])


def test_normalize_block_keeps_order_and_the_problems_it_is_given():
    raws = ["+14155552671", "", "(415) 555-2671", 14155552671, "N/A", "+14155552671", "+1 415 555"]
    problems = [None, None, None, None, None, "not UTF-8 text", None]
    e164s, reasons = normalize_block(raws, problems, "US")
    expected = [normalize(raw, "US") for raw in raws]
    assert e164s == [n.e164 for n in expected[:5]] + [None, expected[6].e164]
    assert reasons == [n.reason for n in expected[:5]] + ["not UTF-8 text", expected[6].reason]
    assert normalize_block(raws, None, "US") == ([n.e164 for n in expected], [n.reason for n in expected])
    assert normalize_block([], None, None) == ([], [])
    assert normalize_block([["+14155552671"]], None, "US") == ([None], ["not text: list"])  # unhashable
