"""Tests for minimmf/kernels/ternary.py: packing, and the add/sub kernels against their NumPy references."""
import json
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minimmf.kernels import ternary
from minimmf.kernels.ternary import (
    PackedTernary,
    OffsetPacked,
    ParallelGuard,
    as_offset,
    float_ternary_matmul,
    float_ternary_matmul_ref,
    offset_from_packed,
    offset_matmul,
    offset_rows_scaled,
    offset_sum,
    pack_offset,
    pack_ternary,
    ternary_matmul,
    ternary_matmul_ref,
    unpack_offset,
    unpack_ternary,
)
from numba import njit
from strategies_kernels import ternary_problems

pytestmark = pytest.mark.jit


@given(ternary_problems())
def test_unpack_inverts_pack(problem):
    """unpack_ternary(pack_ternary(q_w)) == q_w for every ternary matrix."""
    _, q_w = problem
    packed = pack_ternary(q_w)
    assert (packed.out_features, packed.in_features) == q_w.shape
    assert packed.codes.shape == (q_w.shape[0], 32 * -(-q_w.shape[1] // 128))
    np.testing.assert_array_equal(unpack_ternary(packed), q_w)


@pytest.mark.parametrize("value, code", [(0, 0b00), (1, 0b01), (-1, 0b10)])
@pytest.mark.parametrize("i", [0, 1, 31, 32, 63, 64, 95, 96, 127, 128, 200, 255])
def test_input_i_lands_in_byte_i_mod_32_at_bits_2k(i, value, code):
    """Input i = 128 b + 32 k + j is stored in byte 32 b + j, bits 2k..2k+1, as 00 = 0, 01 = +1, 10 = -1."""
    q_w = np.zeros((1, 256), np.int8)
    q_w[0, i] = value
    b, k, j = i // 128, (i % 128) // 32, i % 32
    expected = np.zeros((1, 64), np.uint8)
    expected[0, 32 * b + j] = code << (2 * k)
    np.testing.assert_array_equal(pack_ternary(q_w).codes, expected)


@given(ternary_problems())
def test_ternary_matmul_equals_reference_exactly(problem):
    """The add/sub kernel on packed codes gives exactly the int32 sum q_x @ q_w.T."""
    q_x, q_w = problem
    y = ternary_matmul(q_x, pack_ternary(q_w))
    assert y.dtype == np.int32 and y.shape == (q_x.shape[0], q_w.shape[0])
    np.testing.assert_array_equal(y, ternary_matmul_ref(q_x, q_w))


@given(ternary_problems(), st.sampled_from([0, 10**12]))
def test_serial_and_parallel_paths_both_equal_reference(problem, serial_below):
    """Whichever path (serial or prange) a shape takes, the result is the exact reference."""
    q_x, q_w = problem
    with mock.patch.object(ternary, "SERIAL_BELOW", serial_below):
        np.testing.assert_array_equal(ternary_matmul(q_x, pack_ternary(q_w)), ternary_matmul_ref(q_x, q_w))
        dy = np.random.default_rng(0).standard_normal((q_x.shape[0], q_w.shape[0]))
        np.testing.assert_allclose(float_ternary_matmul(dy, pack_ternary(q_w)), float_ternary_matmul_ref(dy, q_w),
                                   rtol=1e-12, atol=1e-12 * np.abs(dy).sum())


@pytest.mark.parametrize("I", [1, 127, 128, 129, 511, 512, 513, 20000])
def test_ternary_matmul_is_exact_at_extreme_codes(I):
    """Activations at -128 and 127 against all +1 or all -1 weights never overflow, for any width I."""
    q_w = np.stack([np.ones(I, np.int8), -np.ones(I, np.int8), np.zeros(I, np.int8)])  # (3, I)
    q_x = np.stack([np.full(I, -128, np.int8), np.full(I, 127, np.int8)])  # (2, I)
    y = ternary_matmul(q_x, pack_ternary(q_w))
    np.testing.assert_array_equal(y, [[-128 * I, 128 * I, 0], [127 * I, -127 * I, 0]])
    np.testing.assert_array_equal(y, ternary_matmul_ref(q_x, q_w))


def test_ternary_matmul_accepts_non_contiguous_activations_and_leaves_inputs_alone():
    """A strided view of q_x gives the same result, and neither q_x nor the packed codes change."""
    rng = np.random.default_rng(1)
    q_w = rng.integers(-1, 2, size=(7, 300), dtype=np.int8)
    big = rng.integers(-128, 128, size=(6, 600), dtype=np.int8)
    q_x = big[::2, ::2]  # (3, 300), not contiguous
    packed = pack_ternary(q_w)
    before_x, before_codes = q_x.copy(), packed.codes.copy()
    np.testing.assert_array_equal(ternary_matmul(q_x, packed), ternary_matmul_ref(q_x, q_w))
    np.testing.assert_array_equal(q_x, before_x)
    np.testing.assert_array_equal(packed.codes, before_codes)


@given(ternary_problems(), st.sampled_from([np.float32, np.float64]))
def test_float_ternary_matmul_equals_reference_within_rounding(problem, dtype):
    """dy @ q_w by additions and subtractions equals the reference up to the summation order's rounding, on offset
    codes and, converted, on the older layout (the same bits)."""
    _, q_w = problem
    rng = np.random.default_rng(q_w.size)
    dy = rng.standard_normal((3, q_w.shape[0])).astype(dtype)
    dx = float_ternary_matmul(dy, pack_offset(q_w))
    np.testing.assert_array_equal(float_ternary_matmul(dy, pack_ternary(q_w)), dx)
    assert dx.dtype == dtype and dx.shape == (3, q_w.shape[1])
    # Any order of O additions of +/-dy is within O * eps * sum|dy| of the exact sum.
    bound = q_w.shape[0] * np.finfo(dtype).eps * np.abs(dy).astype(np.float64).sum(axis=1, keepdims=True)
    err = np.abs(dx.astype(np.float64) - float_ternary_matmul_ref(dy.astype(np.float64), q_w))
    assert np.all(err <= bound)


def test_float_ternary_matmul_is_exact_on_integer_valued_gradients():
    """With small integer dy every partial sum is exact, so the kernel equals the reference bit for bit."""
    rng = np.random.default_rng(2)
    q_w = rng.integers(-1, 2, size=(50, 260), dtype=np.int8)
    dy = rng.integers(-100, 100, size=(4, 50)).astype(np.float32)
    np.testing.assert_array_equal(float_ternary_matmul(dy, pack_offset(q_w)), float_ternary_matmul_ref(dy, q_w))
    big = rng.integers(-100, 100, size=(64, 50)).astype(np.float32)          # enough work for the parallel kernel
    np.testing.assert_array_equal(float_ternary_matmul(big, pack_offset(q_w)), float_ternary_matmul_ref(big, q_w))


BAD_Q_W = [
    (np.zeros((2, 3), np.int16), "dtype int8"),
    (np.zeros(3, np.int8), "2-D"),
    (np.zeros((0, 3), np.int8), "at least one"),
    (np.full((2, 3), 2, np.int8), "{-1, 0, 1}"),
    (np.full((2, 3), -2, np.int8), "{-1, 0, 1}"),
]


@pytest.mark.parametrize("q_w, message", BAD_Q_W)
def test_pack_ternary_rejects_bad_weights_naming_q_w(q_w, message):
    """pack_ternary raises a ValueError that names q_w and the broken rule."""
    with pytest.raises(ValueError, match="q_w") as info:
        pack_ternary(q_w)
    assert message in str(info.value)


def test_kernels_reject_bad_activations_gradients_and_packs():
    """ternary_matmul and float_ternary_matmul raise ValueErrors naming q_x, dy or packed."""
    packed = pack_ternary(np.ones((4, 10), np.int8))
    with pytest.raises(ValueError, match="q_x must have dtype int8"):
        ternary_matmul(np.zeros((1, 10), np.int32), packed)
    with pytest.raises(ValueError, match=r"q_x must have shape \(N, 10\)"):
        ternary_matmul(np.zeros((1, 11), np.int8), packed)
    with pytest.raises(ValueError, match=r"q_x must have shape"):
        ternary_matmul(np.zeros(10, np.int8), packed)
    with pytest.raises(ValueError, match="dy must have dtype float32 or float64"):
        float_ternary_matmul(np.zeros((1, 4), np.int32), packed)
    with pytest.raises(ValueError, match=r"dy must have shape \(N, 4\)"):
        float_ternary_matmul(np.zeros((1, 5)), packed)
    with pytest.raises(ValueError, match="packed must be a PackedTernary"):
        ternary_matmul(np.zeros((1, 10), np.int8), np.ones((4, 10), np.int8))
    with pytest.raises(ValueError, match="packed.codes must be uint8"):
        ternary_matmul(np.zeros((1, 10), np.int8), PackedTernary(packed.codes[:, :3], 4, 10))


# ---------------------------------------------------------------- offset codes (w + 1) and the multiply-add kernel

@given(ternary_problems())
def test_unpack_offset_inverts_pack_offset(problem):
    """unpack_offset(pack_offset(q_w)) == q_w, with codes of the same shape as pack_ternary's."""
    _, q_w = problem
    packed = pack_offset(q_w)
    assert packed.codes.shape == (q_w.shape[0], 32 * -(-q_w.shape[1] // 128))
    np.testing.assert_array_equal(unpack_offset(packed), q_w)


@pytest.mark.parametrize("value", [-1, 0, 1])
@pytest.mark.parametrize("i", [0, 1, 31, 32, 63, 64, 95, 96, 127, 128, 200, 255])
def test_offset_code_of_input_i_is_w_plus_1_in_byte_i_mod_32_at_bits_2k(i, value):
    """Input i = 128 b + 32 k + j is stored in byte 32 b + j, bits 2k..2k+1, as w + 1; every other weight (0) as 01."""
    q_w = np.zeros((1, 256), np.int8)
    q_w[0, i] = value
    b, k, j = i // 128, (i % 128) // 32, i % 32
    expected = np.full((1, 64), 0b01010101, np.uint8)
    expected[0, 32 * b + j] = (0b01010101 & ~(0b11 << (2 * k))) | ((value + 1) << (2 * k))
    np.testing.assert_array_equal(pack_offset(q_w).codes, expected)


@given(ternary_problems())
def test_offset_from_packed_converts_the_old_layout_exactly(problem):
    """Converting pack_ternary's codes gives pack_offset's codes byte for byte, padding included."""
    _, q_w = problem
    converted = offset_from_packed(pack_ternary(q_w))
    np.testing.assert_array_equal(converted.codes, pack_offset(q_w).codes)
    assert (converted.out_features, converted.in_features) == q_w.shape


@given(ternary_problems(), st.sampled_from([None, False, True]))
def test_offset_matmul_equals_reference_exactly(problem, parallel):
    """The multiply-add kernel on offset codes gives exactly the int32 sum q_x @ q_w.T, serial or in parallel."""
    q_x, q_w = problem
    y = offset_matmul(q_x, pack_offset(q_w), parallel=parallel)
    assert y.dtype == np.int32 and y.shape == (q_x.shape[0], q_w.shape[0])
    np.testing.assert_array_equal(y, ternary_matmul_ref(q_x, q_w))


@given(ternary_problems())
def test_as_offset_keeps_offset_codes_and_converts_the_older_layout(problem):
    """as_offset returns an OffsetPacked unchanged (the same object) and converts a PackedTernary to pack_offset's
    bytes; the product on either is the reference's."""
    q_x, q_w = problem
    op = pack_offset(q_w)
    assert as_offset(op) is op
    converted = as_offset(pack_ternary(q_w))
    assert isinstance(converted, OffsetPacked)
    np.testing.assert_array_equal(converted.codes, op.codes)
    np.testing.assert_array_equal(offset_matmul(q_x, converted), ternary_matmul_ref(q_x, q_w))


def test_as_offset_rejects_anything_else_naming_packed():
    """as_offset of a bare array is a ValueError naming packed and the two accepted layouts."""
    with pytest.raises(ValueError, match="packed must be an OffsetPacked"):
        as_offset(np.zeros((4, 32), np.uint8))


@njit
def _portable_matvec(codes, xp, nblocks, y_int):
    ternary._offset_rows_portable(codes, 0, codes.shape[0], xp, nblocks, y_int)
    s = offset_sum(xp)
    for o in range(codes.shape[0]):
        y_int[o] -= s


@given(ternary_problems())
def test_portable_twin_equals_reference_exactly(problem):
    """The plain-loop twin (used on CPUs without AVX2 and without the JIT) gives the exact int32 sums too."""
    q_x, q_w = problem
    packed = pack_offset(q_w)
    nb = packed.codes.shape[1] // 32
    xp = np.zeros(128 * nb, np.int8)
    xp[:q_x.shape[1]] = q_x[0]
    y = np.empty(q_w.shape[0], np.int32)
    _portable_matvec(packed.codes, xp, nb, y)
    np.testing.assert_array_equal(y, ternary_matmul_ref(q_x[:1], q_w)[0])


@pytest.mark.parametrize("I", [1, 127, 128, 129, 511, 512, 513, 20000])
@pytest.mark.parametrize("O", [3, 9])
def test_offset_matmul_is_exact_at_extreme_codes(I, O):
    """Activations at -128 and 127 against rows of all +1, all -1 and all 0 never saturate or overflow."""
    q_w = np.stack([np.ones(I, np.int8), -np.ones(I, np.int8), np.zeros(I, np.int8)] * (O // 3))  # (O, I)
    q_x = np.stack([np.full(I, -128, np.int8), np.full(I, 127, np.int8)])  # (2, I)
    y = offset_matmul(q_x, pack_offset(q_w))
    np.testing.assert_array_equal(y[:, :3], [[-128 * I, 128 * I, 0], [127 * I, -127 * I, 0]])
    np.testing.assert_array_equal(y, ternary_matmul_ref(q_x, q_w))


@njit
def _scaled_rows(codes, xp, nblocks, den, y_int, y):
    offset_rows_scaled(codes, 0, codes.shape[0], xp, offset_sum(xp), nblocks, den, y_int, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_offset_rows_scaled_is_the_int32_sum_converted_then_divided(dtype):
    """offset_rows_scaled writes float(y_int) / den: the plain path's ternary_matmul then one rescale."""
    rng = np.random.default_rng(3)
    q_w = rng.integers(-1, 2, size=(37, 300), dtype=np.int8)
    q_x = rng.integers(-128, 128, size=(1, 300), dtype=np.int8)
    xp = np.zeros(384, np.int8)
    xp[:300] = q_x[0]
    den = dtype(0.37)
    y_int, y = np.empty(37, np.int32), np.empty(37, dtype)
    _scaled_rows(pack_offset(q_w).codes, xp, 3, den, y_int, y)
    np.testing.assert_array_equal(y_int, ternary_matmul_ref(q_x, q_w)[0])
    np.testing.assert_array_equal(y, ternary_matmul_ref(q_x, q_w)[0].astype(dtype) / den)


def test_offset_matmul_takes_a_single_vector_and_leaves_inputs_alone():
    """A 1-D q_x gives a 1-D result equal to the matrix form's row; q_x and the codes are not modified."""
    rng = np.random.default_rng(4)
    q_w = rng.integers(-1, 2, size=(21, 260), dtype=np.int8)
    q_x = rng.integers(-128, 128, size=260, dtype=np.int8)
    packed = pack_offset(q_w)
    before_x, before_codes = q_x.copy(), packed.codes.copy()
    np.testing.assert_array_equal(offset_matmul(q_x, packed), ternary_matmul_ref(q_x[None], q_w)[0])
    np.testing.assert_array_equal(q_x, before_x)
    np.testing.assert_array_equal(packed.codes, before_codes)


def test_offset_kernel_uses_the_u8_times_i8_multiply_add_instructions_of_the_host():
    """AVX-512 VNNI hosts: the compiled row kernel contains vpdpbusd on 512-bit registers; other AVX2 hosts:
    vpmaddubsw and vpmaddwd; elsewhere the portable twin is chosen."""
    if not ternary.HAVE_AVX2:
        assert not ternary.HAVE_VNNI512 and ternary._offset_rows is ternary._offset_rows_portable
        return
    probe = njit(lambda codes, xp, nb, y: ternary.offset_rows_int(codes, 0, codes.shape[0], xp, 0, nb, y))
    probe(pack_offset(np.ones((4, 256), np.int8)).codes, np.zeros(256, np.int8), 2, np.empty(4, np.int32))
    asm = probe.inspect_asm(probe.signatures[0])
    if ternary.HAVE_VNNI512:
        assert "vpdpbusd" in asm and "zmm" in asm and "vpmaddubsw" not in asm
    else:
        assert "vpmaddubsw" in asm and "vpmaddwd" in asm


ROWS_ASM_PROBE = """
import collections, json, sys, numba, numpy as np
from minimmf.kernels import ternary
rows = getattr(ternary, sys.argv[1])(4)
probe = numba.njit(lambda codes, xp, nb, y: rows(codes, 0, xp, nb, y))
args = (np.zeros((4, 64), np.uint8), np.zeros(256, np.int8), 2, np.empty(4, np.int32))
probe.compile(tuple(numba.typeof(a) for a in args))                 # compiled, never run: the host may lack it
asm = probe.inspect_asm(probe.signatures[0])
loop = max(asm.split(".LBB")[1:], key=lambda block: block.count("vpdpbusd") + block.count("vpmaddubsw"))
print(json.dumps(collections.Counter(line.split()[0] for line in loop.splitlines()[1:] if line.strip())))
"""
AVX512_VNNI = "+avx512f,+avx512bw,+avx512vnni,+avx512vl,+avx512dq,+avx2,+avx,+fma,+bmi2"


@pytest.mark.skipif(not ternary.HAVE_AVX2, reason="an x86-64 host with the JIT on compiles for AVX2 / AVX-512 VNNI")
@pytest.mark.parametrize("kernel, cpu, features, multiply_adds, ands, shifts", [
    ("_vnni512_rows_intrinsic", "sapphirerapids", AVX512_VNNI, {"vpdpbusd": 16}, 16, 0),
    ("_avx2_rows_intrinsic", "haswell", "+avx2,+avx,+fma,+bmi2", {"vpmaddubsw": 16}, 16, 4),
])
def test_row_kernels_pick_fields_with_few_shifts(kernel, cpu, features, multiply_adds, ands, shifts):
    """Compiled for the CPU it is meant for (on any x86 host: the code is inspected, not run), a pass of 4 rows
    over its blocks has 16 multiply-adds and 16 ANDs, and as shifts only the one per row of the AVX2 kernel
    (h = codes >> 4) and none in the VNNI kernel (every field masked in place, 4^k c_k)."""
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=features, NUMBA_DISABLE_JIT="0")
    out = subprocess.run([sys.executable, "-c", ROWS_ASM_PROBE, kernel], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert {op: counts.get(op) for op in multiply_adds} == multiply_adds, counts
    assert sum(n for op, n in counts.items() if op in ("vpand", "vpandq", "vpandd")) == ands, counts
    assert sum(n for op, n in counts.items() if op.startswith(("vpsrl", "vpsra", "vpsll"))) == shifts, counts


def test_offset_functions_reject_bad_input_naming_the_argument():
    """offset_matmul, unpack_offset and offset_from_packed raise ValueErrors naming q_x or packed."""
    packed = pack_offset(np.ones((4, 10), np.int8))
    with pytest.raises(ValueError, match="q_x must have dtype int8"):
        offset_matmul(np.zeros((1, 10), np.int32), packed)
    with pytest.raises(ValueError, match=r"q_x must have shape \(N, 10\)"):
        offset_matmul(np.zeros((1, 11), np.int8), packed)
    with pytest.raises(ValueError, match="packed must be an OffsetPacked"):
        offset_matmul(np.zeros((1, 10), np.int8), pack_ternary(np.ones((4, 10), np.int8)))
    with pytest.raises(ValueError, match="packed.codes must be C-contiguous uint8"):
        offset_matmul(np.zeros((1, 10), np.int8), OffsetPacked(packed.codes[:, :3], 4, 10))
    with pytest.raises(ValueError, match="unused code 0b11"):
        unpack_offset(OffsetPacked(np.full((4, 32), 0xFF, np.uint8), 4, 10))
    with pytest.raises(ValueError, match="packed must be a PackedTernary"):
        offset_from_packed(packed)


def _drive_guard(guard, serial_s, parallel_s, calls):
    """Feed a ParallelGuard synthetic times; return the choices it made."""
    choices = []
    for _ in range(calls):
        p = guard.choose("k")
        guard.record("k", p, parallel_s if p else serial_s)
        choices.append(p)
    return choices


@pytest.mark.parametrize("serial_s, parallel_s, expect_parallel", [(1.0, 0.5, True), (1.0, 8.0, False)])
def test_parallel_guard_runs_the_faster_form_and_probes_the_other_now_and_then(serial_s, parallel_s,
                                                                               expect_parallel):
    """After measuring both forms the guard runs the faster one, except one probe of the other per 16 calls."""
    guard = ParallelGuard(window=5, probe=16)
    choices = _drive_guard(guard, serial_s, parallel_s, 4 + 160)[4:]
    faster = sum(c == expect_parallel for c in choices)
    assert 160 - 160 // 16 - 1 <= faster < 160


def test_parallel_guard_switches_to_serial_at_the_first_parallel_call_that_overruns():
    """When a parallel call takes longer than the one-thread estimate (a busy core), the guard runs serial from the
    next call on, except one probe of the parallel form per 16 calls."""
    guard = ParallelGuard(window=5, probe=16)
    _drive_guard(guard, 1.0, 0.5, 50)
    choices = _drive_guard(guard, 1.0, 20.0, 50)
    assert choices[0] and not any(choices[1:12])  # one overrun is enough
    assert sum(choices[1:]) <= 50 // 16 + 1  # afterwards: only the probes


def test_parallel_guard_returns_to_parallel_at_the_first_probe_after_the_machine_is_quiet_again():
    """A parallel probe that beats the one-thread estimate moves the choice back to the parallel form."""
    guard = ParallelGuard(window=5, probe=16)
    _drive_guard(guard, 1.0, 20.0, 40)
    choices = _drive_guard(guard, 1.0, 0.5, 40)
    first = choices.index(True)
    assert first < 16 and all(choices[first:first + 15])


class _FakeClock:
    """A clock that moves only when told to: the timed work advances it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_parallel_guard_call_times_the_work_with_the_clock_it_is_given():
    """guard.call runs fn(*args, parallel=choice) and records the time its clock reports for it: with scripted
    times (serial 1, parallel 3) the calls after the first four are serial, except the probes."""
    clock = _FakeClock()
    guard = ParallelGuard(window=5, probe=16, clock=clock)

    def work(x, parallel):
        clock.now += 3.0 if parallel else 1.0
        return x + 1

    assert [guard.call(work, k, key="k") for k in range(40)] == list(range(1, 41))
    assert guard.n_calls == 40 and guard.n_parallel <= 2 + 40 // 16 + 1
