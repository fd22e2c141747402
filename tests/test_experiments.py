"""The experiment scripts run and check what they claim (small settings)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # whole experiment scripts

ROOT = Path(__file__).resolve().parents[1]


def run_script(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "experiments" / args[0]), *args[1:]],
                          cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


#: the scripts that run their settings as a sweep over seeds: one seed, in this process
ONE_SEED = ("--seeds", "1", "--workers", "1")


def test_homework_a1_passes_and_fails_on_its_tolerance(tmp_path):
    done = run_script("homework_part_a.py", "a1", "--out", str(tmp_path / "hw"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "A1: largest difference 0.0000 pp" in done.stdout
    table = (tmp_path / "hw" / "a1.md").read_text()
    assert table.count("\n") == 2 + 12  # header, rule, 2 scenarios x rounds 0..5
    assert table.count("50 clients non-IID (pathological)") == 6
    strict = run_script("homework_part_a.py", "a1", "--tolerance", "-1", "--out",
                        str(tmp_path / "hw2"), cwd=tmp_path)
    assert strict.returncode == 1 and "FAILED" in strict.stdout


def test_homework_a2_message_counts(tmp_path):
    done = run_script("homework_part_a.py", "a2", "--rounds", "2", "--out",
                      str(tmp_path / "hw"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = (tmp_path / "hw" / "a2_fraction.csv").read_text().splitlines()[1:]
    # N = 100, C = 0.01 / 0.1 / 0.2, 2 rounds: 2 x 2 x (1, 10, 20) messages
    assert [int(r.split(",")[4]) for r in rows] == [4, 4, 40, 40, 80, 80]


def test_seed000_small_run_writes_panels_and_table(tmp_path):
    done = run_script("seed000_async_mean.py", "--sizes", "20x200", "--out",
                      str(tmp_path / "s0"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "s0"
    assert {p.name for p in out.glob("*-panels.png")} == {
        "normal-20x200-panels.png", "exponential-20x200-panels.png",
        "uniform-20x200-panels.png"}
    assert (out / "table.md").read_text().count("\n") == 2 + 9


def test_apsb_poster_table_1_shape(tmp_path):
    """8 workers of unequal speed, K = 8, same iteration budget: APSB at least A-LSGD and
    close to LSGD, as on the poster."""
    done = run_script("apsb_poster.py", "--only", "k8", "--out", str(tmp_path / "apsb"),
                      *ONE_SEED, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    import csv

    with (tmp_path / "apsb" / "table_k8.csv").open() as f:
        acc = {r["strategy"]: float(r["accuracy_pct"]) for r in csv.DictReader(f)}
    assert acc["apsb"] >= acc["alsgd"]
    assert acc["apsb"] >= acc["lsgd"] - 3.0


def test_esync_experiment_reports_compute_shares(tmp_path):
    done = run_script("esync_experiment.py", "--budget", "200", "--out", str(tmp_path / "es"),
                      *ONE_SEED, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    import csv

    with (tmp_path / "es" / "table.csv").open() as f:
        rows = {r["strategy"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"esync", "ssgd", "ssgd-deadline", "asgd", "fedavg", "fedbuff"}
    # SSGD: worker i computes c_i of every 8 s round; ESync keeps everyone busy
    assert rows["ssgd"]["compute_share_per_worker"] == "0.12 / 0.25 / 0.50 / 1.00"
    assert rows["esync"]["compute_share_per_worker"] == "1.00 / 1.00 / 1.00 / 1.00"
    # a 4 s deadline: rounds of 4 s, the 8 s worker's work is always cut (then it is dropped)
    assert rows["ssgd-deadline"]["compute_share_per_worker"] == "0.25 / 0.50 / 1.00 / 0.00"
    assert (tmp_path / "es" / "accuracy_vs_time.png").exists()


def test_label_skew_fast_clients_classes_dominate_under_asynchrony(tmp_path):
    done = run_script("label_skew.py", "--clients", "2", "--slowdowns", "5", "--budget", "60",
                      "--out", str(tmp_path / "ls"), *ONE_SEED, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    import csv

    with (tmp_path / "ls" / "table.csv").open() as f:
        rows = {r["strategy"]: r for r in csv.DictReader(f)}
    for name in ("fedasync-naive", "fedasync-poly", "fedbuff-poly"):
        assert float(rows[name]["fast_classes_acc"]) > float(rows[name]["slow_classes_acc"])
        assert float(rows[name]["updates_fast_share"]) > 0.8  # 5x faster: 5/6 of the updates
    assert float(rows["fedavg"]["updates_fast_share"]) == 0.5
    # CA2FL's cache keeps the slow client's direction in every step (31% against 0 at 60 s)
    assert float(rows["ca2fl"]["slow_classes_acc"]) > 0.2 > float(
        rows["fedbuff-kn"]["slow_classes_acc"])
    assert (tmp_path / "ls" / "per_class.png").exists()


def test_own_data_trains_digits_written_as_a_parquet_folder(tmp_path):
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}
    done = run_script("own_data.py", "--clients", "3", "--rounds", "1", "--out",
                      str(tmp_path / "own"), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    import csv

    import pyarrow.parquet as pq

    folder = tmp_path / "own" / "digits-parquet"
    assert [pq.read_metadata(folder / f"{s}-00000.parquet").num_rows
            for s in ("train", "test")] == [1437, 360]
    with (tmp_path / "own" / "table.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["task"], r["model"]) for r in rows] == [
        ("images", "auto"), ("images", "small-cnn"), ("digits", "auto")]
    for row in rows:  # both tasks test on the same 360 held-out digits
        assert float(row["accuracy"]) * 360 == pytest.approx(round(float(row["accuracy"]) * 360),
                                                             abs=0.05)


def test_fleets_loses_tasks_only_where_clients_come_and_go(tmp_path):
    done = run_script("fleets.py", "--strategies", "fedavg,fedbuff", "--availability",
                      "always,sparse", "--networks", "mixed", "--budget", "60",
                      "--out", str(tmp_path / "fl"), *ONE_SEED, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    import csv

    with (tmp_path / "fl" / "table.csv").open() as f:
        rows = {(r["strategy"], r["availability"]): r for r in csv.DictReader(f)}
    for name in ("fedavg", "fedbuff"):
        assert float(rows[(name, "always")]["lost_share"]) == 0
        assert float(rows[(name, "sparse")]["lost_share"]) > 0
        assert int(float(rows[(name, "sparse")]["updates"])) > 0
    assert (tmp_path / "fl" / "accuracy_vs_time.png").exists()


def test_claims_writes_a_table_per_claim_with_every_point(tmp_path):
    done = run_script("claims.py", "--claims", "timelyfl,mifa", "--scale", "0.05",
                      "--out", str(tmp_path / "c"), *ONE_SEED, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    import csv

    for claim, points in (("timelyfl", ["fedbuff", "fedbuff-window"]),
                          ("mifa", ["fedavg", "mifa", "ca2fl"])):
        with (tmp_path / "c" / claim / "table.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert [r["strategy"] for r in rows] == points
        for row in rows:
            assert 0 <= float(row["final_accuracy"]) <= 1 and 0 < float(row["top_share"]) <= 1
            assert row["reached"] in ("0/1", "1/1")


def test_defaults_panel_speedups_come_from_the_curves(tmp_path):
    """One scenario, two strategies, one seed: each speed-up is FedAvg's first time at its own
    final accuracy F over the strategy's first time at F, and each run stops at 2T or at 20x
    FedAvg's updates, whichever comes first."""
    import csv

    out = tmp_path / "panel"
    done = run_script("defaults.py", "--scenarios", "digits-10", "--strategies", "fedbuff,asgd",
                      *ONE_SEED, "--label", "x", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    def curves(folder):
        with (folder / "runs.csv").open() as f:
            ids = {r["point"]: (r["config_id"], r) for r in csv.DictReader(f)}
        with (folder / "curves.csv").open() as f:
            points = list(csv.DictReader(f))
        return {point: ([(float(p["virtual_time"]), float(p["accuracy"])) for p in points
                         if p["config_id"] == cid], row) for point, (cid, row) in ids.items()}

    (fedavg, fedavg_run), = curves(out / "fedavg").values()
    final = fedavg[-1][1]
    t_final = next(t for t, a in fedavg if a >= final)
    with (out / "x" / "table.csv").open() as f:
        table = {r["strategy"]: r for r in csv.DictReader(f)}
    assert set(table) == {"fedbuff", "asgd"}
    for point, (curve, run) in curves(out / "x" / "sweep").items():
        strategy = point.split("/")[1]
        reached = next((t for t, a in curve if a >= final), None)
        expected = 0.0 if reached is None else t_final / reached
        assert float(table[strategy]["speedup"]) == pytest.approx(expected)
        assert float(table[strategy]["fedavg_final"]) == pytest.approx(final)
        cap = 20 * int(fedavg_run["updates"])  # versions of up to 10 updates (FedBuff's K)
        assert int(run["updates"]) <= cap
        assert (float(run["virtual_time"]) >= 2 * float(fedavg_run["virtual_time"])
                or int(run["updates"]) > cap - 10)
    assert "| fedbuff | 1 |" in (out / "x" / "summary.md").read_text()
    # the fleet's throughput cap, from the step times FedAvg's run wrote to its clients.csv
    with (Path(fedavg_run["results_dir"]) / "clients.csv").open() as f:
        steps = [float(r["step_time"]) for r in csv.DictReader(f)]
    cap = sum(1 / c for c in steps) / len(steps) * max(steps)
    assert [float(r["cap"]) for r in table.values()] == pytest.approx([cap, cap])
