"""The two number formats: what a register word means and what each instruction computes.

**Q4.3** (the 2024 core's datapath): every vector element is an int8 code, value = code / 8, range
[-16, 15.875]. add / sub saturate; ``mul`` is the 16-bit product shifted right by 3 (floor) then saturated;
``div`` divides by ``b >> 3`` (truncating; +-max or 0 when that is 0); exp / sig / silu are 256-entry lookup
tables; ``norm`` is the RTL's pipeline (square LUT to 9-bit integers, pairwise-averaging tree, square-root
LUT, ``div``); the ternary accumulators are 16-bit and saturate at every add (input-major order). The scalar
extensions keep float32 scalars; a vector times a scalar is re-rounded to Q4.3. Per-token absmax
quantization does not exist here: an activation already is an 8-bit code with the fixed scale 8, so
``qscale`` gives 1 and ``quant`` passes codes through.

**faithful** (model-faithful): a vector word is 32 bits: a float32 for the non-linear parts, an int8 code
(sign-extended) after ``quant``. Every float operation is the float32 NumPy operation minimmf performs, in
minimmf's order; ``quant`` is minimmf's absmax quantizer (round half away from zero); ``tmatmul`` adds and
subtracts int8 codes into exact integer accumulators and its copy-out divides by the scale register in
float32, ``acc / (s_x * s_w)`` -- so outputs equal minimmf's packed integer inference bit for bit.

Taught in chapter 11 (``chapters/11-fpga-the-core.md``).
"""
from __future__ import annotations

import numpy as np

from minimmf.functional import sigmoid, silu
from minimmf.quant import round_half_away

Q_FRAC = 3                  # Q4.3: 3 fractional bits
Q_ONE = 1 << Q_FRAC         # code of 1.0
Q_MIN, Q_MAX = -128, 127
ACC16_MIN, ACC16_MAX = -(1 << 15), (1 << 15) - 1
F32 = np.float32


def sat8(x) -> np.ndarray:
    return np.clip(x, Q_MIN, Q_MAX).astype(np.int8)


def q43_encode(x) -> np.ndarray:
    """Float -> Q4.3 code, clipped then rounded half to even (the 2024 LUT generator's ``round``)."""
    x = np.clip(np.asarray(x, np.float64), Q_MIN / Q_ONE, Q_MAX / Q_ONE)
    return np.round(x * Q_ONE).astype(np.int8)


def q43_decode(code) -> np.ndarray:
    return np.asarray(code).astype(np.float64) / Q_ONE


def _lut(fn) -> np.ndarray:
    """256-entry table indexed by the code's unsigned byte: code -> encode(fn(decode(code)))."""
    codes = np.arange(256, dtype=np.uint8).view(np.int8)
    with np.errstate(over="ignore"):
        return q43_encode(fn(q43_decode(codes)))


LUT_EXP = _lut(np.exp)
LUT_SIG = _lut(lambda v: 1 / (1 + np.exp(-v)))
LUT_SILU = _lut(lambda v: v / (1 + np.exp(-v)))                               # extension
LUT_SQUARE = np.clip(np.round(q43_decode(np.arange(256, dtype=np.uint8).view(np.int8)) ** 2),
                     -256, 255).astype(np.int16)                              # 9-bit, exponent 0
LUT_SQRT = q43_encode(np.sqrt(np.maximum(np.arange(512) - 512 * (np.arange(512) >= 256), 0)))  # 9-bit in


def _lookup(lut, a):
    return lut[np.asarray(a, np.int8).view(np.uint8)]


def q43_div(a, b) -> np.ndarray:
    """The 2024 ``div``: a / (b >>> 3) truncated toward zero, saturated; +-max (or 0) if b >>> 3 is 0."""
    a = np.asarray(a, np.int32)
    bi = np.asarray(b, np.int32) >> Q_FRAC
    safe = np.where(bi == 0, 1, bi)
    q = np.trunc(a / safe).astype(np.int32)
    q = np.where(bi == 0, np.sign(a) * np.where(a < 0, -Q_MIN, Q_MAX), q)
    return sat8(q)


def q43_norm(a) -> np.ndarray:
    """The 2024 ``norm``: squares by LUT, a pairwise averaging tree (truncating), sqrt LUT, then ``div``."""
    v = _lookup(LUT_SQUARE, a).astype(np.int32)
    if v.size & (v.size - 1):
        raise ValueError(f"the 2024 norm needs D a power of two (its averaging tree), got D = {v.size}")
    while v.size > 1:
        v = (v[0::2] + v[1::2]) // 2
    rms = LUT_SQRT[int(v[0]) & 511]
    return q43_div(a, np.full_like(np.asarray(a), rms))


