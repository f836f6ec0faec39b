"""Kubernetes quantities: exact values for every suffix, and errors for everything else."""

from __future__ import annotations

import contextlib
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmpod.errors import SpecError
from vmpod.quantity import Quantity, parse_quantity
from vmpod.testing import strategies as vs


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4Gi", 4294967296),
        ("1Ki", 1024),
        ("1Mi", 1024**2),
        ("1Gi", 1024**3),
        ("1Ti", 1024**4),
        ("1Pi", 1024**5),
        ("1Ei", 1024**6),
        ("160Mi", 167772160),
        ("1k", 1000),
        ("1M", 10**6),
        ("1G", 10**9),
        ("1T", 10**12),
        ("1P", 10**15),
        ("1E", 10**18),
        ("1", 1),
        ("0", 0),
        ("1e3", 1000),
        ("1E3", 1000),
        ("1e+3", 1000),
        ("12e-1", Fraction(6, 5)),
        ("1.5e3", 1500),
        ("100m", Fraction(1, 10)),
        ("1500m", Fraction(3, 2)),
        ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("5.", 5),
        ("+2", 2),
        ("-2", -2),
        ("1.5Gi", 1610612736),
        (" 1Ki ", 1024),
    ],
)
def test_exact_values(text: str, value: int | Fraction) -> None:
    quantity = parse_quantity(text)
    assert quantity.value == value
    assert quantity.text == text.strip()


def test_4gi_is_4294967296_bytes() -> None:
    quantity = Quantity.parse("4Gi")
    assert quantity.is_integer
    assert quantity.ceil() == 4294967296


def test_equality_is_by_value() -> None:
    assert parse_quantity("1Gi") == parse_quantity("1024Mi")
    assert parse_quantity("1k") == parse_quantity("1e3") == parse_quantity(1000)
    assert parse_quantity("1k") != parse_quantity("1Ki")
    assert hash(parse_quantity("1Gi")) == hash(parse_quantity("1024Mi"))


def test_rounding_helpers() -> None:
    assert parse_quantity("1500m").ceil() == 2
    assert parse_quantity("1500m").milli() == 1500
    assert parse_quantity("0.1m").milli() == 1  # rounded up, as Kubernetes' MilliValue()
    assert not parse_quantity("0.5").is_integer


def test_yaml_numbers_are_quantities() -> None:
    assert parse_quantity(2).value == 2
    assert parse_quantity(0.5).value == Fraction(1, 2)
    assert parse_quantity(1e3).value == 1000


@pytest.mark.parametrize(
    "text",
    ["", " ", "Gi", "1GB", "1gi", "1 Gi", "1e", "1e3Gi", "1.2.3", "--1", "1Kii", "0x10", "1_000", "\u0663",
     "Infinity", "nan", "4Gib", "e3"],
)
def test_malformed_text_is_refused_with_the_accepted_syntax(text: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_quantity(text)
    assert info.value.message == "not a quantity"
    assert info.value.value == text
    assert "Ki Mi Gi Ti Pi Ei" in (info.value.accepted or "")


@pytest.mark.parametrize("value", [None, True, [1], {"a": 1}, float("nan"), float("inf")])
def test_values_that_are_not_text_or_numbers_are_refused(value: object) -> None:
    with pytest.raises(SpecError, match="not a quantity"):
        parse_quantity(value)


@pytest.mark.parametrize("text", ["1e65", "1e-65", "1e99999999999", "1" * 101, "1" * 5000, "0." + "0" * 200 + "1"])
def test_hostile_sizes_are_refused_quickly(text: str) -> None:
    with pytest.raises(SpecError, match=r"exponent out of range|too many digits"):
        parse_quantity(text)


_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
           "m": Fraction(1, 1000)}


@settings(max_examples=200)
@given(st.integers(-(10**12), 10**12), st.integers(0, 999), st.sampled_from(sorted(_SUFFIX)))
def test_value_is_number_times_suffix(whole: int, thousandths: int, suffix: str) -> None:
    number = Fraction(abs(whole)) + Fraction(thousandths, 1000)
    text = f"{'-' if whole < 0 else ''}{abs(whole)}.{thousandths:03d}{suffix}"
    expected = (-number if whole < 0 else number) * _SUFFIX[suffix]
    assert parse_quantity(text).value == expected


@settings(max_examples=100)
@given(st.integers(0, 10**9), st.integers(-18, 18))
def test_decimal_exponent(mantissa: int, exponent: int) -> None:
    assert parse_quantity(f"{mantissa}e{exponent}").value == mantissa * Fraction(10) ** exponent


@settings(max_examples=100)
@given(vs.quantity_texts(signed=True))
def test_text_round_trips(text: str) -> None:
    quantity = parse_quantity(text)
    assert parse_quantity(str(quantity)) == quantity
    assert str(quantity) == text


@settings(max_examples=200)
@given(st.text(max_size=30))
def test_any_text_is_a_quantity_or_a_spec_error(text: str) -> None:
    with contextlib.suppress(SpecError):
        parse_quantity(text)
