"""The packed inference model: 2-bit ternary codes, integer kernels, and an exact compact embedding.

``MMfreeLM.pack()`` returns a ``PackedMMfreeLM``: the same ``forward``, ``prefill``, ``init_state`` and
``step``, with every BitLinear frozen as ``PackedBitLinear`` (2-bit codes + one scale, ``bitlinear.py``):

    n = RMSNorm(x; g)  ->  q_x, s_x = quant_act(n)  ->  y_int = offset_matmul(q_x, codes)  (exact int32)
    y = y_int / (s_x * s_w)                                                                (one rescale)

and the float weight matrices dropped. The codes are stored once, in one layout: offset codes w + 1
(``OffsetPacked``, ``kernels/ternary.py``), every matrix a view of one uint8 buffer laid out in the order a
decode step reads them (``adopt_packed``), so the fast step (``fast/decode.py``) reads them where they are.
A tree holding the older ``PackedTernary`` layout (an object packed before offset codes) is converted when it
is given to a ``PackedMMfreeLM`` (``model.params = tree``, or unpickling). What remains in floating point is small (norm gains, lower
bounds) except the embedding table E (V, H): in the 370M model it is 33 M of the 374 M parameters, and
in float32 it would be half the packed model's memory. ``CompactEmbedding`` stores it in fewer bits
*without changing a single value*, so the packed model gives the same logits as the float one:

    values that are all bfloat16 (a bf16 checkpoint, widened to float32 on load):  12 bits per value
        byte   = sign bit | 7 mantissa bits
        nibble = exponent - base[row]   (1..15), or 0 for exponent 0 (zero, subnormals)
      where base[row] = max exponent of the row - 15; the rare value whose exponent is below that
      window (|x| < 2**-14 of the row's largest) is kept aside as an exception, with its bf16 bits.
    values that are all float16:                                                    16 bits (float16)
    anything else (a float32 checkpoint):                                           32 bits (float32)

Why 12 bits suffices: within one row of a trained embedding the exponents of the non-tiny values span
well under 15 binades, so sign + mantissa + a 4-bit exponent offset rebuild the exact bf16 pattern.

``resident_bytes(model)`` counts the bytes of every array a model holds (float or packed; for a packed model
also what its decode plan holds once a step has built it), each buffer once.
"""
from __future__ import annotations

import numpy as np

from . import threads, validate
from .bitlinear import PackedBitLinear, pack_bitlinear
from .config import MMfreeConfig
from .kernels.ternary import OffsetPacked, as_offset
from .lm import LanguageModel
from .model import MMfreeLM
from .seam import op
from .tree import leaves, paths, tree_map

EXP_WINDOW = 15          # exponents base+1 .. base+15 fit in a nibble; nibble 0 means exponent 0


