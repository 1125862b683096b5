"""Low-bit codes and pruning masks packed into bytes, exactly reversible.

4-bit codes go two to a byte and 2-bit codes four to a byte, the first value in the lowest bits; 8- and 6-bit codes
stay one to a byte (packing 6-bit codes four to three bytes would save a quarter of those bytes: not done yet).
A mask is a bitmask, eight weights to a byte (numpy's packbits, first weight in the highest bit).
"""

from __future__ import annotations

import numpy as np

PACKED_BITS = (4, 2)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed codes in [-2^(b-1), 2^(b-1)) (any shape) -> uint8 [ceil(size * bits / 8)]; 8 and 6 bits: int8 as is."""
    flat = np.asarray(codes, np.int8).reshape(-1)
    if bits not in PACKED_BITS:
        return flat
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if flat.size and (flat.min() < low or flat.max() > high):
        raise ValueError(f"codes outside [{low}, {high}] cannot be packed to {bits} bits.")
    per_byte = 8 // bits
    unsigned = (flat.astype(np.int16) - low).astype(np.uint8)  # offset binary: 0 .. 2^b - 1
    unsigned = np.pad(unsigned, (0, -flat.size % per_byte)).reshape(-1, per_byte)
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    return np.bitwise_or.reduce(unsigned << shifts, axis=1).astype(np.uint8)


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first `count` int8 codes of `pack_codes(codes, bits)`, flat."""
    if bits not in PACKED_BITS:
        return np.asarray(packed, np.int8)[:count]
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    unsigned = (packed[:, None] >> shifts) & np.uint8((1 << bits) - 1)
    return (unsigned.reshape(-1)[:count].astype(np.int16) - (1 << (bits - 1))).astype(np.int8)


def pack_mask(mask: np.ndarray) -> np.ndarray:
    """bool mask (any shape) -> uint8 bitmask [ceil(size / 8)]."""
    return np.packbits(np.asarray(mask, bool).reshape(-1))


def unpack_mask(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    return np.unpackbits(packed, count=count).astype(bool).reshape(shape)
