"""Record Access Control Point (0x2A52): client requests and server responses, both directions.

The public 0x2A52 vectors live in vectors_glucose.json (shared with test_glucose.py) and are
checked here, every ``expected`` key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from drivers.codecs import DateTime, DecodeError
from drivers.codecs.racp import (
    CGMS_TIME_OFFSET,
    GLS_SEQUENCE_NUMBER,
    GLS_USER_FACING_TIME,
    OpCode,
    Operator,
    RacpRequest,
    RacpResponse,
    ResponseCode,
    decode_racp,
)

from .fuzzing import assert_only_decode_errors
from .strategies import date_times, u8

VECTORS: list[dict[str, Any]] = [
    v
    for v in json.loads((Path(__file__).parent / "vectors_glucose.json").read_text("utf-8"))
    if v["characteristic"] == "0x2A52"
]

# 2024-02-29 23:59:58 and 23:59:59 as Date Time bytes (GLS filter 0x02 values).
DT_1 = "e807 02 1d 17 3b 3a"
DT_2 = "e807 02 1d 17 3b 3b"


# --- public vectors ----------------------------------------------------------------------------


def _named(code: int, enum: type[OpCode] | type[Operator] | type[ResponseCode], want: str) -> None:
    """``want`` is "0x01 report stored records" (or just "0x00")."""
    number, _, text = want.partition(" ")
    assert code == int(number, 16)
    if text:
        assert enum(code).name.lower().replace("_", " ") == text


def check_request(data: bytes, expected: dict[str, Any]) -> None:
    r = RacpRequest.decode(data)
    for key, want in expected.items():
        if key == "direction":
            assert want == "client->server"
        elif key == "op_code":
            _named(r.op_code, OpCode, want)
        elif key == "operator":
            _named(r.operator, Operator, want)
        else:
            pytest.fail(f"unchecked expected key {key!r}")
    assert (r.filter_type, r.operand) == (None, b"")
    assert r.encode() == data


def check_response(data: bytes, expected: dict[str, Any]) -> None:
    r = RacpResponse.decode(data)
    for key, want in expected.items():
        if key == "op_code":
            _named(r.op_code, OpCode, want)
        elif key == "operator":
            _named(data[1], Operator, want)  # a response always carries the null operator
        elif key == "request_op_code":
            assert r.request_op_code == int(want, 16)
        elif key == "response":
            assert r.response_code is not None
            _named(r.response_code, ResponseCode, want)
        elif key == "number_of_records":
            assert r.number_of_records == r.records == want
        else:
            pytest.fail(f"unchecked expected key {key!r}")
    assert r.encode() == data


@pytest.mark.parametrize("vector", VECTORS, ids=[v["hex"] for v in VECTORS])
def test_public_vector(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    expected = vector["expected"]
    # A vector without a direction is a server indication (op codes 0x05/0x06).
    if expected.get("direction") == "client->server":
        check_request(data, expected)
        assert decode_racp(data) == RacpRequest.decode(data)
    else:
        check_response(data, expected)
        assert decode_racp(data) == RacpResponse.decode(data)


def test_vector_count() -> None:
    assert len(VECTORS) == 5


# --- requests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "hex_value"),
    [
        (RacpRequest.report_all(), "0101"),
        (RacpRequest.report_first(), "0105"),
        (RacpRequest.report_last(), "0106"),
        (RacpRequest.report_greater_or_equal_sequence(0x0102), "0103 01 0201"),
        (RacpRequest.report_time_offset_at_least(720), "0103 01 d002"),
        (RacpRequest.number_of_records_all(), "0401"),
        (RacpRequest.number_of_records_greater_or_equal_sequence(7), "0403 01 0700"),
        (RacpRequest.delete_all(), "0201"),
        (RacpRequest.abort(), "0300"),
    ],
)
def test_constructors(request_: RacpRequest, hex_value: str) -> None:
    data = bytes.fromhex(hex_value)
    assert request_.encode() == data
    assert RacpRequest.decode(data) == request_


@pytest.mark.parametrize("value", [-1, 0x10000])
def test_constructors_refuse_values_outside_uint16(value: int) -> None:
    with pytest.raises(ValueError):
        RacpRequest.report_greater_or_equal_sequence(value)
    with pytest.raises(ValueError):
        RacpRequest.report_time_offset_at_least(value)
    with pytest.raises(ValueError):
        RacpRequest.number_of_records_greater_or_equal_sequence(value)


def test_filter_constants() -> None:
    assert (GLS_SEQUENCE_NUMBER, GLS_USER_FACING_TIME, CGMS_TIME_OFFSET) == (1, 2, 1)


@pytest.mark.parametrize(
    ("hex_value", "filter_type", "operand"),
    [
        ("0102 01 0a00", 1, "0a00"),  # <= sequence 10
        ("0104 01 0a00 1400", 1, "0a00 1400"),  # sequence 10..20
        ("0203 01 ffff", 1, "ffff"),
        ("0102 02 " + DT_1, 2, DT_1),  # <= user facing time
        ("0104 02 " + DT_1 + DT_2, 2, DT_1 + DT_2),
        ("0104 02 0000 00 00 00 00 00" + DT_2, 2, "0000 00 00 00 00 00" + DT_2),  # unknown date
        ("0103 09", 9, ""),  # unknown filter type: operand raw, any length
        ("0104 ff 010203", 0xFF, "010203"),
    ],
)
def test_filtered_requests(hex_value: str, filter_type: int, operand: str) -> None:
    data = bytes.fromhex(hex_value)
    r = RacpRequest.decode(data)
    assert (r.filter_type, r.operand) == (filter_type, bytes.fromhex(operand))
    assert r.encode() == data


def test_unknown_op_code_and_operator_are_kept_for_the_server_to_answer() -> None:
    r = RacpRequest.decode(bytes.fromhex("0901"))
    assert (r.op_code, r.op, r.operator_kind) == (9, None, Operator.ALL_RECORDS)
    r = RacpRequest.decode(bytes.fromhex("0107 0102"))  # operator 7: rest kept raw
    assert (r.op, r.operator, r.operator_kind, r.filter_type, r.operand) == (
        OpCode.REPORT_STORED_RECORDS,
        7,
        None,
        None,
        b"\x01\x02",
    )
    assert r.encode() == bytes.fromhex("0107 0102")


def test_operand_views() -> None:
    r = RacpRequest.decode(bytes.fromhex("0104 01 0a00 1400"))
    assert (r.uint16_values, r.date_time_values) == ((10, 20), ())
    r = RacpRequest.decode(bytes.fromhex("0104 02" + DT_1 + DT_2))
    assert r.uint16_values == ()
    assert r.date_time_values == (
        DateTime(2024, 2, 29, 23, 59, 58),
        DateTime(2024, 2, 29, 23, 59, 59),
    )
    assert RacpRequest.report_all().uint16_values == ()
    assert RacpRequest.report_time_offset_at_least(15).uint16_values == (15,)


def test_every_two_byte_request() -> None:
    for op_code in range(256):
        for operator in range(256):
            data = bytes([op_code, operator])
            if operator in (2, 3, 4):
                with pytest.raises(DecodeError) as info:
                    RacpRequest.decode(data)
                assert (info.value.field, info.value.offset) == ("Filter Type", 2)
            else:
                r = RacpRequest.decode(data)
                assert (r.op_code, r.operator, r.filter_type, r.operand) == (
                    op_code,
                    operator,
                    None,
                    b"",
                )
                assert r.encode() == data


@pytest.mark.parametrize(
    ("hex_value", "field", "offset"),
    [
        ("", "Op Code", 0),
        ("01", "Operator", 1),
        ("0101 00", "Operand", 2),  # all records takes no operand
        ("0300 01", "Operand", 2),
        ("0105 0100", "Operand", 2),
        ("0106 01", "Operand", 2),
        ("0103", "Filter Type", 2),
        ("0103 01", "Operand", 3),
        ("0103 01 05", "Operand", 3),
        ("0103 01 0500 00", "Operand", 5),  # one value only
        ("0104 01 0500", "Operand Maximum", 5),
        ("0104 01 0500 06", "Operand Maximum", 5),
        ("0104 01", "Operand Minimum", 3),
        ("0104 01 0500 0600 07", "Operand", 7),
        ("0102 02 e807 02 1d 17 3b", "Operand", 3),
        ("0102 02 e807 0d 1d 17 3b 3a", "Operand.Month", 5),
        ("0102 02 e807 02 1d 17 3c 3a", "Operand.Minutes", 8),
        ("0104 02 " + DT_1 + " e907 02 1d 17 3b 3a", "Operand Maximum", 10),  # 2025-02-29
        ("0102 02 " + DT_1 + " 00", "Operand", 10),
        ("06000101", "Operand", 2),  # a response is not a request
    ],
)
def test_malformed_request(hex_value: str, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        RacpRequest.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A52",
        field,
        offset,
    )
    assert info.value.payload_hex == bytes.fromhex(hex_value).hex()


def test_request_error_message_never_contains_values() -> None:
    data = bytes.fromhex("0103 01 ab")
    with pytest.raises(DecodeError) as info:
        RacpRequest.decode(data)
    assert str(info.value) == "2A52: field 'Operand' at offset 3: needs 2 bytes, 1 left"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"op_code": 1, "operator": 1, "filter_type": 1},
        {"op_code": 1, "operator": 1, "operand": b"\x01"},
        {"op_code": 1, "operator": 3},  # no filter type
        {"op_code": 1, "operator": 3, "filter_type": 1, "operand": b"\x01"},
        {"op_code": 1, "operator": 3, "filter_type": 1, "operand": b"\x01\x00\x02\x00"},
        {"op_code": 1, "operator": 4, "filter_type": 1, "operand": b"\x01\x00"},
        {
            "op_code": 1,
            "operator": 3,
            "filter_type": 2,
            "operand": bytes.fromhex("e907 02 1d 17 3b 3a"),
        },
        {"op_code": 1, "operator": 7, "filter_type": 1},  # only <=, >=, range carry one
        {"op_code": 0x100, "operator": 1},
        {"op_code": 1, "operator": -1},
        {"op_code": 1, "operator": 3, "filter_type": 0x100, "operand": b""},
    ],
)
def test_request_encode_refuses_what_decode_would_not_give(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RacpRequest(**kwargs).encode()


_OPERAND_COUNT = {2: 1, 3: 1, 4: 2}


@st.composite
def racp_requests(draw: st.DrawFn) -> RacpRequest:
    """Any request the decoder accepts: every operator, known and unknown filter types."""
    op_code, operator = draw(u8), draw(u8)
    if operator in (0, 1, 5, 6):
        return RacpRequest(op_code=op_code, operator=operator)
    if operator not in _OPERAND_COUNT:
        return RacpRequest(op_code=op_code, operator=operator, operand=draw(st.binary(max_size=8)))
    count = _OPERAND_COUNT[operator]
    filter_type = draw(u8)
    if filter_type == 1:
        operand = draw(st.binary(min_size=2 * count, max_size=2 * count))
    elif filter_type == 2:
        operand = b"".join(draw(date_times()).encode() for _ in range(count))
    else:
        operand = draw(st.binary(max_size=8))
    return RacpRequest(op_code=op_code, operator=operator, filter_type=filter_type, operand=operand)


@st.composite
def racp_request_payloads(draw: st.DrawFn) -> bytes:
    """Valid request bytes, laid out from the operator and filter type."""
    head = draw(st.binary(min_size=1, max_size=1))
    operator = draw(u8)
    out = head + bytes([operator])
    if operator in (0, 1, 5, 6):
        return out
    if operator not in _OPERAND_COUNT:
        return out + draw(st.binary(max_size=8))
    filter_type = draw(st.sampled_from([1, 2]) | u8)
    out += bytes([filter_type])
    for _ in range(_OPERAND_COUNT[operator]):
        if filter_type == 1:
            out += draw(st.binary(min_size=2, max_size=2))
        elif filter_type == 2:
            out += draw(date_times()).encode()
    if filter_type not in (1, 2):
        out += draw(st.binary(max_size=8))
    return out


@given(racp_requests())
def test_request_model_round_trip(r: RacpRequest) -> None:
    assert RacpRequest.decode(r.encode()) == r


@given(racp_request_payloads())
def test_request_bytes_round_trip(data: bytes) -> None:
    assert RacpRequest.decode(data).encode() == data


# --- responses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hex_value", "count", "width"),
    [
        ("0500 0201", 258, 2),
        ("0500 01", 1, 1),  # Nordic tolerates 1 octet
        ("0500 04030201", 16909060, 4),  # ... and 4 octets (spec §6.4 vector note)
        ("0500 0000", 0, 2),
        ("0500 ffffffff", 0xFFFFFFFF, 4),
    ],
)
def test_number_of_records(hex_value: str, count: int, width: int) -> None:
    data = bytes.fromhex(hex_value)
    r = RacpResponse.decode(data)
    assert r == RacpResponse.count(count, width=width)
    assert (r.op_code, r.records, r.count_width) == (
        OpCode.NUMBER_OF_STORED_RECORDS_RESPONSE,
        count,
        width,
    )
    assert r.is_success
    assert (r.request_op_code, r.response_code, r.response, r.request) == (None,) * 4
    assert r.encode() == data


@pytest.mark.parametrize(
    ("hex_value", "code", "success"),
    [
        ("0600 0101", ResponseCode.SUCCESS, True),
        ("0600 0106", ResponseCode.NO_RECORDS_FOUND, False),
        ("0600 0305", ResponseCode.INVALID_OPERAND, False),
        ("0600 0107", ResponseCode.ABORT_UNSUCCESSFUL, False),
        ("0600 0409", ResponseCode.OPERAND_NOT_SUPPORTED, False),
    ],
)
def test_response_codes(hex_value: str, code: ResponseCode, success: bool) -> None:
    data = bytes.fromhex(hex_value)
    r = RacpResponse.decode(data)
    assert r == RacpResponse.result(data[2], code)
    assert r.response is code
    assert r.request is OpCode(data[2])
    assert r.is_success is success
    assert r.records is None
    assert r.encode() == data


def test_unknown_response_code_and_request_op_code_are_kept() -> None:
    data = bytes.fromhex("0600 0c0a")
    r = RacpResponse.decode(data)
    assert (r.request_op_code, r.response_code, r.request, r.response) == (12, 10, None, None)
    assert not r.is_success
    assert r.encode() == data


def test_every_response_code_value() -> None:
    for request_op_code in range(256):
        for code in range(256):
            data = bytes([6, 0, request_op_code, code])
            assert RacpResponse.decode(data).encode() == data
    for count in range(256):
        data = bytes([5, 0, count])
        assert RacpResponse.decode(data).records == count


@pytest.mark.parametrize(
    ("hex_value", "field", "offset"),
    [
        ("", "Op Code", 0),
        ("0101", "Op Code", 0),  # a request is not a response
        ("0700 0101", "Op Code", 0),
        ("05", "Operator", 1),
        ("0501 0201", "Operator", 1),
        ("0500", "Number of Records", 2),
        ("0500 010203", "Number of Records", 2),  # 3 octets
        ("0500 0102030405", "Number of Records", 2),
        ("06", "Operator", 1),
        ("0603 0101", "Operator", 1),
        ("0600", "Request Op Code", 2),
        ("0600 01", "Response Code", 3),
        ("0600 0101 00", "Response Code", 4),
    ],
)
def test_malformed_response(hex_value: str, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        RacpResponse.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A52",
        field,
        offset,
    )


@pytest.mark.parametrize(
    "response",
    [
        RacpResponse(op_code=OpCode.NUMBER_OF_STORED_RECORDS_RESPONSE),
        RacpResponse.count(0x10000, width=2),
        RacpResponse.count(0x100, width=1),
        RacpResponse.count(1, width=3),
        RacpResponse.count(-1),
        RacpResponse(
            op_code=OpCode.NUMBER_OF_STORED_RECORDS_RESPONSE,
            number_of_records=1,
            response_code=1,
        ),
        RacpResponse(op_code=OpCode.RESPONSE_CODE, request_op_code=1),
        RacpResponse(op_code=OpCode.RESPONSE_CODE, response_code=1),
        RacpResponse(
            op_code=OpCode.RESPONSE_CODE, request_op_code=1, response_code=1, number_of_records=1
        ),
        RacpResponse(
            op_code=OpCode.RESPONSE_CODE, request_op_code=1, response_code=1, count_width=4
        ),
        RacpResponse.result(0x100, 1),
        RacpResponse.result(1, 0x100),
        RacpResponse(op_code=OpCode.REPORT_STORED_RECORDS, request_op_code=1, response_code=1),
    ],
)
def test_response_encode_refuses_what_the_wire_cannot_carry(response: RacpResponse) -> None:
    with pytest.raises(ValueError):
        response.encode()


@st.composite
def racp_responses(draw: st.DrawFn) -> RacpResponse:
    if draw(st.booleans()):
        width = draw(st.sampled_from([1, 2, 4]))
        return RacpResponse.count(draw(st.integers(0, (1 << (8 * width)) - 1)), width=width)
    return RacpResponse.result(draw(u8), draw(u8))


@given(racp_responses())
def test_response_model_round_trip(r: RacpResponse) -> None:
    assert RacpResponse.decode(r.encode()) == r
    assert decode_racp(r.encode()) == r


@given(racp_request_payloads())
def test_decode_racp_dispatches_on_the_op_code(data: bytes) -> None:
    assume(data[0] not in (5, 6))
    decoded = decode_racp(data)
    assert decoded == RacpRequest.decode(data)
    assert decoded.encode() == data


def test_decode_racp_empty() -> None:
    with pytest.raises(DecodeError) as info:
        decode_racp(b"")
    assert (info.value.field, info.value.offset) == ("Op Code", 0)


# --- fuzz --------------------------------------------------------------------------------------

FUZZ_RUNS = 100_000
REQUEST_SEEDS = [
    bytes.fromhex(h)
    for h in (
        "0101",
        "0106",
        "0300",
        "0103 01 0500",
        "0104 01 0500 0a00",
        "0102 02 " + DT_1,
        "0104 02 " + DT_1 + DT_2,
        "0103 09 aabb",
    )
]
RESPONSE_SEEDS = [
    bytes.fromhex(h) for h in ("0500 0201", "0500 01", "0500 04030201", "0600 0101", "0600 0c02")
]


def test_fuzz_request_decode() -> None:
    decoded = assert_only_decode_errors(
        "racp-request", RacpRequest.decode, REQUEST_SEEDS, FUZZ_RUNS
    )
    assert decoded > FUZZ_RUNS // 100


def test_fuzz_response_decode() -> None:
    decoded = assert_only_decode_errors(
        "racp-response", RacpResponse.decode, RESPONSE_SEEDS, FUZZ_RUNS
    )
    assert decoded > FUZZ_RUNS // 100


def test_fuzz_either_direction() -> None:
    decoded = assert_only_decode_errors(
        "racp-either", decode_racp, REQUEST_SEEDS + RESPONSE_SEEDS, FUZZ_RUNS // 5
    )
    assert decoded > FUZZ_RUNS // 500