class CompactEmbedding:
    """An embedding table (V, H) stored exactly in 12, 16 or 32 bits per value (see the module docstring).

    Indexing it like an array gives float32 rows: ``E[ids]`` -> (*ids.shape, H), equal bit for bit to
    the table it was built from. ``kind`` is "bf16-12bit", "float16", "float32" (or "float64" for a
    float64 model, kept as it is).
    """

    def __init__(self, E: np.ndarray):
        E = np.ascontiguousarray(E)                                   # (V, H)
        assert E.ndim == 2 and E.dtype in (np.float32, np.float64), (E.shape, E.dtype)
        self.shape = E.shape
        self.dtype = E.dtype
        if E.dtype == np.float64:                                     # a float64 model (gradient checks):
            self.kind, self._table = "float64", E.copy()              # kept as it is
            return
        u = E.view(np.uint32)
        if not np.any(u & np.uint32(0xFFFF)):                         # every value is a bf16 value
            self.kind = "bf16-12bit"
            self._encode_bf16((u >> 16).astype(np.uint16))
        elif np.array_equal(E.astype(np.float16).astype(np.float32).view(np.uint32), u):
            self.kind, self._table = "float16", E.astype(np.float16)
        else:
            self.kind, self._table = "float32", E.copy()

    @property
    def ndim(self) -> int:
        return 2

    # -- 12-bit bf16 storage

    def _encode_bf16(self, bits: np.ndarray) -> None:
        V, H = bits.shape
        exp = ((bits >> 7) & 0xFF).astype(np.int16)                   # (V, H) biased exponent, 0..255
        self._base = np.maximum(exp.max(axis=1) - EXP_WINDOW, 0).astype(np.int16)   # (V,)
        off = exp - self._base[:, None]                               # (V, H) 1..15 inside the window
        outside = (exp != 0) & (off < 1)                              # too small for the window
        code = np.where(exp == 0, 0, np.where(outside, 0, off)).astype(np.uint8)
        self._lo = (((bits >> 8) & 0x80) | (bits & 0x7F)).astype(np.uint8)   # (V, H) sign | mantissa
        if H % 2:
            code = np.concatenate([code, np.zeros((V, 1), np.uint8)], axis=1)
        self._nib = (code[:, 0::2] | (code[:, 1::2] << 4)).astype(np.uint8)  # (V, ceil(H/2))
        self._exc_index = np.flatnonzero(outside).astype(np.int64)    # sorted flat indices r * H + c
        self._exc_bits = bits.reshape(-1)[self._exc_index].copy()     # their exact bf16 patterns

    def _decode_bf16(self, rows: np.ndarray) -> np.ndarray:
        H = self.shape[1]
        lo = self._lo[rows]                                           # (N, H) uint8
        nib = self._nib[rows]                                         # (N, ceil(H/2))
        code = np.empty((rows.size, 2 * nib.shape[1]), np.uint16)
        code[:, 0::2] = nib & 15
        code[:, 1::2] = nib >> 4
        code = code[:, :H]
        exp = np.where(code == 0, 0, code + self._base[rows, None].astype(np.uint16))
        bits = ((lo.astype(np.uint16) & 0x80) << 8) | (exp.astype(np.uint16) << 7) | (lo & 0x7F)
        if self._exc_index.size:                                      # put the exceptions back
            lo_i = np.searchsorted(self._exc_index, rows * H)
            hi_i = np.searchsorted(self._exc_index, (rows + 1) * H)
            for n in np.flatnonzero(hi_i > lo_i):
                k = slice(lo_i[n], hi_i[n])
                bits[n, self._exc_index[k] - rows[n] * H] = self._exc_bits[k]
        return (bits.astype(np.uint32) << 16).view(np.float32)

    # -- the array-like interface model_forward needs

    def __getitem__(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if self.kind != "bf16-12bit":
            return self._table[ids].astype(self.dtype)
        flat = ids.reshape(-1).astype(np.int64)
        return self._decode_bf16(flat).reshape(*ids.shape, self.shape[1])

    def __array__(self, dtype=None, copy=None):
        full = self[np.arange(self.shape[0])]
        return full if dtype is None else full.astype(dtype)

    @property
    def nbytes(self) -> int:
        if self.kind != "bf16-12bit":
            return self._table.nbytes
        return (self._lo.nbytes + self._nib.nbytes + self._base.nbytes
                + self._exc_index.nbytes + self._exc_bits.nbytes)

    def __repr__(self) -> str:
        return (f"CompactEmbedding({self.shape[0]}x{self.shape[1]}, {self.kind}, "
                f"{self.nbytes / self.shape[0] / self.shape[1] * 8:.2f} bits/value)")


class _numba_threads:
    """Run a block with n Numba threads (thread-local in Numba), then restore; n=None leaves them alone."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        if self.n is not None:
            import numba
            self.old = numba.get_num_threads()
            numba.set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.n is not None:
            import numba
            numba.set_num_threads(self.old)


def pack_params(params: dict) -> dict:
    """The parameter tree with every BitLinear {"W", "g"} replaced by a PackedBitLinear and the
    embedding table by a CompactEmbedding. Every other leaf (gains, lower bounds) is kept as is."""
    def walk(node):
        if isinstance(node, dict):
            if set(node) == {"W", "g"}:
                return pack_bitlinear(node)
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    out = walk({k: v for k, v in params.items() if k != "embeddings"})
    out["embeddings"] = CompactEmbedding(params["embeddings"])
    return {k: out[k] for k in params}                                # the original key order


# Per layer, the order in which a decode step reads the BitLinears (fast/decode.py: f, i, g as one pass, then o,
# gate/up, down); the LM head comes after the last layer.
READ_ORDER = ("f_proj", "i_proj", "g_proj", "o_proj", "gate_proj", "down_proj")


def _read_rank(path: str) -> tuple[int, int]:
    parts = path.split(".")
    layer = int(parts[1]) if parts[0] == "layers" else 1 << 30
    return layer, READ_ORDER.index(parts[-1]) if parts[-1] in READ_ORDER else len(READ_ORDER)


def adopt_packed(params: dict) -> dict:
    """The tree with every PackedBitLinear's codes as offset codes (a PackedTernary converted, ``as_offset``) and
    every code matrix a C-contiguous view of one uint8 buffer, in the order a decode step reads them. Other leaves
    are kept as they are; a tree without packed leaves is returned as it is."""
    found = sorted(((p, leaf) for p, leaf in leaves(params) if isinstance(leaf, PackedBitLinear)),
                   key=lambda item: _read_rank(item[0]))
    if not found:
        return params
    codes = {p: as_offset(leaf.codes) for p, leaf in found}
    buf = np.empty(sum(c.codes.nbytes for c in codes.values()), np.uint8)
    at, new = 0, {}
    for p, leaf in found:
        c = codes[p]
        view = buf[at:at + c.codes.nbytes].reshape(c.codes.shape)
        view[...] = c.codes
        at += c.codes.nbytes
        new[p] = leaf._replace(codes=OffsetPacked(view, c.out_features, c.in_features))
    return tree_map(lambda leaf, path: new.get(path, leaf), params, paths(params))


def _arrays(obj):
    """The NumPy arrays an object holds: itself, the fields of a packed leaf, or a decode plan's (``arrays()``)."""
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, PackedBitLinear):
        return [obj.codes.codes, np.asarray(obj.g)]
    if hasattr(obj, "arrays"):
        return obj.arrays()
    return []


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def resident_bytes(model) -> int:
    """Bytes of every array the model holds (float or packed), each underlying buffer counted once, plus 8 per
    packed scale (a Python float). A packed model's decode plan (``fast/decode.py``), once built, is included:
    it holds views of the model's codes (no copy) and small buffers of its own. Python object overhead excluded."""
    holders = [leaf for _, leaf in leaves(model.params)]
    plan = getattr(model, "__dict__", {}).get("_decode_plan")
    if plan is not None:
        holders.append(plan)
    roots, other = {}, 0
    for h in holders:
        arrays = _arrays(h)
        if not arrays:
            other += int(h.nbytes)                                     # e.g. CompactEmbedding
        for a in arrays:
            r = _root(a)
            roots[id(r)] = r
        other += 8 * isinstance(h, PackedBitLinear)
    return other + sum(r.nbytes for r in roots.values())


