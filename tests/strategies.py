"""Hypothesis strategies shared by the tests: small float arrays, configs, token sequences."""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minimmf


def float_arrays(shape, dtype=np.float64, scale=3.0):
    """Finite floats in [-scale, scale] of a given shape (a tuple or a strategy of tuples)."""
    return hnp.arrays(dtype, shape, elements=st.floats(-scale, scale, allow_nan=False,
                                                       allow_infinity=False, width=32))


def seeds():
    return st.integers(0, 2**32 - 1)


def rng_arrays(draw, shape, dtype=np.float64, scale=1.0):
    """A Gaussian array from a drawn seed: cheap for large shapes, still shrinkable via the seed."""
    rng = np.random.default_rng(draw(seeds()))
    return (rng.standard_normal(shape) * scale).astype(dtype)


@st.composite
def tiny_configs(draw, max_layers=3):
    """Small but complete model configurations: heads > 1, explicit or default I, bounds on/off."""
    heads = draw(st.sampled_from([1, 2, 4]))
    H = heads * draw(st.integers(1, 6))
    I = draw(st.one_of(st.none(), st.integers(1, 24)))
    return minimmf.MMfreeConfig(vocab_size=draw(st.integers(2, 40)), hidden_size=H,
                                num_hidden_layers=draw(st.integers(1, max_layers)), num_heads=heads,
                                intermediate_size=I, use_lower_bound=draw(st.booleans()))


@st.composite
def token_batches(draw, vocab_size, max_B=3, max_T=8):
    B = draw(st.integers(1, max_B))
    T = draw(st.integers(1, max_T))
    rng = np.random.default_rng(draw(seeds()))
    return rng.integers(0, vocab_size, size=(B, T))


# ----------------------------------------------------------------------------- layer parameters
# (appended for test_quant / test_bitlinear / test_mlgru / test_glu / test_block)

def pow2_exponents(lo=-12, hi=12):
    """Exponents k of exact rescalings by 2**k: multiplying by a power of two never rounds."""
    return st.integers(lo, hi)


@st.composite
def gaussian_arrays(draw, shape, dtype=np.float64, scale=1.0):
    """A Gaussian array from a drawn seed (no ties, no zeros with probability 1)."""
    return rng_arrays(draw, shape, dtype, scale)


def random_bitlinear_params(rng, O, I, dtype=np.float64):
    """BitLinear params {"W": (O, I), "g": (I,)}: latent weights N(0, 0.5), gains 1 + 0.1 N(0, 1)."""
    return {"W": (0.5 * rng.standard_normal((O, I))).astype(dtype),
            "g": (1.0 + 0.1 * rng.standard_normal(I)).astype(dtype)}


def random_mlgru_params(rng, H, dtype=np.float64):
    """MLGRU params: four (H, H) BitLinears and the g_norm gain."""
    p = {name: random_bitlinear_params(rng, H, H, dtype)
         for name in ("i_proj", "f_proj", "g_proj", "o_proj")}
    p["g_norm"] = (1.0 + 0.1 * rng.standard_normal(H)).astype(dtype)
    return p


def random_glu_params(rng, H, I, dtype=np.float64):
    """GLU params: gate_proj (2I, H) and down_proj (H, I)."""
    return {"gate_proj": random_bitlinear_params(rng, 2 * I, H, dtype),
            "down_proj": random_bitlinear_params(rng, H, I, dtype)}


def random_block_params(rng, H, I, dtype=np.float64):
    """Block params: attn_norm, MLGRU, mlp_norm, GLU."""
    gain = lambda: (1.0 + 0.1 * rng.standard_normal(H)).astype(dtype)   # noqa: E731
    return {"attn_norm": gain(), "attn": random_mlgru_params(rng, H, dtype),
            "mlp_norm": gain(), "mlp": random_glu_params(rng, H, I, dtype)}


# ----------------------------------------------------------------------------- hostile files

CHECKPOINT_FILES = ["config.json", "model.safetensors", "tokenizer.json", "optimizer.safetensors",
                    "trainer.json", "manifest.json"]

WRONG_TYPES = [None, True, -1, 2**70, 1.5, float("nan"), "x", "", [], [1, "a"], {}, {"a": None}]


@st.composite
def checkpoint_corruptions(draw):
    """One corruption of a checkpoint directory, as (kind, file, argument):
    truncate to a fraction, flip one byte (a position fraction and a bit), delete, add an extra file,
    or set a top-level JSON field (of a JSON file) to a value of the wrong type."""
    kind = draw(st.sampled_from(["truncate", "flip", "delete", "extra", "json_field"]))
    if kind == "json_field":
        f = draw(st.sampled_from(["config.json", "trainer.json", "manifest.json"]))
        return kind, f, (draw(st.integers(0, 40)), draw(st.sampled_from(WRONG_TYPES)))
    f = draw(st.sampled_from(CHECKPOINT_FILES))
    if kind == "truncate":
        return kind, f, draw(st.floats(0, 1, exclude_max=True))
    if kind == "flip":
        return kind, f, (draw(st.floats(0, 1, exclude_max=True)), draw(st.integers(0, 7)))
    if kind == "extra":
        return kind, draw(st.sampled_from(["notes.txt", "model.safetensors.index.json", ".hidden"])), \
            draw(st.binary(max_size=64))
    return kind, f, None


def corpus_bytes():
    """Any byte string, biased towards the interesting: empty, whitespace, NUL, invalid UTF-8, text."""
    return st.one_of(st.binary(max_size=3000),
                     st.text(max_size=3000).map(str.encode),
                     st.sampled_from([b"", b" \n\t", b"\x00" * 100, b"\xff\xfe" * 500, b"ab" * 2000,
                                      "é".encode() * 1500, b"\xef\xbb\xbf" + b"x" * 3000]))
