"""User Index (0x2A9A), Database Change Increment (0x2A99) and User Control Point (0x2A9F).

The 0x2A9F public vectors are in vectors_time_user.json, with their provenance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.codecs.errors import DecodeError
from drivers.codecs.user_data import (
    ALL_USERS,
    RESPONSE_CODE,
    DatabaseChangeIncrement,
    UcpOpCode,
    UcpRequest,
    UcpResponse,
    UcpResponseValue,
    UserIndex,
    decode_control_point,
)

from .fuzzing import assert_only_decode_errors

VECTORS: list[dict[str, Any]] = [
    v
    for v in json.loads(
        (Path(__file__).parent / "vectors_time_user.json").read_text(encoding="utf-8")
    )
    if v["characteristic"] == "0x2A9F"
]


def code_text(code: int, name: str) -> str:
    """The vectors' "0x01 register new user" form."""
    return f"0x{code:02X} {name.lower().replace('_', ' ')}"


def check_control_point(data: bytes, expected: dict[str, Any]) -> None:
    decoded = decode_control_point(data)
    for key, want in expected.items():
        if key == "op_code":
            if isinstance(decoded, UcpResponse):
                assert data[0] == RESPONSE_CODE
                assert code_text(RESPONSE_CODE, "response code") == want
            else:
                assert isinstance(decoded.op_code, UcpOpCode)
                assert code_text(decoded.op_code, decoded.op_code.name) == want
        elif key == "request_op_code":
            assert isinstance(decoded, UcpResponse)
            assert isinstance(decoded.request_op_code, UcpOpCode)
            assert code_text(decoded.request_op_code, decoded.request_op_code.name) == want
        elif key == "response":
            assert isinstance(decoded, UcpResponse)
            assert isinstance(decoded.response_value, UcpResponseValue)
            assert code_text(decoded.response_value, decoded.response_value.name) == want
        elif key == "user_index":
            if isinstance(decoded, UcpResponse):
                assert decoded.registered_user_index == want
            else:
                assert decoded.user_index == want
        elif key == "consent_code":
            assert isinstance(decoded, UcpRequest)
            assert decoded.consent_code == want
        else:
            pytest.fail(f"unchecked expected key {key!r}")
    assert decoded.encode() == data


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["hex"])
def test_public_control_point_vector(vector: dict[str, Any]) -> None:
    # The Consent vector (0203a80d) is flagged uncertain: it is not a capture but openScale's
    # request layout filled with the slot and code from PR #1399. It is checked against the
    # spec §10.4 layout (op, user index uint8, consent code uint16 LE), which it matches.
    check_control_point(bytes.fromhex(vector["hex"]), vector["expected"])


def test_public_vectors_present() -> None:
    assert [v["hex"] for v in VECTORS] == ["20010103", "0203a80d"]


# --- User Index, Database Change Increment -----------------------------------------------------


def test_every_user_index_round_trips() -> None:
    for index in range(0x100):
        data = bytes([index])
        value = UserIndex.decode(data)
        assert value == UserIndex(index)
        assert value.unknown is (index == 0xFF)
        assert value.encode() == data


@pytest.mark.parametrize(("hex_value", "offset"), [("", 0), ("01 00", 1)])
def test_malformed_user_index(hex_value: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        UserIndex.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A9A",
        "User Index",
        offset,
    )


@pytest.mark.parametrize("index", [-1, 0x100])
def test_user_index_encode_refuses_non_bytes(index: int) -> None:
    with pytest.raises(ValueError):
        UserIndex(index).encode()


@pytest.mark.parametrize(
    ("hex_value", "increment"),
    [("00000000", 0), ("78563412", 0x12345678), ("ffffffff", 0xFFFFFFFF), ("01000000", 1)],
)
def test_database_change_increment(hex_value: str, increment: int) -> None:
    data = bytes.fromhex(hex_value)
    value = DatabaseChangeIncrement.decode(data)
    assert value.increment == increment
    assert value.encode() == data


@pytest.mark.parametrize(("hex_value", "offset"), [("", 0), ("785634", 0), ("7856341200", 4)])
def test_malformed_database_change_increment(hex_value: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        DatabaseChangeIncrement.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A99",
        "Database Change Increment",
        offset,
    )


@pytest.mark.parametrize("increment", [-1, 1 << 32])
def test_database_change_increment_refuses_non_uint32(increment: int) -> None:
    with pytest.raises(ValueError):
        DatabaseChangeIncrement(increment).encode()


@given(st.integers(0, 0xFFFFFFFF))
def test_database_change_increment_round_trip(increment: int) -> None:
    value = DatabaseChangeIncrement(increment)
    assert DatabaseChangeIncrement.decode(value.encode()) == value


