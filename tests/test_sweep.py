"""asyncfl-sweep: grid x seeds, runs.csv / summary.csv / figures, failures, resume, Ray."""

import math
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from asyncfl.config import ConfigError
from asyncfl.tools.processes import live_processes
from asyncfl.tools.sweep.cli import main
from asyncfl.tools.sweep.execute import run_sweep
from asyncfl.tools.sweep.grid import grid_points, parse_grid, parse_seeds
from asyncfl.tools.sweep.statistics import METRICS
from tests.helpers import read_rows

ROOT = Path(__file__).resolve().parents[1]
TINY = {"num-clients": 4, "num-server-rounds": 2, "local-steps": 1, "buffer-size": 2,
        "target-accuracy": 0.1}


def numbers(rows, key):
    return np.array([float(r[key]) for r in rows if r[key] != ""])


def test_grid_and_seed_syntax():
    assert parse_grid("strategy=fedavg,fedbuff buffer-size=5,10 lr=0.1 "
                      "delay-profile='1,2','1,8' profile=false") == {
        "strategy": ["fedavg", "fedbuff"], "buffer-size": [5, 10], "lr": [0.1],
        "delay-profile": ["1,2", "1,8"], "profile": [False]}
    assert [p.name for p in grid_points(parse_grid("strategy=fedavg,fedbuff lr=0.1,0.2"))] == [
        "strategy=fedavg lr=0.1", "strategy=fedavg lr=0.2", "strategy=fedbuff lr=0.1",
        "strategy=fedbuff lr=0.2"]
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("4,7") == [4, 7]
    for bad, key in (("buffer-size=five", "buffer-size"), ("no-such-key=1", "no-such-key"),
                     ("seed=1,2", "seed"), ("lr", "lr")):
        with pytest.raises(ConfigError, match=key):
            parse_grid(bad)
    for bad in ("0", "1,1", "x"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_bad_grid_value_is_reported_before_any_run(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["--grid", "strategy=fedavg,fedbuff buffer-size=2,0", "--seeds", "2",
                 "--output-dir", str(out)]) == 2
    assert "'buffer-size' = 0" in capsys.readouterr().err
    assert main(["--grid", "strategy=fedavg", "--run-config", "output-dir='x'",
                 "--output-dir", str(out)]) == 2
    assert "'output-dir' is set by the sweep" in capsys.readouterr().err
    assert not out.exists()


def test_two_by_two_grid_with_two_seeds_writes_runs_summary_and_figures(tmp_path):
    """Two worker processes; summary.csv's mean, sample std and t-interval agree with numpy
    and scipy on runs.csv."""
    out = tmp_path / "sweep"
    assert main(["--grid", "strategy=fedavg,fedbuff local-steps=1,2", "--seeds", "2",
                 "--run-config", "num-clients=4 num-server-rounds=2 buffer-size=2 "
                 "target-accuracy=0.1", "--output-dir", str(out), "--workers", "2"]) == 0
    runs = read_rows(out / "runs.csv")
    assert len(runs) == 8 and {r["status"] for r in runs} == {"ok"}
    assert len({r["results_dir"] for r in runs}) == 8  # runs never share a results folder
    assert all((Path(r["results_dir"]) / "summary.json").exists() for r in runs)
    assert {(r["strategy"], r["local-steps"], r["seed"]) for r in runs} == {
        (s, k, seed) for s in ("fedavg", "fedbuff") for k in "12" for seed in "01"}
    summary = read_rows(out / "summary.csv")
    assert len(summary) == 4
    for row in summary:
        mine = [r for r in runs if r["point"] == row["point"]]
        assert row["runs"] == "2" and row["failed"] == "0"
        for metric in METRICS:
            x = numbers(mine, metric)
            if len(x) < 2:  # time to target: the runs that reached it
                continue
            std = x.std(ddof=1)
            assert float(row[f"{metric}_mean"]) == pytest.approx(x.mean())
            assert float(row[f"{metric}_std"]) == pytest.approx(std)
            assert float(row[f"{metric}_ci95"]) == pytest.approx(
                stats.t.ppf(0.975, len(x) - 1) * std / math.sqrt(len(x)))
        assert float(row["final_accuracy_ci95"]) == pytest.approx(
            12.706 * numbers(mine, "final_accuracy").std(ddof=1) / math.sqrt(2), rel=1e-4)
    assert len({r["config_id"] for r in read_rows(out / "curves.csv")}) == 8
    for figure in ("accuracy_vs_time.png", "time_to_target.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"


def test_failed_point_is_recorded_and_resume_reruns_only_what_is_not_done(tmp_path):
    trace = tmp_path / "trace.csv"  # missing at first: the trace point fails at its start
    points = grid_points({"delay-dist": ["constant", "trace"]})
    fixed = {**TINY, "delay-trace": str(trace)}
    out = tmp_path / "sweep"
    first = run_sweep(points, [0, 1], fixed, out, progress=False)
    assert [(r["delay-dist"], r["status"]) for r in first.runs] == [
        ("constant", "ok"), ("constant", "ok"), ("trace", "failed"), ("trace", "failed")]
    assert all("delay-trace" in r["error"] for r in first.failed)
    assert [s["runs"] for s in first.summary] == [2, 0]
    assert [s["failed"] for s in first.summary] == [0, 2]

    # interrupted: seed 1 of the constant point never got its row, another row is cut short
    rows = (out / "runs.csv").read_text().splitlines()
    (out / "runs.csv").write_text("\n".join(rows[:2]) + "\n" + rows[2][:30])
    trace.write_text("client,step_time\n0,1.0\n1,2.0\n2,1.5\n3,3.0\n")
    folders = set((out / "runs").iterdir())
    again = run_sweep(points, [0, 1], fixed, out, progress=False)
    assert [r["status"] for r in again.runs] == ["ok"] * 4
    new = set((out / "runs").iterdir()) - folders
    # seed 1 of constant and both trace runs ran (the trace ones in fresh folders)
    assert len(new) == 3 and first.runs[0]["results_dir"] == again.runs[0]["results_dir"]
    assert len(read_rows(out / "runs.csv")) == 4
    before = (out / "runs.csv").read_text()
    run_sweep(points, [0, 1], fixed, out, progress=False)  # all done: nothing runs
    assert (out / "runs.csv").read_text() == before and set((out / "runs").iterdir()) == (
        folders | new)


@contextmanager
def ray_cluster(workdir: Path):
    """A Ray head on 127.0.0.1 and a second node process, each started with `--block` in its
    own session, stopped by PID (their process groups and descendants') afterwards."""
    from asyncfl.tools.processes import free_port, stop_process_group
    from asyncfl.tools.superlink import flower_executable

    port = free_port()
    ray = flower_executable("ray")
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats",
              "--object-store-memory", str(100 * 2**20)]
    env = {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    nodes = []
    try:
        nodes.append(subprocess.Popen(
            [ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--include-dashboard", "false", "--temp-dir", str(temp), *common],
            env=env, start_new_session=True, stdout=(workdir / "head.log").open("w"),
            stderr=subprocess.STDOUT))
        address = f"127.0.0.1:{port}"
        wait_for_nodes(address, 1)
        nodes.append(subprocess.Popen(
            [ray, "start", "--address", address, "--node-ip-address", "127.0.0.1", *common],
            env=env, start_new_session=True, stdout=(workdir / "node.log").open("w"),
            stderr=subprocess.STDOUT))
        wait_for_nodes(address, 2)
        yield address, nodes
    finally:
        for node in reversed(nodes):
            stop_process_group(node)
        subprocess.run(["rm", "-rf", str(temp)], check=False)


CLUSTER_PROBE = """import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print(sum(n["Alive"] for n in ray.nodes()), len(ray._private.state.jobs()) - 1)
"""


def cluster_state(address: str) -> tuple[int, int]:
    """(live nodes, jobs so far) of the cluster at `address`, asked from a subprocess so that
    this process holds no Ray connection."""
    done = subprocess.run([sys.executable, "-c", CLUSTER_PROBE, address], capture_output=True,
                          text=True, timeout=60)
    if done.returncode != 0:
        return 0, 0
    nodes, jobs = done.stdout.split()[-2:]
    return int(nodes), int(jobs)


def wait_for_nodes(address: str, count: int, seconds: float = 90) -> None:
    """Until the cluster at `address` has `count` live nodes."""
    deadline = time.monotonic() + seconds
    while cluster_state(address)[0] < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Ray cluster at {address} has fewer than {count} nodes")
        time.sleep(1)


@pytest.mark.slow
@pytest.mark.ray
def test_ray_cluster_on_loopback_runs_a_sweep_and_flwr_run(tmp_path):
    """A two-node Ray cluster on 127.0.0.1: the sweep's runs as Ray tasks, and `flwr run`'s
    simulation engine on the same cluster (the SuperLink started with RAY_ADDRESS)."""
    from asyncfl.tools.flower_launcher import run_flower

    with ray_cluster(tmp_path) as (address, nodes):
        result = run_sweep(grid_points({"strategy": ["fedavg", "fedbuff"]}), [0], TINY,
                           tmp_path / "sweep", ray_address=address, progress=False)
        assert [r["status"] for r in result.runs] == ["ok", "ok"], result.runs
        jobs = cluster_state(address)[1]
        out = run_flower({**TINY, "strategy": "fedbuff", "output-dir": str(tmp_path / "flwr")},
                         ROOT, ray_address=address)
        assert (out / "summary.json").exists()
        # the simulation was a driver of this cluster (the probe's own job not counted)
        assert cluster_state(address)[1] == jobs + 2
        started = descendants([node.pid for node in nodes])  # GCS, raylets, workers, ...
        assert len(started) > 4
    alive = live_processes()
    assert not [pid for pid in started if pid in alive and alive[pid][0] not in "ZX"]


def descendants(roots: list[int]) -> set[int]:
    """The PIDs of `roots` and of every live process below them."""
    children: dict[int, list[int]] = {}
    for pid, (_, parent, _) in live_processes().items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def test_a_second_sweep_on_a_busy_folder_is_refused_and_no_row_is_lost(tmp_path, monkeypatch):
    """Sweep B starts while sweep A is between two runs on the same --output-dir: B is
    refused (it used to rewrite runs.csv under A's appends, and A's later rows vanished);
    run again afterwards, B adds its rows next to all of A's."""
    import asyncfl.tools.sweep.execute as execute

    out, started, refusals = tmp_path / "sweep", [], []
    first, plain = grid_points({"lr": [0.05, 0.1]}), execute.run_one

    def run_one_then_start_b(overrides):
        outcome = plain(overrides)
        if not started:
            started.append(overrides)
            try:
                run_sweep(grid_points({"lr": [0.2]}), [0], TINY, out, progress=False)
            except ConfigError as refused:
                refusals.append(str(refused))
        return outcome

    monkeypatch.setattr(execute, "run_one", run_one_then_start_b)
    run_sweep(first, [0], TINY, out, progress=False)
    assert refusals == [f"--output-dir {out}: another asyncfl-sweep (pid {os.getpid()}) is "
                        "writing there; wait for it to finish or choose another --output-dir"]
    monkeypatch.setattr(execute, "run_one", plain)
    run_sweep(grid_points({"lr": [0.2]}), [0], TINY, out, progress=False)
    rows = read_rows(out / "runs.csv")
    assert sorted((r["lr"], r["status"]) for r in rows) == [
        ("0.05", "ok"), ("0.1", "ok"), ("0.2", "ok")]


def test_a_rerun_replaces_a_half_finished_run_folder(tmp_path):
    out = tmp_path / "sweep"
    done = run_sweep(grid_points({"lr": [0.05]}), [0], TINY, out, progress=False)
    folder = Path(done.runs[0]["results_dir"])
    (folder / "summary.json").unlink()  # killed while it wrote its results
    (out / "runs.csv").write_text((out / "runs.csv").read_text().splitlines()[0] + "\n")
    again = run_sweep(grid_points({"lr": [0.05]}), [0], TINY, out, progress=False)
    assert again.runs[0]["results_dir"] == str(folder)
    assert [p.name for p in (out / "runs").iterdir()] == [folder.name]
    assert (folder / "summary.json").exists()
