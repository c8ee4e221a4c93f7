"""Tests for minimmf/kernels/fused.py: every fused kernel gives the numbers of the NumPy code it replaces.

The references are the layers' own readable NumPy functions (the layer files never call a kernel) or written out
here from the same lines; whole-model checks choose the path with ``seam.using``. Integer codes and everything the forward computes must be equal
bit for bit (a code that flips at a rounding tie moves the logits); the few results that go through Numba's
``log`` (the loss value) get a tight tolerance instead.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minimmf
from minimmf import functional, loss, quant, seam
from minimmf.bitlinear import bitlinear_backward, bitlinear_forward
from minimmf.fast import bitlinear as fast_bitlinear, loss as fast_loss
from minimmf.kernels import fused
from minimmf.optim import AdamW

pytestmark = pytest.mark.jit

dtypes = st.sampled_from([np.float32, np.float64])
# widths around NumPy's pairwise-summation breakpoints (< 8, the 8-wide unroll, 128, the recursive split)
widths = st.sampled_from([1, 3, 8, 13, 64, 127, 128, 129, 136, 200, 256, 300])


def _arrays(seed, shape, dtype, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


@st.composite
def row_problems(draw, max_N=12):
    """(seed, N, C, dtype) for a (N, C) problem."""
    return (draw(st.integers(0, 2**31 - 1)), draw(st.integers(1, max_N)), draw(widths), draw(dtypes))


# ----------------------------------------------------------------------------- building blocks

@given(st.integers(0, 2**31 - 1), st.integers(1, 5000), dtypes)
def test_pairwise_sum_equals_numpy_sum_bit_for_bit(seed, n, dtype):
    """The kernel's row sum adds in NumPy's pairwise order, so sum and mean agree exactly with np.sum."""
    a = _arrays(seed, n, dtype, 10.0)
    assert fused._pairwise_sum(a, 0, n, dtype(0)) == np.sum(a)


def test_pairwise_sum_is_exact_at_the_edge_of_every_written_out_level_and_refuses_longer_rows():
    """Each level of the written-out recursion takes rows up to its limit, and the deepest refuses longer rows."""
    a = _arrays(7, fused.PW_MAX + 1, np.float32, 10.0)
    for m in fused._PW_LIMITS[1:6]:
        for n in (m - 1, m, m + 1):
            assert fused._pairwise_sum(a, 3, n, np.float32(0)) == np.sum(a[3:3 + n])
    assert fused._pairwise_sum(a, 0, fused.PW_MAX, np.float32(0)) == np.sum(a[:fused.PW_MAX])
    with pytest.raises(ValueError, match="too long"):
        fused._pairwise_sum(a, 0, fused.PW_MAX + 1, np.float32(0))


def test_round_half_away_of_one_scalar_equals_quant_round_half_away():
    """The scalar rounding inside the kernels is quant.round_half_away, ties and near-ties included."""
    for dtype in (np.float32, np.float64):
        v = np.array([0.5, -0.5, 1.5, -2.5, 2.5, 0.0, -0.0, 0.49999997, -0.49999997, 126.5, -127.5, 3.2,
                      np.nextafter(dtype(0.5), dtype(0)), 2.0**23 + 1, -(2.0**52 + 1)], dtype)
        got = np.array([fused._round_half_away(t, dtype(0.5), dtype(1), dtype(0)) for t in v], dtype)
        np.testing.assert_array_equal(got, quant.round_half_away(v))


def test_only_float32_or_float64_arrays_of_one_dtype_go_to_the_kernels():
    """fusable() accepts float32 or float64 arrays of one dtype; mixed or other dtypes run the NumPy layer."""
    x = np.ones((2, 3), np.float32)
    assert fused.fusable(x) and fused.fusable(x.astype(np.float64), np.ones(3))
    assert not fused.fusable(x, x.astype(np.float64))
    assert not fused.fusable(x.astype(np.float16)) and not fused.fusable(np.ones(3, int))


@given(row_problems(), st.integers(0, 5), st.integers(0, 5))
def test_neg_abs_kernel_equals_negative_of_absolute_exactly(problem, left, right):
    """-|x| of a block of columns of a wider array equals np.negative(np.abs(x)) bit for bit (signed zeros too)."""
    seed, N, C, dtype = problem
    y = _arrays(seed, (N, left + C + right), dtype)
    y[:, left] = np.where(np.arange(N) % 2 == 0, dtype(0), dtype(-0.0))
    got = fused.neg_abs(y, left, C)
    assert got.shape == (N, C) and got.dtype == dtype
    np.testing.assert_array_equal(got.view(f"u{y.itemsize}"), np.negative(np.abs(y[:, left:left + C])).view(
        f"u{y.itemsize}"))


@given(row_problems())
def test_divide_rows_kernel_equals_numpy_division_exactly(problem):
    """BitLinear's y /= s_x s_w, row by row in place, equals NumPy's broadcast division bit for bit."""
    seed, N, C, dtype = problem
    y, d = _arrays(seed, (N, C), dtype, 1e3), np.abs(_arrays(seed + 1, (N, 1), dtype)) + dtype(1e-3)
    want = y / d
    assert fused.divide_rows(y, d) is y
    np.testing.assert_array_equal(y, want)


# ----------------------------------------------------------------------------- RMSNorm and the quantizers

@given(row_problems())
def test_rmsnorm_forward_kernel_equals_reference_exactly(problem):
    """y = x / sqrt(mean(x^2) + eps) * w and rstd are equal bit for bit to functional.rmsnorm_forward."""
    seed, N, C, dtype = problem
    x, w = _arrays(seed, (N, C), dtype), _arrays(seed + 1, C, dtype, 1.0)
    y, rstd = fused.rmsnorm_forward(x, w, 1e-6)
    y0, c0 = functional.rmsnorm_forward(x, w, 1e-6)
    assert y.dtype == dtype and rstd.shape == (N, 1)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(rstd, c0.rstd)


@pytest.mark.parametrize("threads", ["all", 1])
@given(problem=row_problems())
def test_rmsnorm_backward_kernel_equals_reference_exactly(threads, problem):
    """dx = rstd (dn - n mean(dn n)) and dw = sum of dy n over rows: equal bit for bit to the NumPy backward, on
    all threads (dw split over columns) and on one (dw summed in the dx pass, rows in order)."""
    from minimmf.threads import max_threads, set_threads
    seed, N, C, dtype = problem
    x, w, dy = _arrays(seed, (N, C), dtype), _arrays(seed + 1, C, dtype, 1.0), _arrays(seed + 2, (N, C), dtype)
    _, cache = functional.rmsnorm_forward(x, w, 1e-6)
    dx0, dw0 = functional.rmsnorm_backward(dy, cache)
    before = max_threads()
    try:
        set_threads(before if threads == "all" else threads)
        dx, dw = fused.rmsnorm_backward(dy, x, cache.rstd, w)
    finally:
        set_threads(before)
    np.testing.assert_array_equal(dx, dx0)
    np.testing.assert_array_equal(dw, dw0)


@given(row_problems(), st.sampled_from([1.0, 1e-3, 1e3]))
def test_bitlinear_front_codes_equal_rmsnorm_then_activation_quant_exactly(problem, scale):
    """One pass per row gives the int8 codes, s_x and rstd of rmsnorm_forward followed by activation_quant."""
    seed, N, C, dtype = problem
    x, g = _arrays(seed, (N, C), dtype, scale), _arrays(seed + 1, C, dtype, 1.0)
    x[0, : C // 2] = 0.0                                       # zeros, and (C = 1) an all-zero row
    q, x_q, s_x, rstd = fused.bitlinear_front(x, g, 1e-6, 127, 1e-5)
    n, c_norm = functional.rmsnorm_forward(x, g, 1e-6)
    q0, s0 = quant.activation_quant(n)
    np.testing.assert_array_equal(q, q0.astype(dtype))         # integer-valued floats, in [-128, 127]
    np.testing.assert_array_equal(s_x, s0)
    np.testing.assert_array_equal(rstd, c_norm.rstd)
    np.testing.assert_array_equal(x_q, q0.astype(dtype) / s0)
    assert not np.any(np.signbit(q) & (q == 0))                # no -0.0 codes


@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.integers(1, 300), dtypes)
def test_weight_quant_kernel_equals_quant_weight_quant_exactly(seed, O, I, dtype):
    """Ternary codes and s_w equal quant.weight_quant; W_q = q_w / s_w as the BitLinear cache keeps it."""
    W = _arrays(seed, (O, I), dtype, 0.02)
    q, W_q, s_w = fused.weight_quant(W, 1e-5)
    q0, s0 = quant.weight_quant(W)
    assert type(s_w) is type(s0) and s_w == s0
    np.testing.assert_array_equal(q, q0.astype(dtype))
    np.testing.assert_array_equal(W_q, q0.astype(dtype) / s0)


def test_weight_quant_kernel_rounds_ties_away_from_zero_and_sums_a_large_matrix_like_numpy():
    """Exact ties (W s_w = ±0.5) round away from zero; the absmean of a (2048, 128) matrix matches np.mean."""
    W = np.array([[0.5, -0.5, 1.5, 1.5], [0.0, 1.0, -1.0, 2.0]], np.float32)   # mean |W| = 1, so s_w = 1
    q, _, s_w = fused.weight_quant(W, 1e-5)
    assert s_w == 1.0
    np.testing.assert_array_equal(q, [[1, -1, 1, 1], [0, 1, -1, 1]])
    big = _arrays(7, (2048, 128), np.float32, 0.02)
    np.testing.assert_array_equal(fused.weight_quant(big, 1e-5)[0], quant.weight_quant(big)[0].astype(np.float32))


# ----------------------------------------------------------------------------- MLGRU and GLU element-wise

@given(row_problems(), st.booleans())
def test_mlgru_gate_kernels_equal_the_numpy_lines_exactly(problem, bounded):
    """sf, f, i of the forward and dzf, dzi, dlb of the backward equal mlgru.py's NumPy lines bit for bit."""
    seed, N, C, dtype = problem
    zf, zi, df, di = (_arrays(seed + k, (N, C), dtype) for k in range(4))
    lb = np.random.default_rng(seed).uniform(0, 1, C).astype(dtype) if bounded else None
    sf, f, i = fused.mlgru_gates_forward(zf, zi, lb)
    sf0 = functional.sigmoid(zf)
    f0 = sf0 if lb is None else lb + (1 - lb) * sf0
    for got, want in ((sf, sf0), (f, f0), (i, functional.silu(zi) * (1 - f0))):
        np.testing.assert_array_equal(got, want)
    dzf, dzi, dlb = fused.mlgru_gates_backward(df, di, f, sf, zi, lb)
    np.testing.assert_array_equal(dzi, functional.silu_backward(di * (1 - f0), zi))
    d = df - di * functional.silu(zi)
    if lb is None:
        assert dlb is None
    else:
        np.testing.assert_array_equal(dlb, np.sum(d * (1 - sf0), axis=0))
        d = d * (1 - lb)
    np.testing.assert_array_equal(dzf, functional.sigmoid_backward(d, sf0))


