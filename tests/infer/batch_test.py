"""t5scale.infer.batch: padding to the length buckets, and the weights of a decoded row through its first EOS."""

import numpy as np

from t5scale.infer.batch import padded, through_first_eos


def test_rows_are_padded_to_a_power_of_two_at_least_8_at_most_the_length():
    out = padded([[5, 6, 1], [7, 1]], 4, 64)
    np.testing.assert_array_equal(out, [[5, 6, 1, 0, 0, 0, 0, 0], [7, 1, 0, 0, 0, 0, 0, 0]] + [[0] * 8] * 2)
    assert padded([list(range(2, 11))], 1, 64).shape == (1, 16)
    assert padded([list(range(2, 22))], 1, 20).shape == (1, 20)  # 32 capped at the configured length


def test_weights_cover_each_row_through_its_first_eos():
    tokens = np.array([[4, 1, 0, 0], [4, 5, 6, 7], [1, 0, 0, 0], [3, 0, 1, 1]])  # 0 may be decoded mid-row
    np.testing.assert_array_equal(through_first_eos(tokens), [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0],
                                                              [1, 1, 1, 0]])
