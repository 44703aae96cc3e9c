"""Device Information: System ID (0x2A23) and the UTF-8 strings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.codecs import (
    DECODERS,
    DIS_STRINGS,
    DecodeError,
    SystemId,
    decode_dis_string,
    encode_dis_string,
)


def test_system_id_xml_example() -> None:
    sid = SystemId.decode(bytes.fromhex("de bc 9a fe ff 56 34 12"))
    assert sid == SystemId(0xFFFE9ABCDE, 0x123456)
    assert sid.eui64 == "123456FFFE9ABCDE"
    assert sid.dashed == "12-34-56-FF-FE-9A-BC-DE"
    assert sid.encode() == bytes.fromhex("de bc 9a fe ff 56 34 12")


def test_system_id_hand_computed() -> None:
    # uint64 LE 0x0807060504030201: OUI = top 24 bits, manufacturer id = low 40 bits
    sid = SystemId.decode(bytes(range(1, 9)))
    assert (sid.oui, sid.manufacturer_id) == (0x080706, 0x0504030201)
    assert sid.eui64 == "0807060504030201"


@pytest.mark.parametrize(
    ("hex_value", "field", "offset"),
    [
        ("", "Manufacturer Identifier", 0),
        ("de bc 9a fe", "Manufacturer Identifier", 0),
        ("de bc 9a fe ff 56 34", "Organizationally Unique Identifier", 5),
        ("de bc 9a fe ff 56 34 12 00", "System ID", 8),  # fixed size: no trailing bytes
    ],
)
def test_system_id_wrong_length(hex_value: str, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        SystemId.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A23",
        field,
        offset,
    )


@pytest.mark.parametrize(
    "text", ["123456FFFE9ABCDE", "12-34-56-ff-fe-9a-bc-de", "12:34:56:FF:FE:9A:BC:DE"]
)
def test_system_id_from_eui64(text: str) -> None:
    assert SystemId.from_eui64(text) == SystemId(0xFFFE9ABCDE, 0x123456)


@pytest.mark.parametrize("text", ["", "123456FFFE9ABC", "123456FFFE9ABCDEFF", "G23456FFFE9ABCDE"])
def test_system_id_from_eui64_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        SystemId.from_eui64(text)


@pytest.mark.parametrize("sid", [SystemId(1 << 40, 0), SystemId(0, 1 << 24), SystemId(-1, 0)])
def test_system_id_encode_refuses_out_of_range(sid: SystemId) -> None:
    with pytest.raises(ValueError):
        sid.encode()


@given(st.integers(0, (1 << 40) - 1), st.integers(0, (1 << 24) - 1))
def test_system_id_round_trip(manufacturer_id: int, oui: int) -> None:
    sid = SystemId(manufacturer_id, oui)
    data = sid.encode()
    assert int.from_bytes(data, "little") == oui << 40 | manufacturer_id
    assert SystemId.decode(data) == sid
    assert SystemId.from_eui64(sid.eui64) == sid
    assert SystemId.from_eui64(sid.dashed) == sid


# --- strings ---------------------------------------------------------------------------------


def test_omron_manufacturer_name() -> None:
    data = bytes.fromhex("4f4d524f4e4845414c544843415245")
    assert decode_dis_string(data, "2A29") == "OMRONHEALTHCARE"
    assert encode_dis_string("OMRONHEALTHCARE") == data


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"UC-352BLE\x00\x00\x00", "UC-352BLE"),  # NUL padding removed
        (b"A\x00B", "A\x00B"),  # only trailing NULs are padding
        (b"", ""),
        (b"\x00", ""),
        ("Größe Ω".encode(), "Größe Ω"),
        (b" 1.0 ", " 1.0 "),  # whitespace is content, not padding
    ],
)
def test_dis_string_decoding(data: bytes, text: str) -> None:
    assert decode_dis_string(data, "2A26") == text


@pytest.mark.parametrize(("uuid", "name"), sorted(DIS_STRINGS.items()))
def test_invalid_utf8_names_the_characteristic_field(uuid: str, name: str) -> None:
    with pytest.raises(DecodeError) as info:
        DECODERS[uuid](b"AB\xc3\x28")  # 0xC3 starts a 2-byte sequence, 0x28 cannot continue it
    assert (info.value.characteristic, info.value.field, info.value.offset) == (uuid, name, 2)


def test_invalid_utf8_offset_points_at_the_bad_byte() -> None:
    with pytest.raises(DecodeError) as info:
        decode_dis_string(b"\xff", "2A25")
    assert (info.value.field, info.value.offset) == ("Serial Number String", 0)
    with pytest.raises(DecodeError) as info:
        decode_dis_string(b"ok\x00\xfe\x00", "2A25")  # a bad byte before the padding
    assert info.value.offset == 3


def test_unknown_uuid_uses_a_generic_field_name() -> None:
    with pytest.raises(DecodeError) as info:
        decode_dis_string(b"\xff", "2A00")
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A00",
        "String",
        0,
    )


def test_encode_refuses_trailing_nul_and_surrogates() -> None:
    with pytest.raises(ValueError):
        encode_dis_string("abc\x00")
    with pytest.raises(ValueError):
        encode_dis_string("\ud800")


@given(st.text().filter(lambda t: not t.endswith("\x00")))
def test_dis_string_round_trip(text: str) -> None:
    try:
        data = encode_dis_string(text)
    except UnicodeEncodeError:
        return  # lone surrogates have no UTF-8 form
    assert decode_dis_string(data, "2A24") == text