# --- Control point requests --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "hex_value"),
    [
        (UcpRequest.register_new_user(1234), "01 d204"),  # 1234 = 0x04D2
        (UcpRequest.register_new_user(0), "01 0000"),
        (UcpRequest.register_new_user(9999), "01 0f27"),  # 9999 = 0x270F
        (UcpRequest.consent(3, 3496), "02 03 a80d"),
        (UcpRequest.consent(0xFF, 1), "02 ff 0100"),
        (UcpRequest.delete_user_data(), "03"),
        (UcpRequest.list_all_users(), "04"),
        (UcpRequest.delete_users(), "05 ff"),
        (UcpRequest.delete_users(2), "05 02"),
    ],
)
def test_request_constructors(request_: UcpRequest, hex_value: str) -> None:
    data = bytes.fromhex(hex_value)
    assert request_.encode() == data
    assert UcpRequest.decode(data) == request_
    assert decode_control_point(data) == request_
    assert request_.supported


def test_request_fields() -> None:
    consent = UcpRequest.decode(bytes.fromhex("02 03 a80d"))
    assert consent == UcpRequest(op_code=UcpOpCode.CONSENT, user_index=3, consent_code=3496)
    assert consent.op_code is UcpOpCode.CONSENT
    assert not consent.all_users
    assert UcpRequest.delete_users().all_users
    assert UcpRequest.delete_users().user_index == ALL_USERS
    assert not UcpRequest.delete_users(0).all_users


@pytest.mark.parametrize("code", [-1, 10_000, 0xFFFF])
def test_constructors_refuse_consent_codes_outside_0_9999(code: int) -> None:
    with pytest.raises(ValueError, match="Consent Code"):
        UcpRequest.register_new_user(code)
    with pytest.raises(ValueError, match="Consent Code"):
        UcpRequest.consent(1, code)
    with pytest.raises(ValueError, match="Consent Code"):
        UcpRequest(op_code=UcpOpCode.REGISTER_NEW_USER, consent_code=code).encode()


@pytest.mark.parametrize(
    ("hex_value", "field", "offset"),
    [
        ("", "Op Code", 0),
        ("01", "Consent Code", 1),
        ("01 0f", "Consent Code", 1),
        ("01 1027", "Consent Code", 1),  # 10000
        ("01 ffff", "Consent Code", 1),
        ("02", "User Index", 1),
        ("02 03", "Consent Code", 2),
        ("02 03 a8", "Consent Code", 2),
        ("02 03 1027", "Consent Code", 2),
        ("05", "User Index", 1),
    ],
)
def test_malformed_request(hex_value: str, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        UcpRequest.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A9F",
        field,
        offset,
    )


def test_consent_code_error_names_the_range_not_the_value() -> None:
    with pytest.raises(DecodeError) as info:
        UcpRequest.decode(bytes.fromhex("02 03 3930"))  # 12345
    assert "0..9999" in str(info.value)
    assert "12345" not in str(info.value)


@pytest.mark.parametrize("hex_value", ["00", "06 aabb", "20 010103", "ff", "7f 00"])
def test_unknown_request_op_codes_are_kept_with_their_bytes(hex_value: str) -> None:
    data = bytes.fromhex(hex_value)
    request = UcpRequest.decode(data)
    assert request.op_code == data[0] and not isinstance(request.op_code, UcpOpCode)
    assert not request.supported
    assert (request.user_index, request.consent_code, request.trailing) == (None, None, data[1:])
    assert request.encode() == data


@pytest.mark.parametrize(
    ("hex_value", "trailing"),
    [
        ("03 00", "00"),
        ("04 0102", "0102"),
        ("01 d204 99", "99"),
        ("02 03 a80d 00", "00"),
        ("05 ff ff", "ff"),
    ],
)
def test_bytes_after_the_parameters_are_kept(hex_value: str, trailing: str) -> None:
    data = bytes.fromhex(hex_value)
    request = UcpRequest.decode(data)
    assert request.supported
    assert request.trailing == bytes.fromhex(trailing)
    assert request.encode() == data


@pytest.mark.parametrize(
    "bad",
    [
        UcpRequest(op_code=UcpOpCode.CONSENT, consent_code=1),  # no user index
        UcpRequest(op_code=UcpOpCode.CONSENT, user_index=1),  # no consent code
        UcpRequest(op_code=UcpOpCode.REGISTER_NEW_USER),
        UcpRequest(op_code=UcpOpCode.REGISTER_NEW_USER, user_index=1, consent_code=1),
        UcpRequest(op_code=UcpOpCode.DELETE_USER_DATA, user_index=1),
        UcpRequest(op_code=UcpOpCode.LIST_ALL_USERS, consent_code=1),
        UcpRequest(op_code=UcpOpCode.DELETE_USERS),
        UcpRequest(op_code=0x06, user_index=1),  # unknown op codes carry raw bytes only
        UcpRequest(op_code=0x100),
        UcpRequest(op_code=-1),
        UcpRequest(op_code=UcpOpCode.DELETE_USERS, user_index=0x100),
        UcpRequest(op_code=UcpOpCode.CONSENT, user_index=1, consent_code=10_000),
    ],
)
def test_request_encode_refuses_mismatched_parameters(bad: UcpRequest) -> None:
    with pytest.raises(ValueError):
        bad.encode()


