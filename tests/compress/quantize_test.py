"""Quantization against a plain-numpy reference: codes exactly equal, error within half a step, for every bit width,
per channel / per tensor / per group, and scanned stacks quantized per layer.

Shapes: a query-like kernel [D 6, NH 4, KV 5] contracted over D, an out-like kernel [NH 4, KV 5, D 6] contracted over
(NH, KV), and a scanned stack [L 3, D 6, NH 4, KV 5].
"""

import numpy as np
import pytest

from t5scale.compress.quantize import BITS, quantize
from t5scale.weights.compressed_format import dequantize


def reference(w: np.ndarray, bits: int, reduce_axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The documented rule, in numpy: scale = max|w| / (2^(b-1) - 1/2), codes = clip(round(w / scale))."""
    absmax = np.max(np.abs(w), axis=reduce_axes, keepdims=True)
    scale = (absmax / np.float32(2 ** (bits - 1) - 0.5)).astype(np.float32)
    scale = np.where(scale < np.sqrt(np.finfo(np.float32).tiny), np.float32(1), scale)
    codes = np.clip(np.round(w / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1).astype(np.int8)
    return codes, scale


def assert_same_scale(scale, want):
    np.testing.assert_allclose(scale, want, rtol=2e-7)  # XLA divides by a constant as a product with its inverse


def assert_same_codes(codes, want, w, scale):
    """Equal, except that a weight half a step from two codes (the channel's extreme, at +-(qmax + 1/2) steps) may
    take either, as the scales may differ by an ulp. Both are within half a step."""
    differ = codes != want
    steps = np.abs(w / scale)
    assert np.all(np.abs(codes.astype(int) - want)[differ] == 1)
    np.testing.assert_allclose(steps[differ] % 1, 0.5, atol=1e-4)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape, contracting, granularity, reduce_axes", [
    ((6, 4, 5), (0,), "channel", (0,)),
    ((4, 5, 6), (0, 1), "channel", (0, 1)),
    ((6, 4, 5), (0,), "tensor", (0, 1, 2)),
])
def test_codes_match_the_numpy_reference_and_the_error_is_within_half_a_step(rng, bits, shape, contracting,
                                                                           granularity, reduce_axes):
    w = rng.standard_normal(shape).astype(np.float32)
    w[:, 0] *= 20  # an outlier slice: per-channel scales must keep it away from the other channels
    codes, scale = quantize(w, bits, contracting, granularity=granularity)
    want_codes, want_scale = reference(w, bits, reduce_axes)
    assert_same_scale(scale, want_scale)
    assert_same_codes(codes, want_codes, w, scale)
    error = np.abs(dequantize(codes, scale) - w)
    assert np.all(error <= scale / 2 * (1 + 1e-4))  # float rounding of w / scale at the extremes
    assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1


def test_groups_have_one_scale_per_output_channel_and_group_of_the_contracted_axis(rng):
    w = rng.standard_normal((6, 4, 5)).astype(np.float32)
    codes, scale = quantize(w, 4, (0,), granularity="group", group_size=3)
    assert scale.shape == (2, 4, 5)
    for g in range(2):  # each group is its own per-channel quantization
        want_codes, want_scale = reference(w[3 * g:3 * g + 3], 4, (0,))
        assert_same_scale(scale[g:g + 1], want_scale)
        assert_same_codes(codes[3 * g:3 * g + 3], want_codes, w[3 * g:3 * g + 3], want_scale)
    with pytest.raises(ValueError, match="group_size 4 must divide"):
        quantize(w, 4, (0,), granularity="group", group_size=4)


@pytest.mark.parametrize("shape, contracting, group_axis", [((6, 4, 5), (0,), 0), ((4, 6, 5), (0, 1), 1)])
def test_group_scales_dequantize_onto_their_own_consecutive_entries(rng, shape, contracting, group_axis):
    """Each group's scale multiplies the `group_size` consecutive codes it was computed from (entry i of the
    grouped axis uses scale i // group_size), re-derived here with numpy indexing. The groups' magnitudes differ
    by 10x each, so a scale applied to another group's codes is far off."""
    w = rng.standard_normal(shape).astype(np.float32)
    w *= (10.0 ** (np.arange(shape[group_axis]) // 3)).reshape([-1 if a == group_axis else 1
                                                               for a in range(len(shape))])
    codes, scale = quantize(w, 8, contracting, granularity="group", group_size=3)
    assert scale.shape[group_axis] == shape[group_axis] // 3
    group_of_entry = np.arange(shape[group_axis]) // 3
    want = codes.astype(np.float32) * np.take(scale, group_of_entry, axis=group_axis)
    np.testing.assert_array_equal(dequantize(codes, scale), want)
    error = np.abs(dequantize(codes, scale) - w)
    assert np.all(error <= np.take(scale, group_of_entry, axis=group_axis) / 2 * (1 + 1e-4))


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_a_scanned_stack_gets_one_scale_per_layer_never_one_across_layers(rng, granularity):
    stack = rng.standard_normal((3, 6, 4, 5)).astype(np.float32) * np.array([1, 10, 100])[:, None, None, None]
    codes, scale = quantize(stack, 8, (1,), granularity=granularity, keep_axes=(0,))
    for layer in range(3):
        want_codes, want_scale = quantize(stack[layer], 8, (0,), granularity=granularity)
        assert_same_scale(scale[layer], want_scale)
        assert_same_codes(codes[layer], want_codes, stack[layer], want_scale)


def test_an_all_zero_channel_gets_codes_zero(rng):
    w = rng.standard_normal((6, 5)).astype(np.float32)
    w[:, 2] = 0
    codes, scale = quantize(w, 8, (0,))
    assert np.all(codes[:, 2] == 0) and np.all(dequantize(codes, scale)[:, 2] == 0)


@pytest.mark.parametrize("bits", [16, 3, 1])
def test_unsupported_bit_widths_are_refused(bits):
    with pytest.raises(ValueError, match=f"Unsupported bit width {bits}; choose among 8, 6, 4, 2"):
        quantize(np.ones((2, 2), np.float32), bits, (0,))
