"""Record Access Control Point (0x2A52): the stored-record protocol of Glucose, CGM and Pulse
Oximeter services (spec §6.4, §7.7).

A value is Op Code (uint8) · Operator (uint8) · Operand. Requests go client -> server; the server
answers with an indication: ``05 00 <count>`` (number of stored records) or ``06 00 <request op
code> <response code>``. Both directions are here, because the gateway writes requests and reads
responses while the emulated meter does the opposite, and they must not drift apart.

Filter types are service specific (GLS 0x01 sequence number, 0x02 user facing time; CGMS 0x01
time offset), so the filter type is a plain ``int``. ``RacpRequest.decode`` checks only the
*structure* (operand length for the operator, value width for the filter type); whether an op
code, operator or filter is supported is the server's call, answered with a ``ResponseCode``.
A request that does not decode is what a server answers with Invalid Operand (0x05); it finds
the request op code for that answer in the first byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Self

from ._cursor import Reader, Writer
from .date_time import SIZE as DATE_TIME_SIZE
from .date_time import DateTime
from .errors import DecodeError

CHARACTERISTIC = "2A52"

# Filter types (the Filter Type octet of operators <=, >= and within range).
GLS_SEQUENCE_NUMBER = 0x01  # uint16
GLS_USER_FACING_TIME = 0x02  # Date Time, 7 octets
CGMS_TIME_OFFSET = 0x01  # uint16 minutes

# Octets per filter value; a filter type missing here keeps its operand as raw bytes.
_FILTER_WIDTH = {0x01: 2, GLS_USER_FACING_TIME: DATE_TIME_SIZE}

# Nordic accepts these widths for the count of a Number of Stored Records response.
COUNT_WIDTHS = (1, 2, 4)


class OpCode(IntEnum):
    """RACP op codes (spec §6.4); 0x05 and 0x06 are the server's responses."""

    REPORT_STORED_RECORDS = 0x01
    DELETE_STORED_RECORDS = 0x02
    ABORT_OPERATION = 0x03
    REPORT_NUMBER_OF_STORED_RECORDS = 0x04
    NUMBER_OF_STORED_RECORDS_RESPONSE = 0x05
    RESPONSE_CODE = 0x06


class Operator(IntEnum):
    """RACP operators (spec §6.4)."""

    NULL = 0x00
    ALL_RECORDS = 0x01
    LESS_THAN_OR_EQUAL = 0x02
    GREATER_THAN_OR_EQUAL = 0x03
    WITHIN_RANGE = 0x04  # inclusive
    FIRST_RECORD = 0x05  # oldest
    LAST_RECORD = 0x06  # newest


class ResponseCode(IntEnum):
    """Response Code values of ``06 00 <op> <code>`` (spec §6.4)."""

    SUCCESS = 0x01
    OP_CODE_NOT_SUPPORTED = 0x02
    INVALID_OPERATOR = 0x03
    OPERATOR_NOT_SUPPORTED = 0x04
    INVALID_OPERAND = 0x05
    NO_RECORDS_FOUND = 0x06
    ABORT_UNSUCCESSFUL = 0x07
    PROCEDURE_NOT_COMPLETED = 0x08
    OPERAND_NOT_SUPPORTED = 0x09


_NO_OPERAND: frozenset[int] = frozenset(
    {Operator.NULL, Operator.ALL_RECORDS, Operator.FIRST_RECORD, Operator.LAST_RECORD}
)
_VALUE_COUNT: dict[int, int] = {
    Operator.LESS_THAN_OR_EQUAL: 1,
    Operator.GREATER_THAN_OR_EQUAL: 1,
    Operator.WITHIN_RANGE: 2,
}


