"""The fast paths between numpy and Flower's Array agree with Flower's own conversions."""

import numpy as np
import pytest
from flwr.app import Array

from asyncfl.protocol import array_to_numpy, numpy_to_array

CASES = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.array(3.5),  # 0-d
    np.zeros((0, 5), dtype=np.int64),
    np.arange(6, dtype=">f8").reshape(2, 3),  # big-endian
    np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    np.arange(10, dtype=np.uint8)[::2],  # not contiguous
    np.ones((2, 2, 2), dtype=np.float16),
]


@pytest.mark.parametrize("value", CASES, ids=lambda v: f"{v.dtype}{v.shape}")
def test_numpy_to_array_writes_what_np_save_writes(value):
    ours = numpy_to_array(value)
    theirs = Array(np.require(value, requirements="C"))  # C order, 0-d kept 0-d
    assert ours.data == theirs.data
    assert (ours.dtype, tuple(ours.shape), ours.stype) == (
        theirs.dtype, tuple(theirs.shape), theirs.stype)
    again = numpy_to_array(value)  # from the cached header
    assert again.data == theirs.data


@pytest.mark.parametrize("value", CASES, ids=lambda v: f"{v.dtype}{v.shape}")
def test_array_to_numpy_reads_what_flower_reads(value):
    flower_array = Array(value)  # Fortran-ordered input keeps fortran_order=True here
    ours, theirs = array_to_numpy(flower_array), flower_array.numpy()
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