@given(row_problems())
def test_mlgru_output_gate_kernels_equal_the_numpy_lines_exactly(problem):
    """o = gn silu(h) and its backward (dgn = do silu(h), dh = silu'(h) do gn) equal the NumPy lines."""
    seed, N, C, dtype = problem
    gn, h, do = (_arrays(seed + k, (N, C), dtype) for k in range(3))
    np.testing.assert_array_equal(fused.mlgru_output_forward(gn, h), gn * functional.silu(h))
    dgn, dh = fused.mlgru_output_backward(do, gn, h)
    np.testing.assert_array_equal(dgn, do * functional.silu(h))
    np.testing.assert_array_equal(dh, functional.silu_backward(do * gn, h))


@given(row_problems())
def test_glu_kernels_equal_the_numpy_lines_exactly(problem):
    """a = silu(gate) up and d[gate, up] equal glu.py's NumPy lines, also when gate, up are views of one y."""
    seed, N, C, dtype = problem
    y, da = _arrays(seed, (N, 2 * C), dtype), _arrays(seed + 1, (N, C), dtype)
    gate, up = y[:, :C], y[:, C:]
    np.testing.assert_array_equal(fused.glu_act_forward(gate, up), functional.silu(gate) * up)
    dy = fused.glu_act_backward(da, gate, up)
    np.testing.assert_array_equal(dy[:, :C], functional.silu_backward(da * up, gate))
    np.testing.assert_array_equal(dy[:, C:], da * functional.silu(gate))


