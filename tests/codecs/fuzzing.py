"""A seeded fuzz loop for one codec: random bytes only ever raise DecodeError, and whatever
decodes re-encodes to the very same bytes.

Half of the payloads are uniform random, half are valid values with a few random mutations
(uniform bytes almost never hold a valid Date Time, so deep fields would go untested). A failure
names the seed; set EDGE_FUZZ_SEED to replay it.
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from drivers.codecs import DecodeError

BASE_SEED = int(os.environ.get("EDGE_FUZZ_SEED", "20240229"))
MAX_LEN = 24


def seed_for(name: str) -> int:
    return BASE_SEED ^ zlib.crc32(name.encode())


def _mutate(rng: random.Random, valid: bytes) -> bytes:
    data = bytearray(valid)
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


def assert_only_decode_errors(
    name: str, decode: Callable[[bytes], Any], valid: Sequence[bytes], runs: int
) -> int:
    """Run ``runs`` payloads through ``decode``; return how many decoded successfully."""
    seed = seed_for(name)
    rng = random.Random(seed)
    decoded_count = 0
    for i in range(runs):
        size = rng.randint(0, MAX_LEN)
        data = _mutate(rng, rng.choice(valid)) if i % 2 else rng.randbytes(size)
        try:
            decoded = decode(data)
        except DecodeError:
            continue
        except Exception as exc:  # anything else is a codec bug
            pytest.fail(
                f"{name}: {type(exc).__name__}: {exc} for payload {data.hex()} "
                f"(seed={seed} EDGE_FUZZ_SEED={BASE_SEED}, iteration {i})"
            )
        decoded_count += 1
        try:
            again = decoded.encode()
        except Exception as exc:
            pytest.fail(
                f"{name}: re-encoding {data.hex()} failed: {exc!r} "
                f"(seed={seed} EDGE_FUZZ_SEED={BASE_SEED}, iteration {i})"
            )
        if again != data:
            pytest.fail(
                f"{name}: {data.hex()} re-encoded as {again.hex()} "
                f"(seed={seed} EDGE_FUZZ_SEED={BASE_SEED}, iteration {i})"
            )
    return decoded_count
