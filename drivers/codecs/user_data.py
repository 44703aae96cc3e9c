"""User Data Service values: User Index (0x2A9A), Database Change Increment (0x2A99) and the
User Control Point (0x2A9F).

Multi-user scales and BP monitors only release user-tagged data after the gateway registers a
user or proves consent with the user's 4-digit consent code (spec §10.4, §13), so the control
point is coded both ways: the gateway encodes requests and decodes responses, the emulated scale
does the opposite with the same classes. Request op codes this module does not know are kept as
plain ints with their parameter bytes, so a server can still answer "op code not supported"
(spec §10.4). Response values it does not know are kept as ints too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Self

from ._cursor import Reader, Writer

USER_UNKNOWN = 0xFF
ALL_USERS = 0xFF  # Delete User(s) parameter: every user
CONSENT_CODE_MAX = 9999
RESPONSE_CODE = 0x20  # the op code of every control point response

_CONSENT_RANGE = f"out of range 0..{CONSENT_CODE_MAX}"


@dataclass(frozen=True, slots=True)
class UserIndex:
    """User Index (0x2A9A): the user the server currently serves. Exactly one byte."""

    CHARACTERISTIC: ClassVar[str] = "2A9A"

    index: int  # 0xFF = unknown user

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        index = reader.u8("User Index")
        reader.expect_end("User Index")
        return cls(index)

    def encode(self) -> bytes:
        writer = Writer()
        writer.u8(self.index, "User Index")
        return writer.to_bytes()

    @property
    def unknown(self) -> bool:
        """0xFF: no user is selected."""
        return self.index == USER_UNKNOWN


@dataclass(frozen=True, slots=True)
class DatabaseChangeIncrement:
    """Database Change Increment (0x2A99): uint32 bumped when the user's data changes.

    Exactly four bytes.
    """

    CHARACTERISTIC: ClassVar[str] = "2A99"

    increment: int

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        increment = reader.u32("Database Change Increment")
        reader.expect_end("Database Change Increment")
        return cls(increment)

    def encode(self) -> bytes:
        writer = Writer()
        writer.u32(self.increment, "Database Change Increment")
        return writer.to_bytes()


class UcpOpCode(IntEnum):
    """The request op codes of the User Control Point (spec §10.4)."""

    REGISTER_NEW_USER = 0x01
    CONSENT = 0x02
    DELETE_USER_DATA = 0x03
    LIST_ALL_USERS = 0x04  # UDS 1.1
    DELETE_USERS = 0x05  # UDS 1.1


class UcpResponseValue(IntEnum):
    """The Response Value codes of a control point response (spec §10.4)."""

    SUCCESS = 0x01
    OP_CODE_NOT_SUPPORTED = 0x02
    INVALID_PARAMETER = 0x03
    OPERATION_FAILED = 0x04
    USER_NOT_AUTHORIZED = 0x05


_OP_CODES = frozenset(op.value for op in UcpOpCode)
_RESPONSE_VALUES = frozenset(value.value for value in UcpResponseValue)

# Which parameters each request op carries: (user index, consent code), in that wire order.
_PARAMETERS: dict[UcpOpCode, tuple[bool, bool]] = {
    UcpOpCode.REGISTER_NEW_USER: (False, True),
    UcpOpCode.CONSENT: (True, True),
    UcpOpCode.DELETE_USER_DATA: (False, False),
    UcpOpCode.LIST_ALL_USERS: (False, False),
    UcpOpCode.DELETE_USERS: (True, False),
}


def _op_code(raw: int) -> UcpOpCode | int:
    return UcpOpCode(raw) if raw in _OP_CODES else raw


def _response_value(raw: int) -> UcpResponseValue | int:
    return UcpResponseValue(raw) if raw in _RESPONSE_VALUES else raw


def _check_consent_code(code: int) -> None:
    if not 0 <= code <= CONSENT_CODE_MAX:
        raise ValueError(f"Consent Code {_CONSENT_RANGE}")


@dataclass(frozen=True, slots=True, kw_only=True)
class UcpRequest:
    """One User Control Point request (op code + the parameters that op code defines).

    Build requests with the named constructors (``UcpRequest.consent(3, 3496)``). A decoded op
    code this module does not know stays an int and all its bytes land in ``trailing``; for a
    known op, ``trailing`` holds bytes after its parameters (kept for round trips; a server
    should answer Invalid Parameter to them).
    """

    CHARACTERISTIC: ClassVar[str] = "2A9F"

    op_code: UcpOpCode | int
    user_index: int | None = None  # Consent, Delete User(s) (0xFF = all users)
    consent_code: int | None = None  # Register New User, Consent: 0..9999
    trailing: bytes = b""

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Decode a written request; DecodeError for missing parameters or a bad consent code."""
        reader = Reader(data, cls.CHARACTERISTIC)
        op_code = _op_code(reader.u8("Op Code"))
        wants_index, wants_code = _parameters(op_code)
        user_index = reader.u8("User Index") if wants_index else None
        consent_code = None
        if wants_code:
            at = reader.offset
            consent_code = reader.u16("Consent Code")
            if consent_code > CONSENT_CODE_MAX:
                raise reader.error("Consent Code", _CONSENT_RANGE, at)
        return cls(
            op_code=op_code,
            user_index=user_index,
            consent_code=consent_code,
            trailing=reader.rest(),
        )

    def encode(self) -> bytes:
        """The request bytes; ValueError when the parameters do not match the op code."""
        wants_index, wants_code = _parameters(self.op_code)
        if (self.user_index is not None) != wants_index:
            raise ValueError("User Index must be set exactly for Consent and Delete User(s)")
        if (self.consent_code is not None) != wants_code:
            raise ValueError("Consent Code must be set exactly for Register New User and Consent")
        writer = Writer()
        writer.u8(self.op_code, "Op Code")
        if self.user_index is not None:
            writer.u8(self.user_index, "User Index")
        if self.consent_code is not None:
            _check_consent_code(self.consent_code)
            writer.u16(self.consent_code, "Consent Code")
        writer.extend(self.trailing)
        return writer.to_bytes()

    @classmethod
    def register_new_user(cls, consent_code: int) -> Self:
        """Ask the server for a new user slot protected by ``consent_code`` (0..9999)."""
        _check_consent_code(consent_code)
        return cls(op_code=UcpOpCode.REGISTER_NEW_USER, consent_code=consent_code)

    @classmethod
    def consent(cls, user_index: int, consent_code: int) -> Self:
        """Prove the right to ``user_index``'s data; the server then serves that user."""
        _check_consent_code(consent_code)
        return cls(op_code=UcpOpCode.CONSENT, user_index=user_index, consent_code=consent_code)

    @classmethod
    def delete_user_data(cls) -> Self:
        """Delete the data of the user the server currently serves."""
        return cls(op_code=UcpOpCode.DELETE_USER_DATA)

    @classmethod
    def list_all_users(cls) -> Self:
        return cls(op_code=UcpOpCode.LIST_ALL_USERS)

    @classmethod
    def delete_users(cls, user_index: int = ALL_USERS) -> Self:
        """Delete one user, or every user with the default ``ALL_USERS`` (0xFF)."""
        return cls(op_code=UcpOpCode.DELETE_USERS, user_index=user_index)

    @property
    def supported(self) -> bool:
        """The op code is one of ``UcpOpCode`` (otherwise answer Op Code Not Supported)."""
        return self.op_code in _OP_CODES

    @property
    def all_users(self) -> bool:
        """A Delete User(s) request for every user (index 0xFF)."""
        return self.op_code == UcpOpCode.DELETE_USERS and self.user_index == ALL_USERS