class Q43:
    """The 2024 core's fixed point (see the module docstring)."""
    name = "q4.3"
    word_dtype = np.dtype(np.int8)
    word_bytes = 1

    def encode_vector(self, x) -> np.ndarray:
        return q43_encode(x)

    def decode_vector(self, w) -> np.ndarray:
        return q43_decode(w).astype(np.float32)

    def add(self, a, b):
        return sat8(a.astype(np.int16) + b)

    def sub(self, a, b):
        return sat8(a.astype(np.int16) - b)

    def mul(self, a, b):
        return sat8((a.astype(np.int16) * b) >> Q_FRAC)

    def div(self, a, b):
        return q43_div(a, b)

    def exp(self, a):
        return _lookup(LUT_EXP, a)

    def sig(self, a):
        return _lookup(LUT_SIG, a)

    def silu(self, a):
        return _lookup(LUT_SILU, a)

    def mulsv(self, a, s):
        return sat8(round_half_away(a.astype(np.float64) * np.float64(s)))

    def norm(self, a):
        return q43_norm(a)

    def squares(self, a, n):
        return a[:n].astype(np.int64) ** 2

    def rstd(self, buf, eps):
        mean = float(np.sum(buf)) / (Q_ONE * Q_ONE) / buf.size
        return F32(1.0 / np.sqrt(mean + float(eps)))

    def amax(self, a):
        return F32(np.max(np.abs(a.astype(np.int16))) / Q_ONE)

    def qscale(self, m):
        return F32(1.0)

    def quant(self, a, s):
        return a.copy()

    def tm_codes(self, a) -> np.ndarray:
        return a.astype(np.int8)

    def tm_accumulate(self, acc, w_rows, x):
        """acc (D,) int64 += sum_i w_rows[i] x[i], saturating at 16 bits after every add, i in order.

        Shapes: acc (D,), w_rows (n, D) int8 ternary, x (n,) int8 codes.
        """
        x = x.astype(np.int64)
        if np.max(np.abs(acc), initial=0) + np.sum(np.abs(x)) <= ACC16_MAX:   # no add can saturate
            return acc + x @ w_rows.astype(np.int64)
        for i in range(w_rows.shape[0]):
            acc = np.clip(acc + w_rows[i] * x[i], ACC16_MIN, ACC16_MAX)
        return acc

    def tm_output(self, acc, s):
        return sat8(round_half_away(acc.astype(np.float64) / np.float64(s)))


class Faithful:
    """Model-faithful: float32 words for floats, int8 codes for the ternary product, exact int accumulators."""
    name = "faithful"
    word_dtype = np.dtype(np.int32)
    word_bytes = 4

    @staticmethod
    def f(w) -> np.ndarray:
        return np.asarray(w, np.int32).view(np.float32)

    @staticmethod
    def w(x) -> np.ndarray:
        return np.ascontiguousarray(x, np.float32).view(np.int32)

    def encode_vector(self, x) -> np.ndarray:
        return self.w(np.asarray(x, np.float32))

    def decode_vector(self, w) -> np.ndarray:
        return self.f(w).copy()

    def add(self, a, b):
        return self.w(self.f(a) + self.f(b))

    def sub(self, a, b):
        return self.w(self.f(a) - self.f(b))

    def mul(self, a, b):
        return self.w(self.f(a) * self.f(b))

    def div(self, a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.w(self.f(a) / self.f(b))

    def exp(self, a):
        with np.errstate(over="ignore"):
            return self.w(np.exp(self.f(a)))

    def sig(self, a):
        return self.w(sigmoid(self.f(a)))

    def silu(self, a):
        return self.w(silu(self.f(a)))

    def mulsv(self, a, s):
        return self.w(self.f(a) * F32(s))

    def norm(self, a):
        x = self.f(a)
        return self.w(x * self.rstd(x * x, F32(1e-6)))

    def squares(self, a, n):
        x = self.f(a)[:n]
        return x * x

    def rstd(self, buf, eps):
        """1 / sqrt(mean(buf) + eps) exactly as minimmf's RMSNorm: NumPy's pairwise float32 mean."""
        m = np.mean(np.asarray(buf, np.float32).reshape(1, -1), axis=-1, keepdims=True)
        return (1.0 / np.sqrt(m + F32(eps)))[0, 0]

    def amax(self, a):
        return np.max(np.abs(self.f(a)))

    def qscale(self, m):
        return F32(127) / np.maximum(F32(m), F32(1e-5))

    def quant(self, a, s):
        return np.clip(round_half_away(self.f(a) * F32(s)), -128, 127).astype(np.int32)

    def tm_codes(self, a) -> np.ndarray:
        return np.asarray(a, np.int32).astype(np.int8)        # the low 8 bits of each word

    def tm_accumulate(self, acc, w_rows, x):
        return acc + x.astype(np.int64) @ w_rows.astype(np.int64)

    def tm_output(self, acc, s):
        if np.max(np.abs(acc), initial=0) >= 1 << 31:
            raise OverflowError("tmatmul accumulator overflowed int32")
        return self.w(acc.astype(np.int32).astype(np.float32) / F32(s))


FORMATS = {"q4.3": Q43(), "faithful": Faithful()}


def get_format(name) -> Q43 | Faithful:
    if not isinstance(name, str):
        return name
    if name not in FORMATS:
        raise ValueError(f"unknown number format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]
