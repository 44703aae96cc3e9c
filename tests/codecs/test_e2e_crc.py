"""E2E-CRC: CRC-16/MCRF4XX (spec §1.5), checked against the spec's check values, the public
CRC16 vector (vectors_cgm.json) and a bit-by-bit reference implementation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.codecs._cursor import Reader, Writer
from drivers.codecs.e2e_crc import (
    CRC_SIZE,
    append_crc,
    crc16_mcrf4xx,
    has_valid_crc,
    read_crc,
    write_crc,
)
from drivers.codecs.errors import DecodeError

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors_cgm.json").read_text(encoding="utf-8")
)
CRC_VECTORS = [v for v in VECTORS if v["characteristic"] == "CRC16"]


def reference_crc(data: bytes, *, poly: int = 0x8408, init: int = 0xFFFF) -> int:
    """Bit by bit, LSB first: the textbook form the table must agree with."""
    crc = init
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
    return crc


def test_check_value() -> None:
    assert crc16_mcrf4xx(b"123456789") == 0x6F91


def test_cgms_spec_example_is_sent_little_endian() -> None:
    data = bytes.fromhex("3e 01 02 03 04 05 06 07 08 09")
    assert crc16_mcrf4xx(data) == 0x2F01
    assert append_crc(data) == data + b"\x01\x2f"  # the CGMS 1.0.1 PDF prints it as 0x012F


def test_not_ccitt_false_nor_kermit() -> None:
    # The same polynomial in the other conventions gives other values (spec §1.5).
    assert crc16_mcrf4xx(b"123456789") != 0x29B1  # CRC-16/CCITT-FALSE
    assert crc16_mcrf4xx(b"123456789") != reference_crc(b"123456789", init=0)  # KERMIT


def test_empty_input_is_the_seed() -> None:
    assert crc16_mcrf4xx(b"") == 0xFFFF


@pytest.mark.parametrize("vector", CRC_VECTORS, ids=[v["hex"] for v in CRC_VECTORS])
def test_public_crc_vector(vector: dict[str, Any]) -> None:
    assert vector["source"] and vector["provenance"] == "literal"
    data = bytes.fromhex(vector["hex"])
    expected = vector["expected"]
    assert set(expected) == {"algorithm", "crc", "appended_on_wire"}
    assert expected["algorithm"].startswith("CRC-16/MCRF4XX")
    assert crc16_mcrf4xx(data) == int(expected["crc"], 16)
    assert append_crc(data)[-CRC_SIZE:] == bytes.fromhex(expected["appended_on_wire"])
    assert has_valid_crc(append_crc(data))


def test_vector_file_holds_one_crc_vector() -> None:
    assert len(CRC_VECTORS) == 1


def test_nordic_corrupted_socp_vector_fails() -> None:
    # Spec §12.8: Nordic's test value 1C 02 02 A7 01 is a corrupted copy of 1C 02 02 A7 09
    # (CRC 0x09A7 over 1C 02 02); only the latter verifies.
    assert crc16_mcrf4xx(bytes.fromhex("1c0202")) == 0x09A7
    assert has_valid_crc(bytes.fromhex("1c0202a709"))
    assert not has_valid_crc(bytes.fromhex("1c0202a701"))


@pytest.mark.parametrize("hex_value", ["", "00", "ff"])
def test_too_short_for_a_crc(hex_value: str) -> None:
    assert not has_valid_crc(bytes.fromhex(hex_value))


def test_single_bit_flips_are_detected() -> None:
    value = append_crc(bytes.fromhex("0f e3 d2e4 0500 02 14 ff 02f0 e5f3"))
    assert value[-2:] == bytes.fromhex("8e3f")
    for i in range(len(value) * 8):
        corrupted = bytearray(value)
        corrupted[i // 8] ^= 1 << (i % 8)
        assert not has_valid_crc(corrupted)


@given(st.binary(max_size=64))
def test_table_matches_bitwise_reference(data: bytes) -> None:
    assert crc16_mcrf4xx(data) == reference_crc(data)
    assert has_valid_crc(append_crc(data))
    assert crc16_mcrf4xx(bytearray(data)) == crc16_mcrf4xx(memoryview(data))


def test_read_crc_checks_from_start() -> None:
    data = bytes.fromhex("aa 1c0202 a709")
    reader = Reader(data, "2AAC")
    reader.take(4, "skip")
    assert read_crc(reader, 1) == 0x09A7
    assert reader.remaining == 0


def test_read_crc_mismatch_names_field_and_offset() -> None:
    data = bytes.fromhex("1c0202 a701")
    reader = Reader(data, "2AAC")
    reader.take(3, "skip")
    with pytest.raises(DecodeError) as info:
        read_crc(reader, 0)
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2AAC",
        "E2E-CRC",
        3,
    )
    assert "a701" not in str(info.value) and "09a7" not in str(info.value).lower()


def test_read_crc_truncated() -> None:
    reader = Reader(bytes.fromhex("1c0202 a7"), "2AAC")
    reader.take(3, "skip")
    with pytest.raises(DecodeError) as info:
        read_crc(reader, 0, "CRC")
    assert (info.value.field, info.value.offset) == ("CRC", 3)


def test_write_crc_computes_or_keeps_the_given_value() -> None:
    writer = Writer()
    writer.extend(bytes.fromhex("aa 1c0202"))
    write_crc(writer, 1)
    assert writer.to_bytes() == bytes.fromhex("aa 1c0202 a709")
    forged = Writer()
    forged.extend(bytes.fromhex("1c0202"))
    write_crc(forged, crc=0x01A7)  # an emulator's deliberately wrong CRC
    assert forged.to_bytes() == bytes.fromhex("1c0202 a701")
    with pytest.raises(ValueError):
        write_crc(Writer(), crc=0x10000)