def _read_operand(reader: Reader, operator: int) -> tuple[int | None, bytes]:
    """(filter type, operand bytes after it) for ``operator``; DecodeError on a bad layout.

    Operators without an operand must end the value; <= and >= take a filter type and one value,
    within range two; an unknown filter type or operator keeps the rest raw.
    """
    if operator in _NO_OPERAND:
        reader.expect_end("Operand")
        return None, b""
    count = _VALUE_COUNT.get(operator)
    if count is None:
        return None, reader.rest()
    filter_type = reader.u8("Filter Type")
    width = _FILTER_WIDTH.get(filter_type)
    if width is None:
        return filter_type, reader.rest()
    start = reader.offset
    names = ("Operand",) if count == 1 else ("Operand Minimum", "Operand Maximum")
    for name in names:
        if width == DATE_TIME_SIZE:
            DateTime.read(reader, name)
        else:
            reader.take(width, name)
    reader.expect_end("Operand")
    return filter_type, reader.data[start:]


@dataclass(frozen=True, slots=True, kw_only=True)
class RacpRequest:
    """A client request written to 0x2A52; ``operand`` is what follows the filter type.

    ``op_code`` and ``operator`` are raw ints (``OpCode``/``Operator`` values when defined), so a
    server can decode an unsupported one and answer it with the right Response Code.
    """

    CHARACTERISTIC: ClassVar[str] = CHARACTERISTIC

    op_code: int
    operator: int
    filter_type: int | None = None  # only for <=, >= and within range
    operand: bytes = b""  # filter value(s), little-endian, raw

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        op_code = reader.u8("Op Code")
        operator = reader.u8("Operator")
        filter_type, operand = _read_operand(reader, operator)
        return cls(op_code=op_code, operator=operator, filter_type=filter_type, operand=operand)

    def encode(self) -> bytes:
        """Rebuild the value; ValueError when the operand does not fit the operator.

        The check is the decoder's own, so ``decode(encode(r)) == r`` for every request that
        encodes.
        """
        writer = Writer()
        writer.u8(self.op_code, "Op Code")
        writer.u8(self.operator, "Operator")
        if self.filter_type is not None:
            writer.u8(self.filter_type, "Filter Type")
        writer.extend(self.operand)
        data = writer.to_bytes()
        reader = Reader(data, self.CHARACTERISTIC)
        reader.take(2, "Op Code and Operator")
        try:
            parsed = _read_operand(reader, self.operator)
        except DecodeError as exc:
            raise ValueError(
                f"operand does not fit the operator: {exc.field}: {exc.reason}"
            ) from exc
        if parsed != (self.filter_type, self.operand):
            raise ValueError("filter_type is only carried by operators <=, >= and within range")
        return data

    # -- constructors for the requests the gateway sends -----------------------------------------

    @classmethod
    def report_all(cls) -> Self:
        """``01 01``: report every stored record."""
        return cls(op_code=OpCode.REPORT_STORED_RECORDS, operator=Operator.ALL_RECORDS)

    @classmethod
    def report_first(cls) -> Self:
        """``01 05``: report the oldest stored record."""
        return cls(op_code=OpCode.REPORT_STORED_RECORDS, operator=Operator.FIRST_RECORD)

    @classmethod
    def report_last(cls) -> Self:
        """``01 06``: report the newest stored record."""
        return cls(op_code=OpCode.REPORT_STORED_RECORDS, operator=Operator.LAST_RECORD)

    @classmethod
    def report_greater_or_equal_sequence(cls, sequence_number: int) -> Self:
        """``01 03 01 <uint16>``: GLS records from ``sequence_number`` on (catching up a gap)."""
        return cls._at_least(OpCode.REPORT_STORED_RECORDS, GLS_SEQUENCE_NUMBER, sequence_number)

    @classmethod
    def report_time_offset_at_least(cls, minutes: int) -> Self:
        """``01 03 01 <uint16>``: CGM records whose time offset is at least ``minutes``."""
        return cls._at_least(OpCode.REPORT_STORED_RECORDS, CGMS_TIME_OFFSET, minutes)

    @classmethod
    def number_of_records_all(cls) -> Self:
        """``04 01``: ask how many records are stored."""
        return cls(op_code=OpCode.REPORT_NUMBER_OF_STORED_RECORDS, operator=Operator.ALL_RECORDS)

    @classmethod
    def number_of_records_greater_or_equal_sequence(cls, sequence_number: int) -> Self:
        """``04 03 01 <uint16>``: how many GLS records from ``sequence_number`` on."""
        return cls._at_least(
            OpCode.REPORT_NUMBER_OF_STORED_RECORDS, GLS_SEQUENCE_NUMBER, sequence_number
        )

    @classmethod
    def delete_all(cls) -> Self:
        """``02 01``: delete every stored record."""
        return cls(op_code=OpCode.DELETE_STORED_RECORDS, operator=Operator.ALL_RECORDS)

    @classmethod
    def abort(cls) -> Self:
        """``03 00``: abort the running procedure (the only request accepted meanwhile)."""
        return cls(op_code=OpCode.ABORT_OPERATION, operator=Operator.NULL)

    @classmethod
    def _at_least(cls, op_code: OpCode, filter_type: int, value: int) -> Self:
        if not 0 <= value <= 0xFFFF:
            raise ValueError("the filter value is a uint16")
        return cls(
            op_code=op_code,
            operator=Operator.GREATER_THAN_OR_EQUAL,
            filter_type=filter_type,
            operand=value.to_bytes(2, "little"),
        )

    # -- views for the server side ---------------------------------------------------------------

    @property
    def op(self) -> OpCode | None:
        """The defined op code; None for an unknown one (answer: Op Code Not Supported)."""
        try:
            return OpCode(self.op_code)
        except ValueError:
            return None

    @property
    def operator_kind(self) -> Operator | None:
        """The defined operator; None for an unknown one (answer: Invalid Operator)."""
        try:
            return Operator(self.operator)
        except ValueError:
            return None

    @property
    def uint16_values(self) -> tuple[int, ...]:
        """The filter values for filter type 0x01 (GLS sequence number, CGMS time offset);
        empty for any other filter type or when there is no filter."""
        if self.filter_type != 0x01:
            return ()
        return tuple(
            int.from_bytes(self.operand[i : i + 2], "little")
            for i in range(0, len(self.operand), 2)
        )

    @property
    def date_time_values(self) -> tuple[DateTime, ...]:
        """The filter values for GLS filter type 0x02 (user facing time); empty otherwise."""
        if self.filter_type != GLS_USER_FACING_TIME:
            return ()
        reader = Reader(self.operand, self.CHARACTERISTIC)
        values: list[DateTime] = []
        while reader.remaining:
            values.append(DateTime.read(reader, "Operand"))
        return tuple(values)


