"""Battery Level (0x2A19)."""

from __future__ import annotations

import pytest

from drivers.codecs import BatteryLevel, DecodeError


@pytest.mark.parametrize(("hex_value", "percent"), [("00", 0), ("32", 50), ("64", 100)])
def test_valid_levels(hex_value: str, percent: int) -> None:
    level = BatteryLevel.decode(bytes.fromhex(hex_value))
    assert level == BatteryLevel(percent)
    assert level.encode() == bytes.fromhex(hex_value)


@pytest.mark.parametrize(
    ("hex_value", "offset"), [("65", 0), ("ff", 0), ("", 0), ("64 00", 1), ("65 00", 0)]
)
def test_invalid_levels(hex_value: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        BatteryLevel.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A19",
        "Battery Level",
        offset,
    )


def test_reserved_reason() -> None:
    with pytest.raises(DecodeError, match="reserved"):
        BatteryLevel.decode(b"\x65")


@pytest.mark.parametrize("percent", [101, 255, -1, 256])
def test_encode_refuses_reserved(percent: int) -> None:
    with pytest.raises(ValueError, match="reserved"):
        BatteryLevel(percent).encode()


def test_every_valid_level_round_trips() -> None:
    for percent in range(101):
        assert BatteryLevel.decode(BatteryLevel(percent).encode()).percent == percent
