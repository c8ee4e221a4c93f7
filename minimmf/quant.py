"""Ternary weights and 8-bit activations: the two quantizers of BitLinear.

SPEC §1. Weights are quantized *per matrix* to {-1, 0, +1} with an absmean scale;
activations are quantized *per token* (per row) to int8 with an absmax scale:

    s_w = 1 / max(mean(|W|), 1e-5)      q_w = clip(round(W * s_w), -1, 1)       W_q = q_w / s_w
    s_x = 127 / max(max_j |x_j|, 1e-5)  q_x = clip(round(x * s_x), -128, 127)   x_q = q_x / s_x

Rounding is half away from zero (what the released GPU kernel does; NumPy's
``np.round`` rounds half to even). This module is the one place that choice is made.

The backward pass of both quantizers is the straight-through estimator (STE): the
gradient passes through as if quantization were the identity, so there is no
``*_backward`` here — see ``bitlinear.py`` for where that happens.

Taught in chapter 1 (``chapters/01-ternary-quantization.md``).
"""
from __future__ import annotations

import numpy as np

from .config import ACT_EPS, WEIGHT_EPS   # 1e-5 each: floors on mean|W| and on a token's max|x|

ACT_QMAX = 127         # int8 activation codes live in [-128, 127]


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, ties away from zero: 0.5 -> 1, -2.5 -> -3.

    ``np.round`` would give 0 and -2 (ties to even); the reference GPU kernel uses
    round-half-away-from-zero, so minimmf does too.
    """
    a = np.abs(x)                       # not floor(a + 0.5): that sum rounds up for the float just
    return np.copysign(np.floor(a) + (a - np.floor(a) >= 0.5), x)   # below 1/2 and for odd a >= 2**mant


def weight_quant(W: np.ndarray) -> tuple[np.ndarray, np.floating]:
    """Absmean ternary quantization of a whole matrix.

    q_w = clip(round(W * s_w), -1, 1) with s_w = 1 / max(mean|W|, 1e-5).
    Shapes: W (O, I) float -> q_w (O, I) int8 in {-1, 0, 1}, s_w scalar (dtype of W).
    """
    s_w = W.dtype.type(1.0) / np.maximum(np.mean(np.abs(W)), W.dtype.type(WEIGHT_EPS))
    q_w = np.clip(round_half_away(W * s_w), -1, 1).astype(np.int8)
    return q_w, s_w


def activation_quant(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absmax 8-bit quantization, one scale per token (over the last axis).

    q_x = clip(round(x * s_x), -128, 127) with s_x = 127 / max(max_j |x_j|, 1e-5).
    Shapes: x (..., I) float -> q_x (..., I) int8, s_x (..., 1) (dtype of x).
    """
    s_x = x.dtype.type(ACT_QMAX) / np.maximum(np.max(np.abs(x), axis=-1, keepdims=True),
                                               x.dtype.type(ACT_EPS))
    q_x = np.clip(round_half_away(x * s_x), -128, 127).astype(np.int8)
    return q_x, s_x


def weight_quant_dequant(W: np.ndarray) -> np.ndarray:
    """W_q = q_w / s_w: the ternary matrix seen as floats (what the STE differentiates)."""
    q_w, s_w = weight_quant(W)
    return q_w.astype(W.dtype) / s_w


def activation_quant_dequant(x: np.ndarray) -> np.ndarray:
    """x_q = q_x / s_x: the 8-bit activations seen as floats."""
    q_x, s_x = activation_quant(x)
    return q_x.astype(x.dtype) / s_x
