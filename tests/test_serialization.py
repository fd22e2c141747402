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


def test_records_built_without_per_item_checks_are_the_constructors_records():
    """asyncfl's record builders give the same Flower records (class, items, order, serialized
    id) as Flower's constructors; values of other types take the constructor's checks."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    from asyncfl import protocol

    assert protocol._FAST  # this Flower's records are laid out as the builders expect
    metrics = {"num-examples": 3, "train-loss": 0.25, "local-steps": 1}
    settings = ConfigRecord({"lr": 0.1, "return": "weights", "local-steps": 2})
    arrays = protocol.arrays_to_record({"w": np.arange(3.0), "b": np.zeros(2, np.int64)})
    flowers = ArrayRecord()
    for key, value in (("w", np.arange(3.0)), ("b", np.zeros(2, np.int64))):
        flowers[key] = Array(value)
    pairs = [
        (protocol.metric_record(metrics), MetricRecord(metrics)),
        (protocol.config_record({"model-version": 4, "lr": 0.5}, settings),
         ConfigRecord({**settings, "model-version": 4, "lr": 0.5})),
        (arrays, flowers),
        (protocol.record_dict({"arrays": arrays, "metrics": MetricRecord(metrics)}),
         RecordDict({"arrays": flowers, "metrics": MetricRecord(metrics)})),
    ]
    for ours, theirs in pairs:
        assert type(ours) is type(theirs) and ours == theirs
        assert list(ours) == list(theirs)
        assert ours.object_id == theirs.object_id  # (what Flower's runtimes send)
    assert type(protocol.metric_record({"x": np.float64(0.5)})["x"]) is np.float64
    with pytest.raises(TypeError):
        protocol.metric_record({"x": "not a number"})
    with pytest.raises(TypeError):
        protocol.config_record({"x": {"a": 1}})
    with pytest.raises(TypeError):
        protocol.record_dict({"x": {"a": 1}})


def test_weighted_metrics_is_flowers_aggregation():
    from flwr.app import MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

    from asyncfl.engine.runner import weighted_metrics

    records = [MetricRecord({"num-examples": n, "train-loss": loss, "acc": [0.1 * n, 0.3]})
               for n, loss in ((3, 0.7), (5, 0.1), (1, 1e-9))]
    for some in (records[:1], records):
        ours = weighted_metrics(some, "num-examples")
        theirs = aggregate_metricrecords([RecordDict({"m": r}) for r in some], "num-examples")
        assert ours == theirs and list(ours) == list(theirs)