def _parameters(op_code: int) -> tuple[bool, bool]:
    """(has user index, has consent code) for ``op_code``; unknown ops have neither."""
    return _PARAMETERS[UcpOpCode(op_code)] if op_code in _OP_CODES else (False, False)


@dataclass(frozen=True, slots=True, kw_only=True)
class UcpResponse:
    """One User Control Point response indication: ``20 <request op> <value> [parameter]``.

    ``parameter`` is kept raw: its layout depends on the request (Register New User answers
    with the new user index, see ``registered_user_index``).
    """

    CHARACTERISTIC: ClassVar[str] = "2A9F"

    request_op_code: UcpOpCode | int
    response_value: UcpResponseValue | int
    parameter: bytes = b""

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        if reader.u8("Op Code") != RESPONSE_CODE:
            raise reader.error("Op Code", "not the Response Code op code", 0)
        request_op_code = _op_code(reader.u8("Request Op Code"))
        response_value = _response_value(reader.u8("Response Value"))
        return cls(
            request_op_code=request_op_code,
            response_value=response_value,
            parameter=reader.rest(),
        )

    def encode(self) -> bytes:
        writer = Writer()
        writer.u8(RESPONSE_CODE, "Op Code")
        writer.u8(self.request_op_code, "Request Op Code")
        writer.u8(self.response_value, "Response Value")
        writer.extend(self.parameter)
        return writer.to_bytes()

    @classmethod
    def registered(cls, user_index: int) -> Self:
        """The success response to Register New User, naming the new user's index."""
        if not 0 <= user_index <= 0xFF:
            raise ValueError("User Index does not fit in one byte")
        return cls(
            request_op_code=UcpOpCode.REGISTER_NEW_USER,
            response_value=UcpResponseValue.SUCCESS,
            parameter=bytes([user_index]),
        )

    @property
    def succeeded(self) -> bool:
        return self.response_value == UcpResponseValue.SUCCESS

    @property
    def registered_user_index(self) -> int | None:
        """The new user's index from a successful Register New User response, else None.

        The parameter's first byte; bytes after it are tolerated like any trailing bytes.
        """
        if self.request_op_code != UcpOpCode.REGISTER_NEW_USER or not self.succeeded:
            return None
        return self.parameter[0] if self.parameter else None


def decode_control_point(data: bytes) -> UcpRequest | UcpResponse:
    """Decode either direction of 0x2A9F: op code 0x20 is a response, anything else a request."""
    if data[:1] == bytes([RESPONSE_CODE]):
        return UcpResponse.decode(data)
    return UcpRequest.decode(data)
