"""benchmarks/peers.py's dry run (--dry: 10 clients, 20 updates, once) prints its table: one
row per run, the same number of updates, numbers where numbers belong. FLGo is an optional
extra (`.[peers]`): only its rows are skipped without it. Speeds are not checked."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import table_rows

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import peers  # noqa: E402


def check_rows(rows: list[dict[str, str]], runs: list[str]) -> None:
    assert [r["run"] for r in rows] == runs
    for row in rows:
        assert list(row) == list(peers.COLUMNS)
        assert int(row["clients"]) == peers.DRY["num_clients"]
        # every run aggregates the updates asked for (FLGo's FedBuff may take a few more
        # in its last version: replies landing on the same clock unit go in together)
        assert peers.DRY["updates"] <= int(row["updates"]) <= peers.DRY["updates"] + 5
        assert int(row["trained"]) >= int(row["updates"])
        for key in ("updates_per_s", "loop_s", "process_s", "peak_rss_mb"):
            assert float(row[key]) > 0, (key, row)
        ours = next((r for r in rows if r["run"] == f"asyncfl {row['run'].split()[1]}"), None)
        if ours is None:  # nothing to compare with in this run
            assert row["asyncfl_speedup"] == ""
        else:
            assert float(row["asyncfl_speedup"]) == pytest.approx(
                float(ours["updates_per_s"]) / float(row["updates_per_s"]), rel=1e-2)


def test_the_asyncfl_rows_of_the_dry_run(tmp_path):
    text = peers.main(["--dry", "--without", "flgo,flower", "--out", str(tmp_path)])
    check_rows(table_rows(text), ["asyncfl fedbuff", "asyncfl fedavg"])
    assert "load average" in text


def test_without_flgo_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "flgo_installed", lambda: False)
    with pytest.raises(RuntimeError, match=r'pip install -e "\.\[peers\]"'):
        peers.measure(1, str(tmp_path), without=("flower",), dry=True)


def test_an_unknown_framework_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        peers.main(["--dry", "--without", "flgo,fedml", "--out", str(tmp_path)])
    assert "fedml" in capsys.readouterr().err


def test_the_flgo_rows_of_the_dry_run(tmp_path):
    pytest.importorskip("flgo")
    text = peers.main(["--dry", "--without", "asyncfl,flower", "--out", str(tmp_path)])
    check_rows(table_rows(text), ["flgo fedbuff", "flgo fedavg"])


def test_tree_peaks_reads_a_child_s_peak_memory():
    """The sampler behind the Flower rows' memory: a child that holds 60 MB for a moment."""
    with peers.TreePeaks(every=0.05) as tree:
        child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(60 << 20)"
                                  "; b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5)"])
        while child.poll() is None:
            time.sleep(0.05)
    peak, command = tree.biggest()
    assert peak >= 60 and "bytearray" in command
    assert tree.total() >= peak


@pytest.mark.slow
@pytest.mark.ray
def test_the_flower_row_of_the_dry_run(tmp_path):
    """Flower's FedAvg in its simulation engine (Ray start-up: about 40 s)."""
    text = peers.main(["--dry", "--without", "flgo,asyncfl", "--out", str(tmp_path)])
    rows = table_rows(text)
    check_rows(rows, ["flower fedavg"])
    assert float(rows[0]["all_processes_rss_mb"]) >= float(rows[0]["peak_rss_mb"]) > 0