# ----------------------------------------------------------------------------- loss, embedding, optimizer

@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(3, 9), st.integers(1, 300), dtypes)
def test_cross_entropy_kernels_equal_loss_py(seed, B, T, V, dtype):
    """Softmax probabilities and dlogits equal loss.py exactly; the loss value agrees to a few ulps."""
    rng = np.random.default_rng(seed)
    logits = _arrays(seed, (B, T, V), dtype, 5.0)
    labels = rng.integers(0, V, (B, T))
    labels[0, 1] = loss.IGNORE_INDEX                         # an ignored label, as well as the last position
    l0, c0 = loss.cross_entropy_forward(logits, labels)
    d0 = loss.cross_entropy_backward(c0)
    l1, c1 = fast_loss.cross_entropy_forward(logits, labels)
    d1 = fast_loss.cross_entropy_backward(c1)
    assert l1 == pytest.approx(l0, rel=4 * float(np.finfo(dtype).eps))
    np.testing.assert_array_equal(c1.probs, c0.probs)
    np.testing.assert_array_equal(d1, d0)


@given(st.integers(0, 2**31 - 1), st.integers(1, 50), st.integers(1, 20), dtypes)
def test_embedding_backward_equals_np_add_at_exactly(seed, N, V, dtype):
    """Rows of repeated token ids are summed in token order, as np.add.at does: equal bit for bit."""
    rng = np.random.default_rng(seed)
    ids, dh = rng.integers(0, V, N), _arrays(seed, (N, 6), dtype)
    want = np.zeros((V, 6), dtype)
    np.add.at(want, ids, dh)
    np.testing.assert_array_equal(fused.embedding_backward(ids, dh, V), want)


