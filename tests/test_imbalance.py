"""Label skew, the evaluator beside training, per-class accuracy, the server's time profile."""

import numpy as np
import pytest
import torch

import asyncfl
from asyncfl.tasks import load_task
from asyncfl.tasks.classification import load_arrays
from asyncfl.tasks.partition import partition_indices
from tests.helpers import read_rows

LABELS = np.repeat(np.arange(10), 30)


def test_two_clients_hold_disjoint_halves_of_the_classes():
    parts = partition_indices(LABELS, 2, "label-skew", label_groups=2, seed=0)
    assert set(LABELS[parts[0]]) == {0, 1, 2, 3, 4}
    assert set(LABELS[parts[1]]) == {5, 6, 7, 8, 9}
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(LABELS)))


def test_groups_are_shared_evenly_by_their_clients():
    parts = partition_indices(LABELS, 10, "label-skew", label_groups=2, seed=3)
    for client, part in enumerate(parts):
        assert set(LABELS[part]) <= (set(range(5)) if client % 2 == 0 else set(range(5, 10)))
        assert len(part) == 30  # 150 examples per group, 5 clients per group
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(LABELS)))
    with pytest.raises(ValueError, match="label-groups"):
        partition_indices(LABELS, 2, "label-skew", label_groups=3, seed=0)


def test_per_class_accuracy_of_a_model_that_always_says_three(tmp_path):
    task = load_task(asyncfl.simulate(num_clients=2, num_server_rounds=1, local_steps=1,
                                      output_dir=str(tmp_path), run_name="x").config)
    arrays = {k: np.zeros_like(v) for k, v in task.initial_arrays(0).items()}
    arrays["classifier.3.bias"][3] = 10.0
    metrics = task.evaluate(arrays)
    assert metrics["accuracy-class-3"] == 1.0
    assert all(metrics[f"accuracy-class-{c}"] == 0.0 for c in range(10) if c != 3)
    share = float((task.y_test == 3).float().mean())
    assert metrics["accuracy"] == pytest.approx(share)


def test_evals_csv_per_class_accuracy_matches_a_direct_computation(out):
    result = asyncfl.simulate(num_clients=2, partition="label-skew", num_server_rounds=3,
                              run_name="perclass", **out)
    task = load_task(result.config)
    model = task.model_factory()
    load_arrays(model, result.final_arrays())
    with torch.no_grad():
        predicted = model(task.x_test).argmax(1)
    last = read_rows(result.output_dir / "evals.csv")[-1]
    for c in range(10):
        mask = task.y_test == c
        expected = float((predicted[mask] == c).float().mean())
        assert float(last[f"accuracy-class-{c}"]) == pytest.approx(expected, abs=1e-6)


def test_interval_evaluator_sees_the_model_in_force_at_each_time(out):
    result = asyncfl.simulate(strategy="fedasync", num_clients=6, num_server_rounds=40,
                              local_steps=2, delay_dist="exponential", eval_interval=0.5,
                              run_name="interval", **out)
    events = read_rows(result.output_dir / "events.csv")
    evals = read_rows(result.output_dir / "evals.csv")
    end = float(events[-1]["virtual_time"])
    # the initial model, every 0.5 s, and the final model at the end
    times = [float(r["virtual_time"]) for r in evals]
    assert times == [0.0] + [0.5 * k for k in range(1, int(end / 0.5) + 1)] + [end]
    for row in evals[1:-1]:
        t = float(row["virtual_time"])
        applied = [int(e["version_apply"]) for e in events if float(e["virtual_time"]) < t]
        assert int(row["version"]) == max(applied, default=0)
    assert evals[-1]["version"] == events[-1]["version_apply"] == "40"


@pytest.mark.parametrize("strategy", ["fedavg", "fedbuff"])
def test_server_phases_add_up_to_the_server_wall_time(out, strategy):
    result = asyncfl.simulate(strategy=strategy, num_clients=8, num_server_rounds=6,
                              local_steps=3, run_name=f"phases-{strategy}", **out)
    phases = result.summary["server_phases"]
    assert {"setup", "dispatch", "wait", "deserialize", "aggregate", "evaluate",
            "bookkeeping", "results"} <= set(phases)
    wall = result.summary["server_wall_time"]
    assert abs(sum(phases.values()) - wall) <= 0.03 * wall


def test_profile_writes_the_profiler_report_next_to_the_results(out):
    result = asyncfl.simulate(num_clients=2, num_server_rounds=1, local_steps=1, profile=True,
                              run_name="profiled", **out)
    report = (result.output_dir / "server_profile.txt").read_text()
    assert "run_server" in report and "cumulative" in report
    assert (result.output_dir / "server.prof").stat().st_size > 0
