"""IEEE-11073 SFLOAT (16-bit) and FLOAT (32-bit) numbers, kept exact.

Health values must keep the device's precision (65.700 kg is not 65.7), so a number is stored as
its integer mantissa and base-10 exponent and only turned into a ``Decimal``, never a float.
The exponent is plain two's complement (spec §1.2, §12.4): a biased reading would silently turn
``32 80`` into 50 instead of 50e-8. Special values are explicit markers, because a stack that
does not map them reports NaN as 2047 (spec §1.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from ._cursor import Reader, Writer


class Special(StrEnum):
    """The reserved raw patterns that carry no number."""

    NAN = "nan"
    NRES = "nres"
    POSITIVE_INFINITY = "+inf"
    NEGATIVE_INFINITY = "-inf"
    RESERVED = "reserved"


@dataclass(frozen=True, slots=True)
class MedFloat:
    """``mantissa`` x 10^``exponent``, or a special value.

    For a decoded special, ``mantissa`` and ``exponent`` hold the raw fields as received (e.g.
    SFLOAT NaN is mantissa 2047, exponent 0); when encoding a special they are ignored and the
    canonical raw pattern is written.
    """

    mantissa: int
    exponent: int
    special: Special | None = None

    @property
    def value(self) -> Decimal | None:
        """The exact number (``364``/``-1`` gives ``Decimal('36.4')``), ``None`` for a special."""
        if self.special is not None:
            return None
        return _exact(self.mantissa, self.exponent)

    @classmethod
    def from_decimal(cls, d: Decimal, *, short: bool) -> MedFloat:
        """The exact SFLOAT (``short``) or FLOAT for ``d``; ValueError when none exists.

        Keeps ``d``'s own exponent when it fits, so ``Decimal('65.70')`` stays two decimals.
        Decimal NaN and infinities map to the matching special values.
        """
        layout = _SFLOAT if short else _FLOAT
        if d.is_nan():
            return cls(0, 0, Special.NAN)
        if d.is_infinite():
            return cls(0, 0, Special.NEGATIVE_INFINITY if d < 0 else Special.POSITIVE_INFINITY)
        sign, digits, exponent = d.as_tuple()
        assert isinstance(exponent, int)  # finite Decimals always have an int exponent
        mantissa = int("".join(map(str, digits)))
        if sign:
            mantissa = -mantissa
        if mantissa == 0:
            return cls(0, min(max(exponent, layout.exp_min), layout.exp_max))
        # Too large an exponent: move powers of ten into the mantissa while it still fits.
        while exponent > layout.exp_max and layout.mantissa_fits(mantissa * 10):
            mantissa *= 10
            exponent -= 1
        # Too many digits or too small an exponent: drop trailing zeros (value unchanged).
        while not layout.representable(mantissa, exponent) and mantissa % 10 == 0:
            mantissa //= 10
            exponent += 1
        if not layout.representable(mantissa, exponent):
            name = "SFLOAT" if short else "FLOAT"
            raise ValueError(f"{d} has no exact {name} representation")
        return cls(mantissa, exponent)


@dataclass(frozen=True, slots=True)
class _Layout:
    """Field widths and reserved patterns of one of the two formats."""

    mantissa_bits: int
    exponent_bits: int
    specials: dict[int, Special]  # raw value -> meaning (all at exponent 0)
    canonical: dict[Special, int]

    @property
    def exp_min(self) -> int:
        return -(1 << (self.exponent_bits - 1))

    @property
    def exp_max(self) -> int:
        return (1 << (self.exponent_bits - 1)) - 1

    def mantissa_fits(self, mantissa: int) -> bool:
        half = 1 << (self.mantissa_bits - 1)
        return -half <= mantissa < half

    def representable(self, mantissa: int, exponent: int) -> bool:
        """In range and not one of the reserved patterns (they are checked at exponent 0)."""
        if not (self.mantissa_fits(mantissa) and self.exp_min <= exponent <= self.exp_max):
            return False
        return not (exponent == 0 and self._pack(mantissa, 0) in self.specials)

    def _pack(self, mantissa: int, exponent: int) -> int:
        mantissa_mask = (1 << self.mantissa_bits) - 1
        exponent_mask = (1 << self.exponent_bits) - 1
        return ((exponent & exponent_mask) << self.mantissa_bits) | (mantissa & mantissa_mask)

    def from_raw(self, raw: int) -> MedFloat:
        total = self.mantissa_bits + self.exponent_bits
        if not 0 <= raw < 1 << total:
            raise ValueError(f"raw value does not fit in {total} bits")
        mantissa = _signed(raw & ((1 << self.mantissa_bits) - 1), self.mantissa_bits)
        exponent = _signed(raw >> self.mantissa_bits, self.exponent_bits)
        return MedFloat(mantissa, exponent, self.specials.get(raw))

    def to_raw(self, v: MedFloat) -> int:
        if v.special is not None:
            return self.canonical[v.special]
        if not self.mantissa_fits(v.mantissa):
            raise ValueError(f"mantissa does not fit in {self.mantissa_bits} bits")
        if not self.exp_min <= v.exponent <= self.exp_max:
            raise ValueError(f"exponent outside {self.exp_min}..{self.exp_max}")
        if not self.representable(v.mantissa, v.exponent):
            raise ValueError("mantissa collides with a special value at exponent 0")
        return self._pack(v.mantissa, v.exponent)


def _signed(value: int, bits: int) -> int:
    """Two's-complement reading of an unsigned ``bits``-wide field."""
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def _exact(mantissa: int, exponent: int) -> Decimal:
    """``mantissa`` x 10^``exponent`` built without any rounding context."""
    return Decimal((1 if mantissa < 0 else 0, tuple(map(int, str(abs(mantissa)))), exponent))


