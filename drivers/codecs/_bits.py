"""Status words as named flags: the one split and join every bit-field class of the codecs uses.

Reserved bits are kept in place in an ``rfu`` field so that ``join(split(x)) == x``; a word that
does not fit its width, or reserved bits outside their mask, is a ``ValueError`` naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence


def split(
    raw: int, names: Sequence[str], *, width: int, what: str, first: int = 0
) -> dict[str, bool]:
    """``{name: bit set}`` for consecutive bits from ``first``; every pattern is accepted."""
    if not 0 <= raw < 1 << width:
        raise ValueError(f"{what} is a {width}-bit field")
    return {name: bool(raw >> (first + i) & 1) for i, name in enumerate(names)}


def join(
    flags: object, names: Sequence[str], *, rfu: int, rfu_mask: int, what: str, first: int = 0
) -> int:
    """The word from ``flags``' named booleans and its reserved bits ``rfu``."""
    if rfu & ~rfu_mask:
        raise ValueError(f"{what} rfu may only hold the reserved bits (mask 0x{rfu_mask:X})")
    raw = rfu
    for i, name in enumerate(names):
        if getattr(flags, name):
            raw |= 1 << (first + i)
    return raw
