"""A command's process ends soon after its last line (benchmarks/README.md, "Exit after the
last line"): nothing asyncfl starts is left running after `simulate`, and the commands freeze
what is alive before the interpreter's exit so that its collections do not walk it again."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import asyncfl
from asyncfl.tools import flower_launcher
from asyncfl.tools.sweep import cli as sweep_cli

ROOT = Path(__file__).resolve().parents[1]

#: each command run as its console script runs it (main() with no arguments), with settings
#: it refuses before starting anything; prints its exit code and the frozen objects' count
COMMAND = """
import gc, sys
from {module} import main
sys.argv = ["command", "--run-config", "lr=inf"]
code = main()
print(code, gc.get_freeze_count())
"""


@pytest.mark.parametrize("module", ["asyncfl.tools.flower_launcher", "asyncfl.tools.sweep.cli"])
def test_a_command_freezes_what_is_alive_before_its_process_exits(module):
    done = subprocess.run([sys.executable, "-c", COMMAND.format(module=module)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    code, frozen = done.stdout.split()
    assert code == "2" and "'lr' = inf" in done.stderr
    assert int(frozen) > 10_000  # every module's objects, not a handful


@pytest.mark.parametrize("main", [flower_launcher.main, sweep_cli.main])
def test_a_call_from_python_freezes_nothing(main, capsys):
    before = gc.get_freeze_count()
    assert main(["--run-config", "lr=inf"]) == 2
    assert gc.get_freeze_count() == before
    assert "'lr' = inf" in capsys.readouterr().err


def test_freezing_first_collects_the_garbage_so_its_finalizers_run():
    code = """
import gc
from asyncfl.tools.processes import freeze_before_exit

class Noted:
    def __del__(self):
        print("finalized", flush=True)

a, b = Noted(), Noted()
a.other, b.other = b, a  # a cycle: only the collector frees it
del a, b
freeze_before_exit()
print("frozen", gc.get_freeze_count() > 0, flush=True)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert done.stdout.split("\n")[:3] == ["finalized", "finalized", "frozen True"]


def test_simulate_leaves_no_thread_running(tmp_path):
    """Nothing of a run is left for the interpreter to wait for at exit (it joins every
    non-daemon thread) or to stop: no thread started by the run is still alive."""
    before = set(threading.enumerate())
    result = asyncfl.simulate(task="mean", strategy="running-mean", num_clients=20,
                              num_server_rounds=50, local_steps=1, output_dir=str(tmp_path))
    assert result.summary["status"] == "finished"
    assert [t.name for t in set(threading.enumerate()) - before] == []
