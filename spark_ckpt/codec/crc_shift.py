"""CRC-32 of bytes joined from parts whose own CRC is already known, without reading those parts again.

The envelope's checksum is a CRC-32 (zlib's) of everything after it. A record whose large values are
stored apart (``model.ValuePart``) would otherwise read every such value at every record to checksum
it. CRC-32 is affine over GF(2): ``crc32(v, c) == shift(c, len(v)) ^ crc32(v, 0)``, where ``shift(c, n)``
is what ``n`` zero bytes do to the register. ``shift`` is a 32x32 bit matrix; the matrices for 2**k
bytes are built once by squaring (~3 ms), and a length is the product of those its bits name (~30 us per part).
"""

from __future__ import annotations

import zlib

#: _POWERS[k]: the matrix (32 columns, one int each) of 2**k zero bytes, k < 64; built whole on first
#: use and published in one assignment (threads building it at once each get a complete table)
_POWERS: list[list[int]] | None = None


def _apply(matrix: list[int], vector: int) -> int:
    result = 0
    column = 0
    while vector:
        if vector & 1:
            result ^= matrix[column]
        vector >>= 1
        column += 1
    return result


def _powers() -> list[list[int]]:
    global _POWERS
    powers = _POWERS
    if powers is None:
        # column j of one zero byte: the register bit j alone, pushed through it (affine part cancelled)
        base = zlib.crc32(b"\0", 0)
        powers = [[zlib.crc32(b"\0", 1 << j) ^ base for j in range(32)]]
        while len(powers) < 64:
            last = powers[-1]
            powers.append([_apply(last, column) for column in last])
        _POWERS = powers
    return powers


def shift(crc: int, length: int) -> int:
    """The linear part of running ``length`` bytes through a register holding ``crc``."""
    powers = _powers()
    k = 0
    while length and crc:
        if length & 1:
            crc = _apply(powers[k], crc)
        length >>= 1
        k += 1
    return crc


def crc32_continued(crc: int, part_crc: int, length: int) -> int:
    """``zlib.crc32(part, crc)`` for a part of ``length`` bytes with ``zlib.crc32(part) == part_crc``."""
    return shift(crc, length) ^ part_crc
