"""Random bytes only ever raise DecodeError, and whatever decodes re-encodes to the same bytes.

Seeded so a failure replays: the assertion message names the seed; set EDGE_FUZZ_SEED to it
(or to any other integer to explore further).
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Callable

import pytest

from drivers.codecs import DECODERS, DecodeError, encode_dis_string, read_float, read_sfloat
from drivers.codecs._cursor import Reader

RUNS = 20_000
MAX_LEN = 20
BASE_SEED = int(os.environ.get("EDGE_FUZZ_SEED", "20240229"))


def _medfloat(short: bool) -> Callable[[bytes], object]:
    def decode(data: bytes) -> object:
        reader = Reader(data, "SFLOAT" if short else "FLOAT")
        value = read_sfloat(reader, "value") if short else read_float(reader, "value")
        reader.expect_end("value")
        return value

    return decode


TARGETS: dict[str, Callable[[bytes], object]] = {
    **DECODERS,
    "SFLOAT": _medfloat(short=True),
    "FLOAT": _medfloat(short=False),
}

# Valid values to mutate, so that deep fields (time stamp ranges, BMI/height) get exercised too:
# uniform random bytes almost never contain a valid Date Time.
SEEDS = {
    "2A9D": [
        bytes.fromhex("0e b036 e807 02 1d 17 3b 3a 03 e500 d406"),
        bytes.fromhex("02 5433 ea07 08 16 08 2a 24"),
    ],
    "2A08": [bytes.fromhex("e2 07 04 11 0f 33 00")],
    "2A9E": [bytes.fromhex("8f 00 00 00")],
}


def _seed(name: str) -> int:
    return BASE_SEED ^ zlib.crc32(name.encode())


def _reencode(decoded: object, data: bytes) -> None:
    if isinstance(decoded, str):
        assert encode_dis_string(decoded) == data.rstrip(b"\x00")
    elif hasattr(decoded, "encode"):
        assert decoded.encode() == data
    # SFLOAT/FLOAT round trips are covered exhaustively in test_ieee11073.


def _check_only_decode_errors(name: str, payloads: Callable[[random.Random], bytes]) -> None:
    decode = TARGETS[name]
    seed = _seed(name)
    rng = random.Random(seed)
    for i in range(RUNS):
        data = payloads(rng)
        try:
            decoded = decode(data)
        except DecodeError:
            continue
        except Exception as exc:  # anything else is a codec bug
            pytest.fail(
                f"{name}: {type(exc).__name__}: {exc} for payload {data.hex()} "
                f"(seed={seed} EDGE_FUZZ_SEED={BASE_SEED}, iteration {i})"
            )
        try:
            _reencode(decoded, data)
        except Exception as exc:
            pytest.fail(
                f"{name}: re-encoding {data.hex()} failed: {exc!r} "
                f"(seed={seed} EDGE_FUZZ_SEED={BASE_SEED}, iteration {i})"
            )


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_random_payloads_only_raise_decode_error(name: str) -> None:
    def payloads(rng: random.Random) -> bytes:
        return rng.randbytes(rng.randint(0, MAX_LEN))

    _check_only_decode_errors(name, payloads)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_mutated_valid_payloads_only_raise_decode_error(name: str) -> None:
    def payloads(rng: random.Random) -> bytes:
        data = bytearray(rng.choice(SEEDS[name]))
        for _ in range(rng.randint(1, 3)):
            action = rng.randrange(4)
            if action == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif action == 1 and data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif action == 2:
                del data[rng.randrange(len(data) + 1) :]
            else:
                data += rng.randbytes(rng.randint(1, 4))
        return bytes(data[:MAX_LEN])

    _check_only_decode_errors(name, payloads)