class PackedMMfreeLM(MMfreeLM):
    """Inference-only model: every BitLinear runs RMSNorm -> int8 codes -> add/sub kernel -> rescale.

    Same ``forward``, ``prefill``, ``init_state`` and ``step`` as ``MMfreeLM``, and the same logits
    (the integer products are exact either way, and the compact embedding is exact). No float weight
    matrices are kept; ``resident_bytes()`` reports what is.
    """

    def __init__(self, config: MMfreeConfig, params: dict):
        super().__init__(config, params)                              # checks the float parameters
        self._num_params = super().num_params()
        self.params = pack_params(params)

    @property
    def params(self) -> dict:
        return self._params

    @params.setter
    def params(self, params: dict) -> None:
        """Codes in the one layout (``adopt_packed``: older PackedTernary leaves converted); the decode plan of
        the previous parameters is dropped."""
        self._params = adopt_packed(params)
        self.__dict__.pop("_decode_plan", None)

    def __setstate__(self, state: dict) -> None:
        """Unpickling, also of an object saved with the older layout (its tree under "params"): converted."""
        state = dict(state)
        params = state.pop("_params", None) if "_params" in state else state.pop("params")
        state.pop("_decode_plan", None)
        self.__dict__.update(state)
        self.params = params

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_decode_plan", None)                                # rebuilt on first use
        return state

    @property
    def dtype(self):
        return self.params["embeddings"].dtype

    def num_params(self) -> int:
        return self._num_params

    def resident_bytes(self) -> int:
        """Bytes of the packed parameters (codes, scales, gains, the compact embedding)."""
        return resident_bytes(self)

    # -- threads: two must never be slower than one

    num_threads: int | None = None      # Numba threads for this model's kernels; None: Numba's current setting
    guard_threads: bool = True          # with > 1 thread, each step measured and run on one when that is faster
                                        # (fast/decode.py's StepGuard); False: every step on all of them

    def prefill(self, input_ids, state=None):
        with _numba_threads(self.num_threads):
            return super().prefill(input_ids, state)

    def step(self, token_ids, state):
        with _numba_threads(self.num_threads):
            return validate.finite_logits(self.params, *op.packed_step(self, token_ids, state))   # packed_step below, or its twin (fast/decode.py)

    def tune_threads(self, n_tokens: int = 4, candidates=None, rounds: int = 3) -> int:
        """Time ``n_tokens`` decode steps at each thread count (``threads.fastest_thread_count``) and keep the
        fastest for this model (``self.num_threads``).

        On a shared 2-core machine another busy process makes every 2-thread ``prange`` region wait for a
        descheduled thread, and 2 threads decode 2-6x *slower* than 1 (benchmarks/README.md); on a quiet
        machine 2 threads are faster. Measuring is the only reliable way to know which case this is.
        """
        state = self.init_state(1)
        tok = np.zeros(1, np.int64)

        def work():
            s = state
            for _ in range(n_tokens):
                _, s = self.step(tok, s)

        saved, self.num_threads = self.num_threads, None          # steps run at the count being timed
        try:
            best = threads.fastest_thread_count(work, candidates, rounds)
        finally:
            self.num_threads = saved
        self.num_threads = best
        return best

    def loss_and_grads(self, input_ids, labels):
        raise TypeError("a packed model is for inference only: train the float model "
                        "(MMfreeLM) and call pack() afterwards")

    def pack(self) -> "PackedMMfreeLM":
        return self


def packed_step(model: PackedMMfreeLM, token_ids, state):
    """A packed model's one-token step, written plainly: the model's forward on the packed parameters (``lm.py``'s
    ``step``; every BitLinear runs ``bitlinear_packed_forward``). Returns (logits (B, V), new state)."""
    return LanguageModel.step(model, token_ids, state)