@dataclass(frozen=True, slots=True, kw_only=True)
class RacpResponse:
    """A server indication on 0x2A52: a record count or a Response Code.

    Number of Stored Records (``05 00 <count>``): ``number_of_records`` and ``count_width``
    (1, 2 or 4 octets; uint16 is the standard, Nordic tolerates the others, so the width is kept
    for the round trip). Response Code (``06 00 <op> <code>``): ``request_op_code`` and
    ``response_code``, raw ints (unknown codes kept).
    """

    CHARACTERISTIC: ClassVar[str] = CHARACTERISTIC

    op_code: OpCode
    number_of_records: int | None = None
    count_width: int = 2
    request_op_code: int | None = None
    response_code: int | None = None

    @classmethod
    def decode(cls, data: bytes) -> Self:
        reader = Reader(data, cls.CHARACTERISTIC)
        op_code = reader.u8("Op Code")
        if op_code not in (OpCode.NUMBER_OF_STORED_RECORDS_RESPONSE, OpCode.RESPONSE_CODE):
            raise reader.error("Op Code", "not a response op code (0x05 or 0x06)", 0)
        if reader.u8("Operator") != Operator.NULL:
            raise reader.error("Operator", "a response carries the null operator (0x00)", 1)
        if op_code == OpCode.NUMBER_OF_STORED_RECORDS_RESPONSE:
            width = reader.remaining
            if width not in COUNT_WIDTHS:
                raise reader.error("Number of Records", f"needs 1, 2 or 4 bytes, {width} left")
            count = reader.uint(width, "Number of Records")
            return cls(
                op_code=OpCode.NUMBER_OF_STORED_RECORDS_RESPONSE,
                number_of_records=count,
                count_width=width,
            )
        request_op_code = reader.u8("Request Op Code")
        response_code = reader.u8("Response Code")
        reader.expect_end("Response Code")
        return cls(
            op_code=OpCode.RESPONSE_CODE,
            request_op_code=request_op_code,
            response_code=response_code,
        )

    def encode(self) -> bytes:
        """Rebuild the value; ValueError for a shape the wire format cannot carry."""
        writer = Writer()
        writer.u8(OpCode(self.op_code), "Op Code")
        writer.u8(Operator.NULL, "Operator")
        if self.op_code == OpCode.NUMBER_OF_STORED_RECORDS_RESPONSE:
            if self.number_of_records is None:
                raise ValueError("a Number of Stored Records response needs number_of_records")
            if self.request_op_code is not None or self.response_code is not None:
                raise ValueError("a Number of Stored Records response carries no response code")
            if self.count_width not in COUNT_WIDTHS:
                raise ValueError("count_width must be 1, 2 or 4")
            writer.uint(self.count_width, self.number_of_records, "Number of Records")
        elif self.op_code == OpCode.RESPONSE_CODE:
            if self.request_op_code is None or self.response_code is None:
                raise ValueError("a Response Code needs request_op_code and response_code")
            if self.number_of_records is not None or self.count_width != 2:
                raise ValueError("a Response Code carries no record count")
            writer.u8(self.request_op_code, "Request Op Code")
            writer.u8(self.response_code, "Response Code")
        else:
            raise ValueError("op_code must be 0x05 or 0x06 in a response")
        return writer.to_bytes()

    @classmethod
    def count(cls, number_of_records: int, *, width: int = 2) -> Self:
        """``05 00 <count>``: the answer to Report Number of Stored Records."""
        return cls(
            op_code=OpCode.NUMBER_OF_STORED_RECORDS_RESPONSE,
            number_of_records=number_of_records,
            count_width=width,
        )

    @classmethod
    def result(cls, request_op_code: int, response_code: int) -> Self:
        """``06 00 <op> <code>``: how a request ended (Success, No Records Found, ...)."""
        return cls(
            op_code=OpCode.RESPONSE_CODE,
            request_op_code=request_op_code,
            response_code=response_code,
        )

    @property
    def response(self) -> ResponseCode | None:
        """The defined response code; None for a count or an unknown code."""
        if self.response_code is None:
            return None
        try:
            return ResponseCode(self.response_code)
        except ValueError:
            return None

    @property
    def request(self) -> OpCode | None:
        """The defined op code the Response Code answers; None for a count or unknown op."""
        if self.request_op_code is None:
            return None
        try:
            return OpCode(self.request_op_code)
        except ValueError:
            return None

    @property
    def is_success(self) -> bool:
        """A Success response code, or a record count (only sent when the request worked)."""
        if self.op_code == OpCode.NUMBER_OF_STORED_RECORDS_RESPONSE:
            return True
        return self.response_code == ResponseCode.SUCCESS

    @property
    def records(self) -> int | None:
        """The record count of a Number of Stored Records response; None for a Response Code."""
        return self.number_of_records


def decode_racp(data: bytes) -> RacpRequest | RacpResponse:
    """Either direction of a captured 0x2A52 value: op codes 0x05/0x06 are server responses,
    everything else a client request (for ``edge decode`` and the registry)."""
    if data[:1] in (b"\x05", b"\x06"):
        return RacpResponse.decode(data)
    return RacpRequest.decode(data)
