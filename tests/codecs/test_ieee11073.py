"""SFLOAT / FLOAT: independent literals (hand-computed), specials, exactness, round trips."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.codecs import (
    DecodeError,
    MedFloat,
    Special,
    float_from_raw,
    float_to_raw,
    read_float,
    read_sfloat,
    sfloat_from_raw,
    sfloat_to_raw,
)
from drivers.codecs._cursor import Reader


def sfloat(hex_le: str) -> MedFloat:
    return read_sfloat(Reader(bytes.fromhex(hex_le), "SFLOAT"), "value")


def float32(hex_le: str) -> MedFloat:
    return read_float(Reader(bytes.fromhex(hex_le), "FLOAT"), "value")


# Hand-computed: (wire bytes LE, mantissa, exponent, exact value text).
SFLOAT_LITERALS = [
    ("8a 00", 138, 0, "138"),  # Nordic BP test: 138 mmHg
    ("bd f0", 189, -1, "18.9"),  # Nordic BP test: exponent nibble F = -1
    ("65 f0", 101, -1, "10.1"),  # F0: exponent -1, mantissa high nibble 0
    ("32 80", 50, -8, "5.0E-7"),  # two's complement: 50e-8, NOT 50 (excess-8 bug)
    ("78 80", 120, -8, "1.20E-6"),  # the fixture a biased decoder reads as 120
    ("64 00", 100, 0, "100"),
    ("e8 f3", 1000, -1, "100.0"),  # same value as 64 00, other precision
    ("00 d0", 0, -3, "0.000"),  # zero keeps its exponent
    ("ff f7", 2047, -1, "204.7"),  # NaN's mantissa at exponent -1 is an ordinary number
    ("00 18", -2048, 1, "-2.048E+4"),  # NRes's mantissa at exponent 1 likewise
    ("ff 77", 2047, 7, "2.047E+10"),
    ("ff 7f", -1, 7, "-1E+7"),  # mantissa 0xFFF is -1
    ("01 88", -2047, -8, "-0.00002047"),
]


@pytest.mark.parametrize(("hex_le", "mantissa", "exponent", "text"), SFLOAT_LITERALS)
def test_sfloat_literals(hex_le: str, mantissa: int, exponent: int, text: str) -> None:
    v = sfloat(hex_le)
    assert (v.mantissa, v.exponent, v.special) == (mantissa, exponent, None)
    assert v.value == Decimal(text)
    assert v.value is not None and v.value.as_tuple() == Decimal(text).as_tuple()
    assert sfloat_to_raw(v).to_bytes(2, "little") == bytes.fromhex(hex_le)


FLOAT_LITERALS = [
    ("6c 01 00 ff", 364, -1, "36.4"),  # spec §1.3
    ("97 0d 00 fe", 3479, -2, "34.79"),  # 0xFE000D97
    ("71 0e 00 fe", 3697, -2, "36.97"),
    ("94 fe ff ff", -364, -1, "-36.4"),
    ("01 00 00 7f", 1, 127, "1E+127"),
    ("01 00 00 80", 1, -128, "1E-128"),
    ("ff ff 7f 01", 8388607, 1, "8.388607E+7"),  # NaN's mantissa, exponent 1: a number
]


@pytest.mark.parametrize(("hex_le", "mantissa", "exponent", "text"), FLOAT_LITERALS)
def test_float_literals(hex_le: str, mantissa: int, exponent: int, text: str) -> None:
    v = float32(hex_le)
    assert (v.mantissa, v.exponent, v.special) == (mantissa, exponent, None)
    assert v.value is not None and v.value.as_tuple() == Decimal(text).as_tuple()
    assert float_to_raw(v).to_bytes(4, "little") == bytes.fromhex(hex_le)


SPECIALS = [
    (Special.NAN, 0x07FF, 0x007FFFFF),
    (Special.NRES, 0x0800, 0x00800000),
    (Special.POSITIVE_INFINITY, 0x07FE, 0x007FFFFE),
    (Special.NEGATIVE_INFINITY, 0x0802, 0x00800002),
    (Special.RESERVED, 0x0801, 0x00800001),
]


@pytest.mark.parametrize(("special", "sraw", "fraw"), SPECIALS)
def test_specials_decode_and_encode_canonically(special: Special, sraw: int, fraw: int) -> None:
    for decoded in (sfloat_from_raw(sraw), float_from_raw(fraw)):
        assert decoded.special is special
        assert decoded.value is None
        assert decoded.exponent == 0
    assert sfloat_to_raw(sfloat_from_raw(sraw)) == sraw
    assert float_to_raw(float_from_raw(fraw)) == fraw
    # Whatever mantissa/exponent a special carries, the canonical pattern is written.
    assert sfloat_to_raw(MedFloat(0, 0, special)) == sraw
    assert float_to_raw(MedFloat(5, -3, special)) == fraw


def test_special_enum_values_are_the_contract() -> None:
    assert [s.value for s in Special] == ["nan", "nres", "+inf", "-inf", "reserved"]


def test_real_bp_monitor_map_nan() -> None:
    assert sfloat("ff 07").special is Special.NAN  # spec §12.3: MAP = NaN


@pytest.mark.parametrize("mantissa", [2046, 2047, -2048, -2047, -2046])
def test_sfloat_encode_rejects_mantissas_colliding_with_specials(mantissa: int) -> None:
    with pytest.raises(ValueError, match="special"):
        sfloat_to_raw(MedFloat(mantissa, 0))
    assert sfloat_from_raw(sfloat_to_raw(MedFloat(mantissa, -1))) == MedFloat(mantissa, -1)


@pytest.mark.parametrize("mantissa", [8388606, 8388607, -8388608, -8388607, -8388606])
def test_float_encode_rejects_mantissas_colliding_with_specials(mantissa: int) -> None:
    with pytest.raises(ValueError, match="special"):
        float_to_raw(MedFloat(mantissa, 0))
    assert float_from_raw(float_to_raw(MedFloat(mantissa, 2))) == MedFloat(mantissa, 2)


@pytest.mark.parametrize(
    "v", [MedFloat(2048, 0), MedFloat(-2049, 0), MedFloat(1, 8), MedFloat(1, -9)]
)
def test_sfloat_encode_rejects_out_of_range(v: MedFloat) -> None:
    with pytest.raises(ValueError):
        sfloat_to_raw(v)


@pytest.mark.parametrize(
    "v", [MedFloat(1 << 23, 0), MedFloat(-(1 << 23) - 1, 0), MedFloat(1, 128), MedFloat(1, -129)]
)
def test_float_encode_rejects_out_of_range(v: MedFloat) -> None:
    with pytest.raises(ValueError):
        float_to_raw(v)


def test_from_raw_rejects_values_wider_than_the_format() -> None:
    for bad in (-1, 0x10000):
        with pytest.raises(ValueError):
            sfloat_from_raw(bad)
    for bad in (-1, 1 << 32):
        with pytest.raises(ValueError):
            float_from_raw(bad)


def test_truncated_fields_raise_decode_error_with_field_and_offset() -> None:
    r = Reader(bytes.fromhex("00 6c 01 00"), "2A1C")
    r.u8("Flags")
    with pytest.raises(DecodeError) as info:
        read_float(r, "Temperature")
    assert (info.value.field, info.value.offset) == ("Temperature", 1)
    with pytest.raises(DecodeError) as info:
        read_sfloat(Reader(b"\x01", "2A35"), "Systolic")
    assert (info.value.field, info.value.offset) == ("Systolic", 0)


@pytest.mark.parametrize(
    ("text", "short", "expected"),
    [
        ("36.4", True, MedFloat(364, -1)),
        ("65.700", False, MedFloat(65700, -3)),  # FLOAT keeps the three decimals
        ("65.70", True, MedFloat(657, -1)),  # 6570 does not fit 12 bits: trailing zero dropped
        ("36400", True, MedFloat(364, 2)),
        ("1E+8", True, MedFloat(10, 7)),  # exponent too large: moved into the mantissa
        ("0E-20", True, MedFloat(0, -8)),
        ("-0.001", True, MedFloat(-1, -3)),
        ("2046", False, MedFloat(2046, 0)),  # only an SFLOAT special, fine as FLOAT
        ("NaN", True, MedFloat(0, 0, Special.NAN)),
        ("Infinity", False, MedFloat(0, 0, Special.POSITIVE_INFINITY)),
        ("-Infinity", True, MedFloat(0, 0, Special.NEGATIVE_INFINITY)),
    ],
)
def test_from_decimal_exact(text: str, short: bool, expected: MedFloat) -> None:
    assert MedFloat.from_decimal(Decimal(text), short=short) == expected


@pytest.mark.parametrize(
    ("text", "short"),
    [
        ("2046", True),  # +INF pattern, no other exact form
        ("2047", True),
        ("-2048", True),
        ("2048.1", True),
        ("1E-9", True),
        ("0.123456789", False),
        ("8388607", False),
        ("1E+200", False),
    ],
)
def test_from_decimal_refuses_what_does_not_fit(text: str, short: bool) -> None:
    with pytest.raises(ValueError, match="no exact"):
        MedFloat.from_decimal(Decimal(text), short=short)


def test_every_sfloat_pattern_round_trips() -> None:
    for raw in range(0x10000):
        assert sfloat_to_raw(sfloat_from_raw(raw)) == raw


@given(st.integers(0, 0xFFFFFFFF))
def test_float_raw_round_trip(raw: int) -> None:
    assert float_to_raw(float_from_raw(raw)) == raw


@given(st.integers(-2048, 2047), st.integers(-8, 7))
def test_sfloat_value_round_trip(mantissa: int, exponent: int) -> None:
    v = MedFloat(mantissa, exponent)
    if exponent == 0 and not -2045 <= mantissa <= 2045:
        return  # collides with a special: covered by the rejection tests
    assert sfloat_from_raw(sfloat_to_raw(v)) == v
    assert v.value is not None
    again = MedFloat.from_decimal(v.value, short=True)
    assert again.value == v.value


@given(st.integers(-(1 << 23), (1 << 23) - 1), st.integers(-128, 127))
def test_float_value_round_trip(mantissa: int, exponent: int) -> None:
    v = MedFloat(mantissa, exponent)
    if exponent == 0 and not -8388605 <= mantissa <= 8388605:
        return
    assert float_from_raw(float_to_raw(v)) == v
    assert v.value is not None
    assert MedFloat.from_decimal(v.value, short=False).value == v.value


@given(st.decimals(allow_nan=False, allow_infinity=False, places=None), st.booleans())
def test_from_decimal_is_exact_or_refuses(d: Decimal, short: bool) -> None:
    try:
        v = MedFloat.from_decimal(d, short=short)
    except ValueError:
        return
    assert v.value == d
    to_raw, from_raw = (sfloat_to_raw, sfloat_from_raw) if short else (float_to_raw, float_from_raw)
    assert from_raw(to_raw(v)).value == d