def test_every_op_code_byte_decodes_with_its_parameters() -> None:
    parameters = {1: "d204", 2: "03 a80d", 5: "ff"}
    for op in range(0x100):
        data = bytes([op]) + bytes.fromhex(parameters.get(op, ""))
        request = UcpRequest.decode(data)
        assert request.supported is (1 <= op <= 5)
        assert request.encode() == data


# --- Control point responses -------------------------------------------------------------------


def test_registered_response() -> None:
    data = bytes.fromhex("20 01 01 03")
    response = UcpResponse.decode(data)
    assert response == UcpResponse.registered(3)
    assert response.request_op_code is UcpOpCode.REGISTER_NEW_USER
    assert response.response_value is UcpResponseValue.SUCCESS
    assert response.succeeded
    assert response.parameter == b"\x03"
    assert response.registered_user_index == 3
    assert response.encode() == data
    assert decode_control_point(data) == response


@pytest.mark.parametrize(
    ("hex_value", "registered", "succeeded"),
    [
        ("20 01 05", None, False),  # user not authorized: no index
        ("20 01 04 03", None, False),
        ("20 01 01", None, True),  # success without the index parameter
        ("20 01 01 07 aa", 7, True),  # extra bytes after the index are tolerated
        ("20 02 01", None, True),  # consent succeeded
        ("20 05 01 02", None, True),  # a delete response names no registered user
    ],
)
def test_registered_user_index_only_for_a_successful_register(
    hex_value: str, registered: int | None, succeeded: bool
) -> None:
    data = bytes.fromhex(hex_value)
    response = UcpResponse.decode(data)
    assert response.registered_user_index == registered
    assert response.succeeded is succeeded
    assert response.encode() == data


@pytest.mark.parametrize(
    ("hex_value", "value"),
    [
        ("20 02 01", UcpResponseValue.SUCCESS),
        ("20 02 02", UcpResponseValue.OP_CODE_NOT_SUPPORTED),
        ("20 02 03", UcpResponseValue.INVALID_PARAMETER),
        ("20 02 04", UcpResponseValue.OPERATION_FAILED),
        ("20 02 05", UcpResponseValue.USER_NOT_AUTHORIZED),
    ],
)
def test_response_values(hex_value: str, value: UcpResponseValue) -> None:
    response = UcpResponse.decode(bytes.fromhex(hex_value))
    assert response.response_value is value
    assert response.encode() == bytes.fromhex(hex_value)


@pytest.mark.parametrize(
    "hex_value", ["20 01 00", "20 01 06", "20 01 ff 03", "20 07 01", "20 20 02"]
)
def test_unknown_codes_in_responses_are_kept_as_ints(hex_value: str) -> None:
    data = bytes.fromhex(hex_value)
    response = UcpResponse.decode(data)
    assert response.request_op_code == data[1]
    assert response.response_value == data[2]
    if not 1 <= data[1] <= 5:
        assert not isinstance(response.request_op_code, UcpOpCode)
    if not 1 <= data[2] <= 5:
        assert not isinstance(response.response_value, UcpResponseValue)
        assert response.registered_user_index is None
    assert response.encode() == data


