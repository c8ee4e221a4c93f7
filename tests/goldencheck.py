"""Helpers for the differential tests against the golden file: the per-op tolerance and golden parameters.

The golden parameters are built straight from the released key names (``param/<key>``), not through
``minimmf.interop``, so that a layer test does not depend on the name table it is not testing.
"""
import numpy as np

GOLDEN_RTOL = 1e-5   # per op, relative to the expected tensor's max |value| (golden README)


def assert_close_to_max(actual, expected, name: str, rtol: float = GOLDEN_RTOL) -> None:
    """|actual - expected| <= rtol * max|expected| everywhere, with shapes equal."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != expected {expected.shape}"
    err = np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))
    bound = rtol * np.max(np.abs(expected.astype(np.float64)))
    assert err <= bound, f"{name}: max error {err:.3e} > {rtol:g} x max|expected| = {bound:.3e}"


def heads_to_channels(a: np.ndarray) -> np.ndarray:
    """The reference's head layout to minimmf's: [B, nh, T, hd] -> [B, T, nh*hd]; [B, nh, hd] -> [B, nh*hd]."""
    if a.ndim == 3:
        return a.reshape(a.shape[0], -1)
    B, nh, T, hd = a.shape
    return a.transpose(0, 2, 1, 3).reshape(B, T, nh * hd)


def golden_bitlinear_params(golden, module: str) -> dict:
    """{"W", "g"} of the BitLinear ``module`` (e.g. "model.layers.0.attn.f_proj", "lm_head")."""
    return {"W": golden[f"param/{module}.weight"], "g": golden[f"param/{module}.norm.weight"]}


def golden_mlgru_params(golden, l: int) -> dict:
    """Layer l's MLGRU params: i/f/g/o_proj BitLinears and the g_norm gain."""
    pre = f"model.layers.{l}.attn"
    p = {name: golden_bitlinear_params(golden, f"{pre}.{name}") for name in ("i_proj", "f_proj", "g_proj", "o_proj")}
    p["g_norm"] = golden[f"param/{pre}.g_norm.weight"]
    return p


def golden_glu_params(golden, l: int) -> dict:
    """Layer l's GLU params: gate_proj (2I, H) and down_proj (H, I)."""
    return {name: golden_bitlinear_params(golden, f"model.layers.{l}.mlp.{name}")
            for name in ("gate_proj", "down_proj")}


def golden_block_params(golden, l: int) -> dict:
    """Layer l's block params: attn_norm, attn (MLGRU), mlp_norm, mlp (GLU)."""
    return {"attn_norm": golden[f"param/model.layers.{l}.attn_norm.weight"], "attn": golden_mlgru_params(golden, l),
            "mlp_norm": golden[f"param/model.layers.{l}.mlp_norm.weight"], "mlp": golden_glu_params(golden, l)}
