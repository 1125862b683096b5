"""Packing of 4- and 2-bit codes and of masks is exact, and takes the bytes it should."""

import numpy as np
import pytest

from t5scale.weights.packing import pack_codes, pack_mask, unpack_codes, unpack_mask


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("count", [1, 7, 8, 13])
def test_codes_round_trip_exactly_in_ceil_of_count_times_bits_over_eight_bytes(bits, count):
    every_code = np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1), dtype=np.int8)
    codes = np.resize(every_code, count)
    np.random.default_rng(count).shuffle(codes)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-count * bits // 8)
    np.testing.assert_array_equal(unpack_codes(packed, bits, count), codes)


def test_the_first_value_goes_in_the_lowest_bits():
    # 4 bits, offset binary: -8 -> 0, 7 -> 15; [ -8, 7 ] -> 0b1111_0000; 2 bits: [-2, -1, 0, 1] -> 0b11_10_01_00
    assert pack_codes(np.array([-8, 7], np.int8), 4).tolist() == [0xF0]
    assert pack_codes(np.array([-2, -1, 0, 1], np.int8), 2).tolist() == [0b11100100]


@pytest.mark.parametrize("bits", [8, 6])
def test_wider_codes_stay_one_per_byte(bits):
    codes = np.array([[-(2 ** (bits - 1)), 0], [3, 2 ** (bits - 1) - 1]], np.int8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.int8 and packed.size == 4
    np.testing.assert_array_equal(unpack_codes(packed, bits, 4), codes.reshape(-1))


def test_codes_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"outside \[-2, 1\]"):
        pack_codes(np.array([2], np.int8), 2)


def test_masks_round_trip_in_one_bit_per_weight():
    mask = np.random.default_rng(0).random((3, 7, 5)) < 0.5
    packed = pack_mask(mask)
    assert packed.size == -(-mask.size // 8)
    np.testing.assert_array_equal(unpack_mask(packed, mask.shape), mask)
