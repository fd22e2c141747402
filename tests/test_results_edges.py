"""Results that survive a stop, a full disk and a reader that wants strict JSON."""

import json
import os
import subprocess
import uuid

import pytest

import asyncfl
from asyncfl.results import ResultsError, find_launched_run, strict_json
from asyncfl.strategies import DivergenceError

SMALL = dict(strategy="fedbuff", num_clients=4, num_server_rounds=4, local_steps=2)


def strict(path):
    """summary.json parsed by a reader that refuses NaN and Infinity."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_diverging_run_leaves_its_partial_results_marked_stopped(out, tmp_path):
    with pytest.raises(DivergenceError):
        asyncfl.simulate(run_name="diverged", server_lr=1e4, **{**SMALL,
                         "num_server_rounds": 20}, **out)
    folder = tmp_path / "outputs" / "diverged"
    summary = strict(folder / "summary.json")
    assert summary["status"] == "stopped"
    assert summary["reason"].startswith("DivergenceError: ")
    assert (folder / "events.csv").read_text().count("\n") > 1
    assert (folder / "evals.csv").exists() and not (folder / "final_model.npz").exists()
    config = {**json.loads((folder / "config.json").read_text())}
    assert find_launched_run(config) is None  # a stopped run is no finished run


def test_summary_json_is_strict_json_and_says_finished(out):
    result = asyncfl.simulate(**SMALL, **out)
    assert strict(result.output_dir / "summary.json")["status"] == "finished"
    assert strict_json({"a": float("nan"), "b": [float("inf"), 1.5]}) == (
        '{\n  "a": null,\n  "b": [\n    null,\n    1.5\n  ]\n}')


def test_a_folder_without_a_complete_summary_is_not_a_finished_run(out, tmp_path):
    result = asyncfl.simulate(run_name="cut", **SMALL, **out)
    config = json.loads((result.output_dir / "config.json").read_text())
    assert find_launched_run(config) == result.output_dir
    (result.output_dir / "summary.json").write_text("")  # as a full disk used to leave it
    assert find_launched_run(config) is None


@pytest.fixture
def small_disk(tmp_path):
    """A 96 KB tmpfs (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_names_the_file_and_output_dir_and_leaves_no_finished_run(small_disk):
    config = dict(SMALL, output_dir=str(small_disk), run_name="full")
    with pytest.raises(ResultsError, match=rf"cannot write {small_disk}/full/\S+ \(No space "
                                           r"left on device\).*'output-dir'"):
        asyncfl.simulate(**config)
    folder = small_disk / "full"
    assert not (folder / "summary.json").exists()
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    for path in folder.iterdir():  # whatever is there is complete
        if path.suffix == ".json":
            json.loads(path.read_text())


def test_a_checkpoint_on_a_full_disk_names_its_file(small_disk):
    import numpy as np

    from asyncfl.engine.checkpoint import save_checkpoint

    path = small_disk / "run" / "checkpoint.bin"
    with pytest.raises(OSError, match=rf"cannot write the checkpoint {path} \(No space left "
                                      r"on device\).*output-dir"):
        save_checkpoint(path, {"model": np.zeros(50_000)})
    assert list(path.parent.iterdir()) == []


def test_csv_columns_and_long_json_lists_are_written_as_csv_and_json_write_them(tmp_path):
    """The results folder's column-wise CSV writer and strict_json's long int lists give the
    bytes csv.writer and json.dumps give: floats by repr, -0.0 kept, NaN, huge ints, None,
    repeated values, and columns of other types left to csv.writer."""
    import csv
    import itertools
    import math

    from asyncfl.results import LONG_INT_LIST, participation, write_rows

    n = 3000
    columns = {
        "client": range(n), "node_id": [2**64 - 1 - 7 * i for i in range(n)],
        "step_time": [0.1 * i + 1e-300 for i in range(n)],
        "same": itertools.repeat(0.0, n), "signed": [0.0, -0.0, 1.0] * (n // 3),
        "odd": [math.nan, math.inf, 5e-324] * (n // 3), "none": [None] * n,
        "count": [i % 3 for i in range(n)],
    }
    mixed = {"a": [1, 2.5, None], "b": ["x,y", True, 3]}
    for name, rows in (("columns", columns), ("mixed", mixed)):
        lists = {k: list(v) for k, v in rows.items()}
        write_rows(tmp_path / f"{name}.csv", dict(lists), list(lists))
        with (tmp_path / f"{name}-csv.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(list(lists))
            writer.writerows(zip(*lists.values(), strict=True))
        assert ((tmp_path / f"{name}.csv").read_bytes()
                == (tmp_path / f"{name}-csv.csv").read_bytes())
    counts = [i % 7 for i in range(LONG_INT_LIST + 5)]
    value = {"b": {"updates_per_client": counts, "x": [1.5, math.nan]}, "a": [counts, []]}
    plain = {"b": {"updates_per_client": counts, "x": [1.5, None]}, "a": [counts, []]}
    assert strict_json(value) == json.dumps(plain, indent=2, sort_keys=True)
    report = participation(counts)
    ranked = sorted(counts)
    total, size = sum(counts), len(counts)
    assert report["gini"] == sum((2 * i - size - 1) * x for i, x in
                                 enumerate(ranked, start=1)) / (size * total)
    assert report["top_client"] == max(range(size), key=counts.__getitem__)
