"""The README's first command, `asyncfl-flwr-run`, as a newcomer runs it: Flower's simulation
engine, FedAvg then FedBuff, a short terminal, and a fair comparison on disk."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]  # two Flower simulations with Ray

ROOT = Path(__file__).resolve().parents[1]
#: the most terminal lines the main job may print (it printed 630, 526 of them Flower's
#: per-round result dicts, before they went to the log file)
MAX_LINES = 80


def test_main_job_is_short_on_the_terminal_and_fair_on_disk(tmp_path):
    # the module behind the `asyncfl-flwr-run` script, so any interpreter with asyncfl runs it
    done = subprocess.run([sys.executable, "-m", "asyncfl.tools.flower_launcher", "--app",
                           str(ROOT)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=1800)
    terminal = done.stdout + done.stderr
    assert done.returncode == 0, terminal[-3000:]
    # tqdm redraws its bar with carriage returns: a line is what ends with a newline
    assert terminal.count("\n") < MAX_LINES, terminal
    assert "starting Flower's simulation engine (Ray, 10 SuperNodes)" in done.stdout
    assert "Final results" not in terminal and "changed from 10 to 2" not in terminal
    folder = tmp_path / "outputs" / "compare-fedavg-fedbuff"
    with (folder / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["strategy"] for r in rows] == ["fedavg", "fedbuff"]
    assert [r["dominated"] for r in rows] == ["no", "no"]
    # what the tool is for: FedBuff reaches FedAvg's final accuracy sooner and ends at or above
    # it, and the terminal says how much sooner
    fedavg, fedbuff = rows
    assert float(fedbuff["final_accuracy"]) >= float(fedavg["final_accuracy"])
    assert float(fedbuff["speedup_to_first_final"]) > 1
    assert (f"fedbuff reaches fedavg's final accuracy {float(fedavg['final_accuracy']):.3f} "
            f"{fedbuff['speedup_to_first_final']}x sooner") in done.stdout
    assert "No client made more than a third" in (folder / "comparison.md").read_text()
    for row in rows:
        assert "Final results" in (tmp_path / "outputs" / row["run"] / "flwr.log").read_text()
