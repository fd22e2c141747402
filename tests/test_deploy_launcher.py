"""The deployment launcher's settings, without starting any process, and what a ClientApp
process imports (each message in a deployment starts one)."""

import subprocess
import sys

import pytest

from asyncfl.tools.deploy import TASK_POLL_ENV, Deployment


def test_the_superexec_task_poll_interval_is_passed_to_every_flower_process(tmp_path):
    deployment = Deployment(tmp_path / "d", nodes=2, task_poll_interval=0.1)
    assert deployment.env[TASK_POLL_ENV] == "0.1"
    assert not deployment.processes  # nothing started


def test_no_task_poll_interval_leaves_flowers_default(tmp_path, monkeypatch):
    monkeypatch.delenv(TASK_POLL_ENV, raising=False)
    assert TASK_POLL_ENV not in Deployment(tmp_path / "d", nodes=2,
                                           task_poll_interval=None).env


@pytest.mark.parametrize("seconds", [0.0, 0.001, 61.0])
def test_a_task_poll_interval_outside_flowers_bounds_is_refused(tmp_path, seconds):
    with pytest.raises(ValueError, match="task_poll_interval"):
        Deployment(tmp_path / "d", nodes=2, task_poll_interval=seconds)


def test_the_clientapp_does_not_import_flowers_server_state():
    """Importing asyncfl's ClientApp must not load Flower's InMemoryGrid (its linkstate and
    object store): that cost about 0.4 s in every ClientApp process."""
    code = ("import sys, asyncfl.client_app; "
            "print('flwr.superlink.grid.inmemory_grid' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
