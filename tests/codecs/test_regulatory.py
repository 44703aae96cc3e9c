"""IEEE 11073-20601 Regulatory Certification Data List (0x2A2A): opaque bytes, best-effort text.

The public vector is in vectors_time_user.json, with its provenance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.codecs.regulatory import RegulatoryCertificationDataList

from .fuzzing import assert_only_decode_errors

VECTORS: list[dict[str, Any]] = [
    v
    for v in json.loads(
        (Path(__file__).parent / "vectors_time_user.json").read_text(encoding="utf-8")
    )
    if v["characteristic"] == "0x2A2A"
]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["hex"])
def test_public_vector(vector: dict[str, Any]) -> None:
    # Flagged uncertain because the list's byte order is unresolved (spec §10.1). What the spec
    # does settle is checked: the bytes are stored as they came, and 16 zero octets read as an
    # empty list (count 0, length 0) plus 12 trailing zero octets in either byte order.
    data = bytes.fromhex(vector["hex"])
    value = RegulatoryCertificationDataList.decode(data)
    for key, want in vector["expected"].items():
        if key == "opaque":
            assert want is True
            assert value.raw == data
        elif key == "note":
            assert "count 0, length 0, 12 trailing zero octets" in want
            assert value.describe() == (
                "IEEE 11073-20601 reg-cert-data-list (same in either byte order): "
                "no entries, 12 trailing octets"
            )
        else:
            pytest.fail(f"unchecked expected key {key!r}")
    assert value.encode() == data


def test_public_vector_present() -> None:
    assert [v["hex"] for v in VECTORS] == ["00" * 16]


# Hand-computed MDER (big-endian) list: count 2, length 0x12 = 18;
#   Continua (02) version struct (01), 8 octets: IG 1.6, certified classes count 1 length 2 [0x1007]
#   Continua (02) regulation struct (02), 2 octets: 0x8000 = bit 0 (unregulated device)
CONTINUA_BE = bytes.fromhex("0002 0012 0201 0008 0106 0001 0002 1007 0202 0002 8000")
# The same list with every 16-bit number little-endian (as Wireshark's dissector reads it).
CONTINUA_LE = bytes.fromhex("0200 1200 0201 0800 0106 0100 0200 0710 0202 0200 0080")
CONTINUA_TEXT = (
    "2 entries: Continua IG version 1.6, certified device classes [0x1007]; "
    "Continua regulation bits 0x8000 (unregulated device)"
)


@pytest.mark.parametrize(
    ("data", "order"),
    [(CONTINUA_BE, "big-endian, MDER"), (CONTINUA_LE, "little-endian")],
)
def test_describe_names_the_byte_order_that_parses(data: bytes, order: str) -> None:
    value = RegulatoryCertificationDataList.decode(data)
    assert value.raw == data
    assert value.describe() == f"IEEE 11073-20601 reg-cert-data-list ({order}): {CONTINUA_TEXT}"
    assert value.encode() == data


NOT_A_LIST = "not a well-formed reg-cert-data-list in either byte order"


@pytest.mark.parametrize(
    ("hex_value", "text"),
    [
        ("", "empty value"),
        ("00", f"opaque, 1 octet: {NOT_A_LIST}"),
        ("0001 0000", f"opaque, 4 octets: {NOT_A_LIST}"),  # count 1 (256 LE), no entry bytes
        ("0000 0004 00", f"opaque, 5 octets: {NOT_A_LIST}"),  # length 4 (1024 LE) > what is left
        ("0001 0004 0201 0003", f"opaque, 8 octets: {NOT_A_LIST}"),  # entry overruns the list
        ("0001 0005 0201 0000 ff", f"opaque, 9 octets: {NOT_A_LIST}"),  # byte left in the list
    ],
)
def test_describe_without_a_list(hex_value: str, text: str) -> None:
    assert RegulatoryCertificationDataList.decode(bytes.fromhex(hex_value)).describe() == text


def test_describe_other_bodies_and_malformed_continua_structs() -> None:
    # Big-endian count 3, length 0x13 = 19: IEEE 11073 (1) structure 5 with 1 octet; a Continua
    # version struct too short for its certified-class list (4 octets); a Continua regulation
    # struct with bit 0 clear. Little-endian the count would be 0x0300: only one order parses.
    data = bytes.fromhex("0003 0013 0105 0001 aa 0201 0004 0106 0001 0202 0002 0102")
    assert RegulatoryCertificationDataList.decode(data).describe() == (
        "IEEE 11073-20601 reg-cert-data-list (big-endian, MDER): 3 entries: "
        "authorizing body 1 (IEEE 11073) structure 5, 1 octet; "
        "authorizing body 2 (Continua) structure 1, 4 octets; "
        "Continua regulation bits 0x0102"
    )
    reserved = bytes.fromhex("0001 0004 0700 0000")
    assert RegulatoryCertificationDataList.decode(reserved).describe() == (
        "IEEE 11073-20601 reg-cert-data-list (big-endian, MDER): 1 entry: "
        "authorizing body 7 (reserved) structure 0, 0 octets"
    )
    # Continua version struct whose inner length disagrees with its count (2 classes, 2 octets)
    bad_inner = bytes.fromhex("0001 000c 0201 0008 0106 0002 0002 1007")
    assert (
        RegulatoryCertificationDataList.decode(bad_inner)
        .describe()
        .endswith("authorizing body 2 (Continua) structure 1, 8 octets")
    )


def test_describe_reports_when_both_byte_orders_parse_differently() -> None:
    # count 0x0101 = 257 either way; 256 empty entries, then a Continua regulation entry whose
    # length bytes 00 02 read 2 big-endian but 512 little-endian. List length 04 06 = 1030 big-
    # endian (510 trailing octets), 0x0604 = 1540 little-endian (no trailing octets).
    data = (
        bytes.fromhex("0101 0406") + bytes(4 * 256) + bytes.fromhex("0202 0002 8000") + bytes(510)
    )
    assert len(data) == 4 + 1540
    text = RegulatoryCertificationDataList.decode(data).describe()
    assert text.startswith("IEEE 11073-20601 reg-cert-data-list, byte order ambiguous: ")
    big, little = text.split("; little-endian ")
    assert big.endswith("Continua regulation bits 0x8000 (unregulated device), 510 trailing octets")
    assert little.startswith("257 entries: ")
    assert little.endswith("authorizing body 2 (Continua) structure 2, 512 octets")


ByteOrder = Literal["big", "little"]
BYTE_ORDERS: list[ByteOrder] = ["big", "little"]


@st.composite
def reg_cert_lists(draw: st.DrawFn) -> tuple[bytes, ByteOrder]:
    """Well-formed lists in one byte order (entries with arbitrary bodies and data)."""
    order = draw(st.sampled_from(BYTE_ORDERS))
    entries = draw(
        st.lists(st.tuples(st.integers(0, 0xFF), st.integers(0, 0xFF), st.binary(max_size=8)))
    )
    body = b"".join(
        bytes([auth, structure]) + len(data).to_bytes(2, order) + data
        for auth, structure, data in entries
    )
    head = len(entries).to_bytes(2, order) + len(body).to_bytes(2, order)
    return head + body + draw(st.binary(max_size=4)), order


LABELS = {"big": "(big-endian, MDER)", "little": "(little-endian)"}


@given(reg_cert_lists())
def test_well_formed_lists_are_recognised(case: tuple[bytes, ByteOrder]) -> None:
    data, order = case
    value = RegulatoryCertificationDataList.decode(data)
    assert value.encode() == data
    text = value.describe()
    # A list built in one order may parse in the other too (e.g. when it is empty).
    assert any(
        text.startswith(f"IEEE 11073-20601 reg-cert-data-list{label}")
        for label in (f" {LABELS[order]}", " (same in either byte order)", ", byte order ambiguous")
    )


@given(st.binary(max_size=64))
def test_any_bytes_round_trip_and_describe_never_raises(data: bytes) -> None:
    value = RegulatoryCertificationDataList.decode(data)
    assert value == RegulatoryCertificationDataList(data)
    assert value.encode() == data
    assert isinstance(value.describe(), str)


FUZZ_RUNS = 100_000


def _decode_and_describe(data: bytes) -> RegulatoryCertificationDataList:
    value = RegulatoryCertificationDataList.decode(data)
    value.describe()  # must never raise either
    return value


def test_fuzz_only_decode_errors() -> None:
    decoded = assert_only_decode_errors(
        "regulatory-2A2A", _decode_and_describe, [CONTINUA_BE, CONTINUA_LE, bytes(16)], FUZZ_RUNS
    )
    assert decoded == FUZZ_RUNS  # opaque: every value decodes
