"""benchmarks/gpu.sh's dry run (--device cpu --quick) prints its table: the columns, one row
per comparison, numbers where numbers belong. Its speed is not checked."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import table_rows

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu  # noqa: E402


def check_rows(rows: list[dict[str, str]], benchmarks: list[str]) -> None:
    assert [r["benchmark"] for r in rows] == benchmarks
    for row in rows:
        assert list(row) == list(gpu.COLUMNS)
        assert row["device"] == "cpu"
        for key in ("updates_per_s", "reference_updates_per_s", "ratio"):
            assert float(row[key]) > 0, (key, row)
        assert float(row["ratio"]) == pytest.approx(
            float(row["updates_per_s"]) / float(row["reference_updates_per_s"]), rel=1e-2)
        assert int(row["P"]) >= 1


def test_the_together_rows_of_the_dry_run(tmp_path):
    """In this process, without the simulation engine: one row per model, auto's P."""
    text = gpu.main(["--device", "cpu", "--quick", "--no-engine", "--out", str(tmp_path)])
    rows = table_rows(text)
    check_rows(rows, ["together"] * 2)
    assert [r["model"] for r in rows] == list(gpu.MODELS)
    assert all(int(r["P"]) > 1 for r in rows)  # auto trained clients together


@pytest.mark.slow
@pytest.mark.ray
def test_the_script_prints_the_whole_table(tmp_path):
    """gpu.sh itself, with the simulation-engine rows (Flower's FedAvg as the reference)."""
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--device", "cpu",
                           "--quick", "--out", str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable},
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = table_rows(done.stdout)
    check_rows(rows, ["together"] * 2 + ["engine"] * 2)
    assert [r["ours"] for r in rows[2:]] == ["asyncfl fedavg", "asyncfl fedbuff"]
    assert {r["reference"] for r in rows[2:]} == {"flower FedAvg"}
