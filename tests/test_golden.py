"""The golden runs (tests/golden.py) still give their recorded final model, events and evals,
within the float32 tolerances stated there; and a run repeated in one process is bit-exact."""

import pytest

from tests.golden import RUNS, differences, model_differences, outputs, row_differences, run


@pytest.mark.parametrize("name", sorted(RUNS))
def test_golden_run_is_unchanged(tmp_path, name):
    found = differences(name, run(name, tmp_path))
    assert not found, f"{name}: {len(found)} differences:\n" + "\n".join(found[:12])


@pytest.mark.parametrize("name", ["fedbuff-faults", "apsb-resumed"])
def test_a_run_repeated_in_one_process_is_bit_identical(tmp_path, name):
    first, first_arrays = outputs(run(name, tmp_path / "a"))
    second, second_arrays = outputs(run(name, tmp_path / "b"))
    assert first == second  # rows as strings, and every array's SHA-256
    assert first_arrays.keys() == second_arrays.keys()


def test_the_tolerances_catch_a_one_percent_step_change(tmp_path):
    """The comparison is not so loose that a changed rule passes: FedBuff with its server
    step 1% smaller differs beyond the loss and the model bounds."""
    import asyncfl
    from tests.golden import load, total_steps

    changed = asyncfl.simulate(**{**RUNS["fedbuff"], "server_lr": 0.99},
                               output_dir=str(tmp_path), run_name="changed")
    expected, expected_arrays = load("fedbuff")
    actual, arrays = outputs(changed)
    assert any("train_loss" in d for d in row_differences(actual, expected))
    assert model_differences(arrays, expected_arrays, total_steps(expected["events"]))
