"""Ternary weights as the 2024 core streams them: 2 bits per weight, four per byte, input-major.

Codes (the 2024 RTL's signed 2-bit ``ternary_t``): ``00 = 0, 01 = +1, 11 = -1``; ``10`` is invalid.
A D x D tile W[o, i] (o = output, i = input) is read in the order of the RTL's loops, outer = input index,
inner = output index: weight k = i * D + o sits in byte k // 4, bits 2 (k % 4) and 2 (k % 4) + 1 (the
low pair is consumed first). A tile is D^2 / 4 bytes.

(minimmf's own packing, ``minimmf/kernels/ternary.py``, is a different layout for a CPU: ``01 = +1,
10 = -1``, interleaved 128-input blocks, row-major. The two meet only through the codes q_w.)

A matrix larger than D x D is cut into tiles: output tile r, input tile c holds W[rD:(r+1)D, cD:(c+1)D],
zero-padded; tiles are stored row of tiles after row of tiles (r major, c minor).

Taught in chapter 11 (``chapters/11-fpga-the-core.md``).
"""
from __future__ import annotations

import numpy as np

from .memory import SimError

CODE = {0: 0b00, 1: 0b01, -1: 0b11}
_DECODE = np.array([0, 1, 0, -1], np.int8)      # index by the 2-bit code; 10 is flagged separately


def pack_tile(q: np.ndarray) -> np.ndarray:
    """Ternary tile q (D, D) int8, q[o, i] -> D^2/4 bytes, input-major, low pair first."""
    D = q.shape[0]
    assert q.shape == (D, D) and (D * D) % 4 == 0, q.shape
    flat = q.T.reshape(-1)                                  # k = i * D + o
    codes = np.where(flat == 1, 0b01, np.where(flat == -1, 0b11, 0b00)).astype(np.uint8)
    c = codes.reshape(-1, 4)
    return c[:, 0] | (c[:, 1] << 2) | (c[:, 2] << 4) | (c[:, 3] << 6)


def unpack_codes(b: np.ndarray) -> np.ndarray:
    """Bytes -> ternary values in stream order (4 per byte, low pair first). Invalid code 10 raises."""
    c = (np.asarray(b, np.uint8)[:, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3
    if np.any(c == 0b10):
        raise SimError("ternary weight code 10 is invalid (00 = 0, 01 = +1, 11 = -1)")
    return _DECODE[c.reshape(-1)]


def unpack_tile(b: np.ndarray, D: int) -> np.ndarray:
    """Bytes of one tile -> w_rows (D_in, D_out): w_rows[i, o] = W[o, i] (the order the unit consumes)."""
    return unpack_codes(b).reshape(D, D)


def tile_matrix(q: np.ndarray, D: int) -> tuple[np.ndarray, int, int]:
    """Cut q (O, I) into zero-padded D x D tiles. Returns (bytes of all tiles, row tiles, column tiles)."""
    O, I = q.shape
    no, ni = -(-O // D), -(-I // D)
    padded = np.zeros((no * D, ni * D), np.int8)
    padded[:O, :I] = q
    tiles = [pack_tile(padded[r * D:(r + 1) * D, c * D:(c + 1) * D]) for r in range(no) for c in range(ni)]
    return np.concatenate(tiles), no, ni
