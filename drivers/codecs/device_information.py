"""Device Information Service values: System ID (0x2A23) and the UTF-8 strings.

System ID is the device part of PHD identifiers (EUI-64), so it must render the same way every
time; the strings name the device in FHIR and logs, so invalid UTF-8 is an error rather than
something silently replaced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Self

from ._cursor import Reader, Writer

# UUID (4 upper-case hex digits) -> characteristic name, for the string characteristics.
DIS_STRINGS: dict[str, str] = {
    "2A29": "Manufacturer Name String",
    "2A24": "Model Number String",
    "2A25": "Serial Number String",
    "2A27": "Hardware Revision String",
    "2A26": "Firmware Revision String",
    "2A28": "Software Revision String",
}

_MANUFACTURER_BITS = 40
_OUI_BITS = 24
_EUI64 = re.compile(r"[0-9A-Fa-f]{16}")


@dataclass(frozen=True, slots=True)
class SystemId:
    """System ID (0x2A23): uint64 LE = ``oui << 40 | manufacturer_id`` (as bumble packs it).

    Exactly 8 bytes: unlike flagged measurements this value has no room to grow, so a longer
    one means the wrong characteristic or a broken stack, and guessing which 8 bytes are the ID
    would put a wrong identity on health records.
    """

    CHARACTERISTIC: ClassVar[str] = "2A23"

    manufacturer_id: int  # 40-bit, first 5 bytes on the wire
    oui: int  # 24-bit, last 3 bytes on the wire

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        manufacturer_id = reader.uint(5, "Manufacturer Identifier")
        oui = reader.u24("Organizationally Unique Identifier")
        reader.expect_end("System ID")
        return cls(manufacturer_id, oui)

    def encode(self) -> bytes:
        writer = Writer()
        writer.uint(5, self.manufacturer_id, "Manufacturer Identifier")
        writer.u24(self.oui, "Organizationally Unique Identifier")
        return writer.to_bytes()

    @classmethod
    def from_eui64(cls, text: str) -> Self:
        """Parse 16 hex digits, OUI first; ``-`` and ``:`` separators are allowed."""
        digits = text.replace("-", "").replace(":", "")
        if not _EUI64.fullmatch(digits):
            raise ValueError("an EUI-64 is 16 hex digits")
        value = int(digits, 16)
        return cls(value & ((1 << _MANUFACTURER_BITS) - 1), value >> _MANUFACTURER_BITS)

    @property
    def eui64(self) -> str:
        """16 upper-case hex digits, OUI first: the form ``DeviceIdentity.system_id`` uses."""
        if not (
            0 <= self.oui < 1 << _OUI_BITS and 0 <= self.manufacturer_id < 1 << _MANUFACTURER_BITS
        ):
            raise ValueError("System ID parts out of range")
        return f"{self.oui:06X}{self.manufacturer_id:010X}"

    @property
    def dashed(self) -> str:
        """IEEE display form, e.g. ``12-34-56-FF-FE-9A-BC-DE``."""
        hex16 = self.eui64
        return "-".join(hex16[i : i + 2] for i in range(0, 16, 2))


def decode_dis_string(data: bytes, characteristic: str) -> str:
    """Decode a DIS string: UTF-8, trailing NUL padding removed (no terminator is required).

    ``characteristic`` is the UUID as 4 hex digits; it names the value in errors.
    """
    reader = Reader(data, characteristic)
    text = reader.rest().rstrip(b"\x00")
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as exc:
        field = DIS_STRINGS.get(characteristic.upper(), "String")
        raise reader.error(field, "invalid UTF-8", exc.start) from None


def encode_dis_string(text: str) -> bytes:
    """UTF-8 without terminator; refuses a trailing NUL, which decoding would strip."""
    if text.endswith("\x00"):
        raise ValueError("a DIS string cannot end with NUL (it would not survive decoding)")
    return text.encode("utf-8")