@given(st.integers(0, 2**31 - 1), dtypes)
def test_adamw_kernel_steps_equal_the_numpy_update_exactly(seed, dtype):
    """Three AdamW steps (weight decay on the matrix only) give bit-identical parameters and moments."""
    params = {"W": _arrays(seed, (5, 7), dtype, 0.1), "g": _arrays(seed + 1, (7,), dtype, 0.1)}
    grads = [{"W": _arrays(seed + k, (5, 7), dtype), "g": _arrays(seed + 9 + k, (7,), dtype)} for k in range(3)]
    p_ref = {k: v.copy() for k, v in params.items()}
    opt, opt_ref = AdamW(lr=3e-3, weight_decay=0.1), AdamW(lr=3e-3, weight_decay=0.1)
    for g in grads:
        with seam.using("fast"):
            opt.step(params, g)
        with seam.using("reference"):
            opt_ref.step(p_ref, g)
    for k in params:
        np.testing.assert_array_equal(params[k], p_ref[k])
        np.testing.assert_array_equal(opt.m[k], opt_ref.m[k])
        np.testing.assert_array_equal(opt.v[k], opt_ref.v[k])


# ----------------------------------------------------------------------------- the layers and the model, both paths

@given(st.integers(0, 2**31 - 1), dtypes)
def test_bitlinear_twin_equals_the_readable_layer_exactly(seed, dtype):
    """fast/bitlinear.py's forward / backward give bitlinear.py's y, dx, dW, dg exactly."""
    x, dy = _arrays(seed, (2, 5, 24), dtype), _arrays(seed + 1, (2, 5, 9), dtype)
    p = {"W": _arrays(seed + 2, (9, 24), dtype, 0.02), "g": _arrays(seed + 3, 24, dtype, 1.0)}
    y, cache = fast_bitlinear.bitlinear_forward(x, p)
    dx, grads = fast_bitlinear.bitlinear_backward(dy, cache)
    y0, cache0 = bitlinear_forward(x, p)
    dx0, grads0 = bitlinear_backward(dy, cache0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(dx, dx0)
    for k in ("W", "g"):
        np.testing.assert_array_equal(grads[k], grads0[k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_model_loss_and_grads_are_the_same_on_both_paths(dtype):
    """A whole training step's loss and gradient tree agree between the fused and the reference path
    (logits and every gradient bit for bit; the loss to a few ulps: Numba's log)."""
    cfg = minimmf.MMfreeConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, intermediate_size=48)
    model = minimmf.MMfreeLM.init(cfg, seed=3, dtype=dtype)
    ids = np.random.default_rng(0).integers(0, 50, (3, 11))
    with seam.using("fast"):
        loss1, g1 = model.loss_and_grads(ids, ids)
        logits1 = model.forward(ids)
    with seam.using("reference"):
        loss0, g0 = model.loss_and_grads(ids, ids)
        logits0 = model.forward(ids)
    np.testing.assert_array_equal(logits1, logits0)
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    for (path, a), (_, b) in zip(minimmf.tree.leaves(g1), minimmf.tree.leaves(g0)):
        np.testing.assert_array_equal(a, b, err_msg=path)


# ----------------------------------------------------------------------------- threads and the e^-|x| memo

def test_every_kernel_gives_the_same_bits_on_one_and_on_two_threads():
    """Rows are split over threads, column sums over columns: the thread count never changes a bit."""
    from minimmf.threads import max_threads, set_threads
    N, C, I, V = 37, 24, 40, 29
    x, dy, zf, zi, df, di = (_arrays(s, (N, C), np.float32) for s in range(6))
    y = _arrays(6, (N, 2 * I), np.float32)
    da = _arrays(7, (N, I), np.float32)
    w, lb = _arrays(8, (C,), np.float32), np.abs(_arrays(9, (C,), np.float32, 0.3))
    ids = np.random.default_rng(10).integers(0, V, N)
    target = np.where(np.arange(N) % 5 == 0, -100, ids)
    p, g = _arrays(11, (300, 100), np.float32), _arrays(12, (300, 100), np.float32)

    def run():
        _, rstd = fused.rmsnorm_forward(x, w, 1e-6)
        sf, f, i = fused.mlgru_gates_forward(zf, zi, lb)
        probs, nll = fused.cross_entropy_forward(_arrays(13, (N, V), np.float32), target)
        pp, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
        fused.adamw_update(pp, g, m, v, 1e-2, 0.9, 0.95, 0.1, 0.05, 1e-8, 0.01)
        return [*fused.rmsnorm_forward(x, w, 1e-6), *fused.rmsnorm_backward(dy, x, rstd, w),
                *fused.bitlinear_front(x, w, 1e-6, 127, 1e-5), *fused.weight_quant(p, 1e-5)[:2], sf, f, i,
                *fused.mlgru_gates_backward(df, di, f, sf, zi, lb), *fused.mlgru_output_forward(zf, zi)[None],
                *fused.mlgru_output_backward(dy, zf, zi), fused.glu_act_forward(y[:, :I], y[:, I:]),
                fused.glu_act_backward(da, y[:, :I], y[:, I:]), probs, nll,
                fused.cross_entropy_backward(probs, target, N), fused.embedding_backward(ids, dy, V), pp, m, v,
                fused.neg_abs(y, 1, I), fused.divide_rows(dy.copy(), np.abs(x[:, :1]) + 1)]

    before = max_threads()
    try:
        set_threads(1)
        one = run()
        set_threads(2)
        two = run()
    finally:
        set_threads(before)
    assert len(one) == len(two)
    for k, (a, b) in enumerate(zip(one, two)):
        np.testing.assert_array_equal(a, b, err_msg=f"result {k}")


def test_exp_of_an_activation_is_computed_once_and_forgotten_with_it():
    """A second call on the same memory returns the first call's e (the backward reuses the forward's); a third
    computes it again; the kept e goes when the activation is freed."""
    y = _arrays(0, (6, 8), np.float32)
    e1 = fused._exp_neg_abs(y, 0, 4)
    np.testing.assert_array_equal(e1, np.exp(-np.abs(y[:, :4])))
    assert fused._exp_neg_abs(y[:], 0, 4) is e1                     # the same memory through another view
    e3 = fused._exp_neg_abs(y, 0, 4)
    assert e3 is not e1
    np.testing.assert_array_equal(e3, e1)
    e4 = fused._exp_neg_abs(y, 4)                                   # other memory of the same array
    assert e4 is not e3
    np.testing.assert_array_equal(e4, np.exp(-np.abs(y[:, 4:])))
    key = id(y)
    assert key in fused._EXP_MEMO
    del y
    assert key not in fused._EXP_MEMO