def _layout(mantissa_bits: int, exponent_bits: int, specials: dict[int, Special]) -> _Layout:
    return _Layout(
        mantissa_bits=mantissa_bits,
        exponent_bits=exponent_bits,
        specials=specials,
        canonical={meaning: raw for raw, meaning in specials.items()},
    )


_SFLOAT = _layout(
    12,
    4,
    {
        0x07FF: Special.NAN,
        0x0800: Special.NRES,
        0x07FE: Special.POSITIVE_INFINITY,
        0x0802: Special.NEGATIVE_INFINITY,
        0x0801: Special.RESERVED,
    },
)
_FLOAT = _layout(
    24,
    8,
    {
        0x007FFFFF: Special.NAN,
        0x00800000: Special.NRES,
        0x007FFFFE: Special.POSITIVE_INFINITY,
        0x00800002: Special.NEGATIVE_INFINITY,
        0x00800001: Special.RESERVED,
    },
)


def sfloat_from_raw(raw: int) -> MedFloat:
    """Decode a 16-bit SFLOAT already read as an unsigned integer (every pattern is valid)."""
    return _SFLOAT.from_raw(raw)


def sfloat_to_raw(v: MedFloat) -> int:
    """Encode as a 16-bit SFLOAT; ValueError when out of range or colliding with a special."""
    return _SFLOAT.to_raw(v)


def float_from_raw(raw: int) -> MedFloat:
    """Decode a 32-bit FLOAT already read as an unsigned integer (every pattern is valid)."""
    return _FLOAT.from_raw(raw)


def float_to_raw(v: MedFloat) -> int:
    """Encode as a 32-bit FLOAT; ValueError when out of range or colliding with a special."""
    return _FLOAT.to_raw(v)


def read_sfloat(reader: Reader, field: str) -> MedFloat:
    """Read one SFLOAT field from a characteristic value."""
    return sfloat_from_raw(reader.u16(field))


def read_float(reader: Reader, field: str) -> MedFloat:
    """Read one FLOAT field from a characteristic value."""
    return float_from_raw(reader.u32(field))


def write_sfloat(writer: Writer, v: MedFloat) -> None:
    writer.u16(sfloat_to_raw(v))


def write_float(writer: Writer, v: MedFloat) -> None:
    writer.u32(float_to_raw(v))
