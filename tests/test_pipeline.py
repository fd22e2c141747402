"""Pipeline parallelism (B1) and pipelines x data parallelism (B2) against one process."""

import pytest
import torch

from experiments.homework.pipeline import (
    PipelineConfig,
    full_model,
    run_pipeline,
    train_reference,
)

pytestmark = pytest.mark.slow  # the pipeline exercise's processes


def assert_same(state, reference):
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6)


def test_b1_pipeline_equals_single_process_training():
    cfg = PipelineConfig(stages=3, microbatches=3, batch_size=24, steps=4, timeout=120)
    run = run_pipeline(cfg)
    reference = train_reference(cfg)
    assert_same(run.state, reference)
    untrained = full_model(cfg).state_dict()
    assert any(not torch.equal(untrained[k], reference[k]) for k in reference)


def test_b2_two_pipelines_equal_training_on_the_union_of_their_batches():
    cfg = PipelineConfig(stages=3, pipelines=2, microbatches=3, batch_size=12, steps=3,
                         timeout=180)
    run = run_pipeline(cfg)
    reference = train_reference(cfg)  # one process, minibatches of 2 x 12 examples
    for state in run.pipeline_states:
        assert_same(state, reference)


def test_unequal_stage_compute_with_many_steps_does_not_deadlock():
    cfg = PipelineConfig(stages=3, microbatches=6, batch_size=24, steps=40,
                         stage_delays=(0.0, 0.004, 0.001), timeout=120)
    run = run_pipeline(cfg)  # raises TimeoutError (and kills the processes) on a deadlock
    assert_same(run.state, train_reference(cfg))


def test_batch_must_split_into_equal_microbatches():
    with pytest.raises(ValueError, match="divisible"):
        PipelineConfig(batch_size=10, microbatches=3)
