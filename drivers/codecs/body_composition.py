"""Body Composition Service values: Body Composition Measurement (0x2A9C) and Body Composition
Feature (0x2A9B).

Raw integers are kept next to the exact computed values, as for the Weight Scale (spec §3.1,
§4.1), so ``encode(decode(x)) == x`` and provenance survives. Decisions where the spec leaves room:

* Only Body Fat has an "unsuccessful" value (0xFFFF, spec §4.1, §12.3). 0xFFFF in a mass field
  is kept as a value (327.675 kg / 655.35 lb); ``plausibility_problems`` names it so a driver can
  flag it, but the codec does not invent a meaning the layout does not define.
* Impedance is 0.1 ohm. [C] the GSS text says "M = 1, d = -2" and also "1/10 of an Ohm", the
  legacy XML says d = -1; the Beurer BF1000 capture (raw 4610 = 461.0 ohm) only fits 0.1 ohm.
* Basal metabolism is in kJ (resolution 1 kJ), never kcal.
* Decoding is strict: the Xiaomi layout without Body Fat (spec §4.1, §12.12) is not recognised
  as standard. It fails on its Time Stamp or decodes to values ``plausibility_problems`` lists.
* A record longer than ATT_MTU-3 comes as two packets with flag b12 set (spec §4.1). Each packet
  decodes on its own; ``merge_packets`` joins a pair. Buffering the first packet and flushing it
  (on a packet without b12, on disconnect or on a timeout) is the driver's job, not the codec's.
  ``split_packets`` is the inverse, for emulated scales.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar, Literal, Self, TypeVar

from ._cursor import Reader, Writer
from .date_time import SIZE as DATE_TIME_SIZE
from .date_time import DateTime
from .weight_scale import _HEIGHT_RESOLUTIONS, _WEIGHT_RESOLUTIONS, USER_UNKNOWN, Units, _table_text

BODY_FAT_UNSUCCESSFUL = 0xFFFF
ATT_DEFAULT_PAYLOAD = 20  # ATT_MTU 23 - 3 (spec §2)

_FLAG_IMPERIAL = 1 << 0
_FLAG_TIMESTAMP = 1 << 1
_FLAG_USER = 1 << 2
_FLAG_MULTIPLE_PACKET = 1 << 12
_FLAGS_RFU = 0xE000  # bits 13-15

# The flag-gated uint16 fields after User ID, in wire order: (flag bit, attribute, wire name).
_UINT16_FIELDS: tuple[tuple[int, str, str], ...] = (
    (1 << 3, "basal_metabolism_raw", "Basal Metabolism"),
    (1 << 4, "muscle_percentage_raw", "Muscle Percentage"),
    (1 << 5, "muscle_mass_raw", "Muscle Mass"),
    (1 << 6, "fat_free_mass_raw", "Fat Free Mass"),
    (1 << 7, "soft_lean_mass_raw", "Soft Lean Mass"),
    (1 << 8, "body_water_mass_raw", "Body Water Mass"),
    (1 << 9, "impedance_raw", "Impedance"),
    (1 << 10, "weight_raw", "Weight"),
    (1 << 11, "height_raw", "Height"),
)
_MASS_FIELDS = ("muscle_mass_raw", "fat_free_mass_raw", "soft_lean_mass_raw", "body_water_mass_raw")

_PERCENT_LSB = Decimal("0.1")
_IMPEDANCE_LSB = Decimal("0.1")
_MAX_PERCENT_RAW = 1000  # 100.0 %


def _mass(raw: int | None, units: Units) -> Decimal | None:
    """Exact mass: fixed LSB 0.005 kg or 0.01 lb by the units flag (spec §4.1)."""
    if raw is None:
        return None
    return raw * (Decimal("0.01") if units == Units.IMPERIAL else Decimal("0.005"))


def _percent(raw: int | None) -> Decimal | None:
    return None if raw is None else raw * _PERCENT_LSB


@dataclass(frozen=True, slots=True, kw_only=True)
class BodyCompositionMeasurement:
    """One Body Composition Measurement indication (0x2A9C), raw fields as sent.

    ``multiple_packet`` (flag b12) marks one half of a two-packet record: such a value is partial
    and should go through ``merge_packets`` before it is used as a reading.
    """

    CHARACTERISTIC: ClassVar[str] = "2A9C"

    units: Units
    body_fat_raw: int  # x0.1 %; 0xFFFF = measurement unsuccessful
    timestamp: DateTime | None = None
    user_id: int | None = None  # 0xFF = unknown user
    basal_metabolism_raw: int | None = None  # kJ
    muscle_percentage_raw: int | None = None  # x0.1 %
    muscle_mass_raw: int | None = None  # mass LSB
    fat_free_mass_raw: int | None = None  # mass LSB
    soft_lean_mass_raw: int | None = None  # mass LSB
    body_water_mass_raw: int | None = None  # mass LSB
    impedance_raw: int | None = None  # x0.1 ohm
    weight_raw: int | None = None  # mass LSB (0xFFFF is a value here, see module docstring)
    height_raw: int | None = None  # x0.001 m or x0.1 in
    multiple_packet: bool = False  # flag b12
    rfu_flags: int = 0  # flag bits 13-15, in place, as received
    trailing: bytes = b""  # extra bytes after the last flagged field (tolerated, spec §1.1)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        flags = reader.u16("Flags")
        body_fat_raw = reader.u16("Body Fat Percentage")
        timestamp = DateTime.read(reader, "Time Stamp") if flags & _FLAG_TIMESTAMP else None
        user_id = reader.u8("User ID") if flags & _FLAG_USER else None
        values = {
            attribute: reader.u16(name) if flags & bit else None
            for bit, attribute, name in _UINT16_FIELDS
        }
        return cls(
            units=Units(flags & _FLAG_IMPERIAL),
            body_fat_raw=body_fat_raw,
            timestamp=timestamp,
            user_id=user_id,
            multiple_packet=bool(flags & _FLAG_MULTIPLE_PACKET),
            rfu_flags=flags & _FLAGS_RFU,
            trailing=reader.rest(),
            **values,
        )

    def encode(self) -> bytes:
        """Rebuild the value; ValueError for fields the wire format cannot carry."""
        if self.rfu_flags & ~_FLAGS_RFU:
            raise ValueError("rfu_flags may only hold flag bits 13-15 (mask 0xE000)")
        writer = Writer()
        writer.u16(self.flags, "Flags")
        writer.u16(self.body_fat_raw, "Body Fat Percentage")
        if self.timestamp is not None:
            self.timestamp.write(writer)
        if self.user_id is not None:
            writer.u8(self.user_id, "User ID")
        for _, attribute, name in _UINT16_FIELDS:
            raw = getattr(self, attribute)
            if raw is not None:
                writer.u16(raw, name)
        writer.extend(self.trailing)
        return writer.to_bytes()

    @property
    def flags(self) -> int:
        """The 16-bit flags implied by the fields (equals the received ones after decode)."""
        flags = Units(self.units).value | self.rfu_flags
        if self.timestamp is not None:
            flags |= _FLAG_TIMESTAMP
        if self.user_id is not None:
            flags |= _FLAG_USER
        for bit, attribute, _ in _UINT16_FIELDS:
            if getattr(self, attribute) is not None:
                flags |= bit
        if self.multiple_packet:
            flags |= _FLAG_MULTIPLE_PACKET
        return flags

    @property
    def unsuccessful(self) -> bool:
        """The scale reported a failed measurement (Body Fat 0xFFFF)."""
        return self.body_fat_raw == BODY_FAT_UNSUCCESSFUL

    @property
    def user_unknown(self) -> bool:
        """User ID present but 0xFF: the scale could not tell who stood on it."""
        return self.user_id == USER_UNKNOWN

    @property
    def body_fat(self) -> Decimal | None:
        """Exact body fat in %; None when the measurement was unsuccessful."""
        return None if self.unsuccessful else _percent(self.body_fat_raw)

    @property
    def basal_metabolism(self) -> int | None:
        """Basal metabolism in kJ (not kcal), None when absent."""
        return self.basal_metabolism_raw

    @property
    def basal_metabolism_unit(self) -> Literal["kJ"]:
        """UCUM unit of ``basal_metabolism``."""
        return "kJ"

    @property
    def muscle_percentage(self) -> Decimal | None:
        """Exact muscle percentage in %, None when absent."""
        return _percent(self.muscle_percentage_raw)

    @property
    def percentage_unit(self) -> Literal["%"]:
        """UCUM unit of ``body_fat`` and ``muscle_percentage``."""
        return "%"

    @property
    def muscle_mass(self) -> Decimal | None:
        """Exact muscle mass in ``mass_unit``, None when absent."""
        return _mass(self.muscle_mass_raw, self.units)

    @property
    def fat_free_mass(self) -> Decimal | None:
        """Exact fat free mass in ``mass_unit``, None when absent."""
        return _mass(self.fat_free_mass_raw, self.units)

    @property
    def soft_lean_mass(self) -> Decimal | None:
        """Exact soft lean mass in ``mass_unit``, None when absent."""
        return _mass(self.soft_lean_mass_raw, self.units)

    @property
    def body_water_mass(self) -> Decimal | None:
        """Exact body water mass in ``mass_unit``, None when absent."""
        return _mass(self.body_water_mass_raw, self.units)

    @property
    def weight(self) -> Decimal | None:
        """Exact weight in ``mass_unit``, None when absent."""
        return _mass(self.weight_raw, self.units)

    @property
    def mass_unit(self) -> Literal["kg", "[lb_av]"]:
        """UCUM unit of every mass field (weight included)."""
        return "[lb_av]" if self.units == Units.IMPERIAL else "kg"

    @property
    def impedance(self) -> Decimal | None:
        """Exact impedance in ohm (0.1 ohm LSB, see the [C] note above), None when absent."""
        return None if self.impedance_raw is None else self.impedance_raw * _IMPEDANCE_LSB

    @property
    def impedance_unit(self) -> Literal["Ohm"]:
        """UCUM unit of ``impedance``."""
        return "Ohm"

    @property
    def height(self) -> Decimal | None:
        """Exact height in ``height_unit``, None when absent."""
        if self.height_raw is None:
            return None
        lsb = Decimal("0.1") if self.units == Units.IMPERIAL else Decimal("0.001")
        return self.height_raw * lsb

    @property
    def height_unit(self) -> Literal["m", "[in_i]"]:
        """UCUM unit of ``height``."""
        return "[in_i]" if self.units == Units.IMPERIAL else "m"

    def plausibility_problems(self) -> list[str]:
        """What a conformant value from a person should not contain (spec §4.1, §13).

        The codec decodes strictly and leaves the verdict to the driver, which can mark the
        reading or fall back to a vendor handler. Messages name fields, never values.
        """
        problems: list[str] = []
        if not self.unsuccessful and self.body_fat_raw > _MAX_PERCENT_RAW:
            problems.append("Body Fat Percentage above 100 %")
        if self.body_fat_raw == 0:
            problems.append("Body Fat Percentage is 0 % (device may mean 'not measured')")
        if self.muscle_percentage_raw is not None and self.muscle_percentage_raw > _MAX_PERCENT_RAW:
            problems.append("Muscle Percentage above 100 %")
        if self.unsuccessful and self._present_measurement_fields():
            problems.append(
                "fields other than Time Stamp and User ID sent with an unsuccessful Body Fat"
            )
        for _, attribute, name in _UINT16_FIELDS:
            if getattr(self, attribute) == 0xFFFF:
                problems.append(f"{name} is 0xFFFF (no 'unsuccessful' meaning in this field)")
        if self.weight_raw is not None:
            for attribute in _MASS_FIELDS:
                raw = getattr(self, attribute)
                if raw is not None and raw > self.weight_raw:
                    problems.append(f"{_NAMES[attribute]} above Weight")
        if self.timestamp is not None and self.timestamp.to_datetime() is None:
            problems.append("Time Stamp has an unknown year, month or day")
        if self.multiple_packet:
            problems.append("one packet of a multi-packet record (merge before use)")
        return problems

    def _present_measurement_fields(self) -> list[str]:
        return [a for _, a, _ in _UINT16_FIELDS if getattr(self, a) is not None]


_NAMES = {attribute: name for _, attribute, name in _UINT16_FIELDS}
_T = TypeVar("_T")


def merge_packets(
    first: BodyCompositionMeasurement, second: BodyCompositionMeasurement
) -> BodyCompositionMeasurement:
    """Join the two packets of a multi-packet record (flag b12, spec §4.1) into one record.

    The result holds the union of the measurement fields, Body Fat once (it is repeated in
    both packets), the first packet's Time Stamp and User ID, flag b12 cleared, the RFU flag bits
    of both packets and both packets' trailing bytes in order. A Time Stamp or User ID repeated in
    the second packet is accepted only when identical. ValueError when a packet lacks b12, the
    units differ, Body Fat differs, or a measurement field is in both packets: each means the two
    packets are not halves of the same record.
    """
    if not (first.multiple_packet and second.multiple_packet):
        raise ValueError("both packets must have the Multiple Packet Measurement flag (b12)")
    if first.units != second.units:
        raise ValueError("the two packets disagree on units")
    if first.body_fat_raw != second.body_fat_raw:
        raise ValueError("the two packets disagree on Body Fat Percentage")
    timestamp = _same_or_either(first.timestamp, second.timestamp, "Time Stamp")
    user_id = _same_or_either(first.user_id, second.user_id, "User ID")
    values: dict[str, int | None] = {}
    for _, attribute, name in _UINT16_FIELDS:
        a, b = getattr(first, attribute), getattr(second, attribute)
        if a is not None and b is not None:
            raise ValueError(f"{name} is in both packets")
        values[attribute] = a if a is not None else b
    return BodyCompositionMeasurement(
        units=first.units,
        body_fat_raw=first.body_fat_raw,
        timestamp=timestamp,
        user_id=user_id,
        multiple_packet=False,
        rfu_flags=first.rfu_flags | second.rfu_flags,
        trailing=first.trailing + second.trailing,
        **values,
    )


def _same_or_either(a: _T | None, b: _T | None, name: str) -> _T | None:
    if a is not None and b is not None and a != b:
        raise ValueError(f"the two packets disagree on {name}")
    return a if a is not None else b


def split_packets(
    record: BodyCompositionMeasurement, max_size: int = ATT_DEFAULT_PAYLOAD
) -> tuple[BodyCompositionMeasurement, ...]:
    """The packets a server sends for ``record`` (spec §4.1): itself when it fits ``max_size``,
    else two packets with b12 set, fields in wire order, the first packet filled first.

    Both packets repeat Body Fat and the RFU flag bits; trailing bytes go at the end of the
    last packet. ``merge_packets`` of the result gives ``record`` back. ValueError when the
    record already has b12 set or does not fit in two packets.
    """
    if record.multiple_packet:
        raise ValueError("record is already one packet of a multi-packet pair")
    if len(record.encode()) <= max_size:
        return (record,)
    head = 4  # Flags + Body Fat, repeated in each packet
    parts: list[tuple[str, int]] = []
    if record.timestamp is not None:
        parts.append(("timestamp", DATE_TIME_SIZE))
    if record.user_id is not None:
        parts.append(("user_id", 1))
    parts += [(a, 2) for _, a, _ in _UINT16_FIELDS if getattr(record, a) is not None]
    first_names: set[str] = set()
    used = head
    for name, size in parts:
        if used + size > max_size:
            break
        first_names.add(name)
        used += size
    second_names = {name for name, _ in parts} - first_names
    second_size = head + sum(size for name, size in parts if name in second_names)
    if not first_names or second_size + len(record.trailing) > max_size:
        raise ValueError("record does not fit in two packets of that size")
    cleared = {name: None for name, _ in parts}

    def packet(names: set[str], trailing: bytes) -> BodyCompositionMeasurement:
        kept = {name: getattr(record, name) for name in names}
        return dataclasses.replace(
            record, multiple_packet=True, trailing=trailing, **{**cleared, **kept}
        )

    return packet(first_names, b""), packet(second_names, record.trailing)


_BIT_NAMES = (
    "timestamp_supported",
    "multiple_users_supported",
    "basal_metabolism_supported",
    "muscle_percentage_supported",
    "muscle_mass_supported",
    "fat_free_mass_supported",
    "soft_lean_mass_supported",
    "body_water_mass_supported",
    "impedance_supported",
    "weight_supported",
    "height_supported",
)
_MASS_RES_SHIFT, _MASS_RES_MASK = 11, 0xF
_HEIGHT_RES_SHIFT, _HEIGHT_RES_MASK = 15, 0x7
_FEATURE_RFU = 0xFFFC0000  # bits 18-31


@dataclass(frozen=True, slots=True, kw_only=True)
class BodyCompositionFeature:
    """Body Composition Feature (0x2A9B): what the scale can send, read once per connection.

    The resolutions are display granularity (tables A and B of spec §3.2), not scale factors:
    the measurement's LSBs are fixed by its units flag.
    """

    CHARACTERISTIC: ClassVar[str] = "2A9B"

    timestamp_supported: bool = False
    multiple_users_supported: bool = False
    basal_metabolism_supported: bool = False
    muscle_percentage_supported: bool = False
    muscle_mass_supported: bool = False
    fat_free_mass_supported: bool = False
    soft_lean_mass_supported: bool = False
    body_water_mass_supported: bool = False
    impedance_supported: bool = False
    weight_supported: bool = False
    height_supported: bool = False
    mass_resolution: int = 0  # table A code (bits 11-14)
    height_resolution: int = 0  # table B code (bits 15-17)
    rfu: int = 0  # bits 18-31, in place, as received
    trailing: bytes = b""

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        bits = reader.u32("Body Composition Feature")
        supported = {name: bool(bits & 1 << i) for i, name in enumerate(_BIT_NAMES)}
        return cls(
            mass_resolution=(bits >> _MASS_RES_SHIFT) & _MASS_RES_MASK,
            height_resolution=(bits >> _HEIGHT_RES_SHIFT) & _HEIGHT_RES_MASK,
            rfu=bits & _FEATURE_RFU,
            trailing=reader.rest(),
            **supported,
        )

    def encode(self) -> bytes:
        """Rebuild the value; ValueError when a field does not fit its bits."""
        writer = Writer()
        writer.u32(self.bits, "Body Composition Feature")
        writer.extend(self.trailing)
        return writer.to_bytes()

    @property
    def bits(self) -> int:
        """The 32-bit feature word; ValueError when a code or ``rfu`` strays out of its bits."""
        if not 0 <= self.mass_resolution <= _MASS_RES_MASK:
            raise ValueError("mass_resolution is a 4-bit code (0..15)")
        if not 0 <= self.height_resolution <= _HEIGHT_RES_MASK:
            raise ValueError("height_resolution is a 3-bit code (0..7)")
        if self.rfu & ~_FEATURE_RFU:
            raise ValueError("rfu may only hold bits 18-31 (mask 0xFFFC0000)")
        bits = self.rfu
        bits |= self.mass_resolution << _MASS_RES_SHIFT
        bits |= self.height_resolution << _HEIGHT_RES_SHIFT
        for i, name in enumerate(_BIT_NAMES):
            if getattr(self, name):
                bits |= 1 << i
        return bits

    @property
    def mass_resolution_text(self) -> str:
        """Display granularity from table A, e.g. "0.5 kg / 1 lb" (not a scale factor)."""
        return _table_text(_WEIGHT_RESOLUTIONS, self.mass_resolution)

    @property
    def height_resolution_text(self) -> str:
        """Display granularity from table B, e.g. "0.01 m / 1 in"."""
        return _table_text(_HEIGHT_RESOLUTIONS, self.height_resolution)