@pytest.mark.parametrize(
    ("hex_value", "field", "offset"),
    [
        ("", "Op Code", 0),
        ("21 01 01", "Op Code", 0),
        ("01 d204", "Op Code", 0),  # a request is not a response
        ("20", "Request Op Code", 1),
        ("20 01", "Response Value", 2),
    ],
)
def test_malformed_response(hex_value: str, field: str, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        UcpResponse.decode(bytes.fromhex(hex_value))
    assert (info.value.characteristic, info.value.field, info.value.offset) == (
        "2A9F",
        field,
        offset,
    )


@pytest.mark.parametrize(
    "bad",
    [
        UcpResponse(request_op_code=0x100, response_value=1),
        UcpResponse(request_op_code=1, response_value=0x100),
        UcpResponse(request_op_code=1, response_value=-1),
    ],
)
def test_response_encode_refuses_non_bytes(bad: UcpResponse) -> None:
    with pytest.raises(ValueError):
        bad.encode()


@pytest.mark.parametrize("index", [-1, 0x100])
def test_registered_refuses_non_byte_index(index: int) -> None:
    with pytest.raises(ValueError):
        UcpResponse.registered(index)


def test_decode_control_point_dispatches_on_the_response_code() -> None:
    assert isinstance(decode_control_point(bytes.fromhex("20 03 01")), UcpResponse)
    assert isinstance(decode_control_point(bytes.fromhex("03")), UcpRequest)
    with pytest.raises(DecodeError) as info:
        decode_control_point(b"")
    assert (info.value.field, info.value.offset) == ("Op Code", 0)
    with pytest.raises(DecodeError) as info:
        decode_control_point(bytes.fromhex("20 01"))
    assert (info.value.field, info.value.offset) == ("Response Value", 2)


# --- Round trips -------------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
consent_codes = st.integers(0, 9999)
unknown_ops = u8.filter(lambda op: not 1 <= op <= 5)


@st.composite
def ucp_requests(draw: st.DrawFn) -> UcpRequest:
    """Every request kind, unknown op codes included, with optional trailing bytes."""
    kind = draw(st.integers(0, 5))
    trailing = draw(st.binary(max_size=4))
    if kind == 0:
        return UcpRequest(op_code=draw(unknown_ops), trailing=trailing)
    op = UcpOpCode(kind)
    wants_index = op in (UcpOpCode.CONSENT, UcpOpCode.DELETE_USERS)
    wants_code = op in (UcpOpCode.REGISTER_NEW_USER, UcpOpCode.CONSENT)
    return UcpRequest(
        op_code=op,
        user_index=draw(u8) if wants_index else None,
        consent_code=draw(consent_codes) if wants_code else None,
        trailing=trailing,
    )


@st.composite
def ucp_request_payloads(draw: st.DrawFn) -> bytes:
    op = draw(u8)
    out = bytes([op])
    if op in (2, 5):
        out += bytes([draw(u8)])
    if op in (1, 2):
        out += draw(consent_codes).to_bytes(2, "little")
    return out + draw(st.binary(max_size=4))


ucp_responses = st.builds(
    UcpResponse, request_op_code=u8, response_value=u8, parameter=st.binary(max_size=6)
)


@given(ucp_requests())
def test_request_model_round_trip(request_: UcpRequest) -> None:
    assert UcpRequest.decode(request_.encode()) == request_


@given(ucp_request_payloads())
def test_request_bytes_round_trip(data: bytes) -> None:
    assert UcpRequest.decode(data).encode() == data


@given(ucp_responses)
def test_response_model_round_trip(response: UcpResponse) -> None:
    again = UcpResponse.decode(response.encode())
    assert again == response
    assert decode_control_point(response.encode()) == response


@given(st.binary(min_size=2, max_size=8))
def test_response_bytes_round_trip(tail: bytes) -> None:
    data = bytes([RESPONSE_CODE]) + tail
    assert UcpResponse.decode(data).encode() == data


# --- Fuzz --------------------------------------------------------------------------------------

FUZZ_RUNS = 100_000
REQUEST_SEEDS = [
    bytes.fromhex("0203a80d"),
    bytes.fromhex("01d204"),
    bytes.fromhex("05ff"),
    bytes.fromhex("03"),
]
RESPONSE_SEEDS = [bytes.fromhex("20010103"), bytes.fromhex("200205"), bytes.fromhex("20040104")]


def test_fuzz_user_index() -> None:
    decoded = assert_only_decode_errors(
        "user-data-2A9A", UserIndex.decode, [b"\x01", b"\xff"], FUZZ_RUNS
    )
    assert decoded > FUZZ_RUNS // 100


def test_fuzz_database_change_increment() -> None:
    decoded = assert_only_decode_errors(
        "user-data-2A99", DatabaseChangeIncrement.decode, [bytes.fromhex("78563412")], FUZZ_RUNS
    )
    assert decoded > FUZZ_RUNS // 100


def test_fuzz_control_point_requests() -> None:
    decoded = assert_only_decode_errors(
        "user-data-2A9F-request", UcpRequest.decode, REQUEST_SEEDS, FUZZ_RUNS
    )
    assert FUZZ_RUNS // 100 < decoded < FUZZ_RUNS  # consent codes > 9999 must be refused


def test_fuzz_control_point_responses() -> None:
    decoded = assert_only_decode_errors(
        "user-data-2A9F-response", UcpResponse.decode, RESPONSE_SEEDS, FUZZ_RUNS
    )
    assert decoded > FUZZ_RUNS // 100


def test_fuzz_control_point_either_direction() -> None:
    decoded = assert_only_decode_errors(
        "user-data-2A9F", decode_control_point, REQUEST_SEEDS + RESPONSE_SEEDS, FUZZ_RUNS
    )
    assert decoded > FUZZ_RUNS // 100
