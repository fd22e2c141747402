"""Plain `flwr run .`, as docs/runtimes.md tells a newcomer: no environment variable, Flower's own
local SuperLink, results on disk; and the declaration that keeps its runtime env empty."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from asyncfl.tools.processes import free_port, process_stat

ROOT = Path(__file__).resolve().parents[1]
#: a hang guard for one run, not a speed requirement
RUN_GUARD_SECONDS = 1800


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;@]", requirement, maxsplit=1)[0].lower()


def test_uv_is_told_to_install_none_of_the_dependencies():
    """Flower's runtime env (`uv sync` of the app) stays empty only if every dependency, the
    optional ones included (uv locks every extra), is excluded; a new one must be added too."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {_name(r) for r in project["project"]["dependencies"]}
    for extra in project["project"]["optional-dependencies"].values():
        declared |= {_name(r) for r in extra}
    assert set(project["tool"]["uv"]["exclude-dependencies"]) == declared


def _flwr(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "flwr"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _wait_finished(run_id: str, cwd: Path, env: dict) -> dict:
    deadline = time.monotonic() + RUN_GUARD_SECONDS
    while time.monotonic() < deadline:
        listed = json.loads(_flwr(["ls", "--format", "json"], cwd, env).stdout)
        run = next(r for r in listed["runs"] if r["run-id"] == run_id)
        if run["status"].startswith("finished"):
            return run
        time.sleep(2)
    raise AssertionError(f"run {run_id} still {run['status']} after {RUN_GUARD_SECONDS} s")


@pytest.mark.slow
@pytest.mark.ray
def test_plain_flwr_run_writes_results(tmp_path):
    """`flwr run .` in a copy of the app, with FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION
    unset: it finishes completed and writes its results under the folder the local SuperLink
    started in; the SuperLink is then stopped by its PID, as docs/runtimes.md says. (A second
    run with `--run-config`, once here too, is left to the other `flwr run` tests: about 40 s
    of CI for nothing they do not show.)"""
    app = tmp_path / "app"
    shutil.copytree(ROOT, app, ignore=shutil.ignore_patterns(
        ".git", ".venv", "outputs", "__pycache__", ".pytest_cache", ".ruff_cache"))
    control_port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k != "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"}
    env.update({
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        "PYTHONPATH": str(app),  # the copy, not wherever the editable install points
        # isolation from any other local SuperLink on this machine: a Flower home and ports
        # of this test's own (a user has neither and needs neither)
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
    })
    try:
        started = _flwr(["run", "."], app, env)
        assert started.returncode == 0, started.stdout + started.stderr
        run_id = re.search(r"Successfully started run (\d+)", started.stdout).group(1)
        run = _wait_finished(run_id, app, env)
        log = _flwr(["log", run_id, "--show"], app, env).stdout
        assert run["status"] == "finished:completed", log[-3000:]
        assert "No additional application dependencies needed installation" in log
        written = re.search(r"results written to (\S+)", log).group(1)
        summary = json.loads((Path(written) / "summary.json").read_text())
        assert summary["strategy"] == "fedavg"  # the app's default
        assert Path(written).parent == app / "outputs"
    finally:
        found = subprocess.run(
            ["pgrep", "-f", f"flower-superlink.*--control-api-address 127.0.0.1:{control_port}"],
            capture_output=True, text=True)
        for pid in map(int, found.stdout.split()):
            os.kill(pid, signal.SIGTERM)
            while (stat := process_stat(pid)) is not None and stat[0] != "Z":
                time.sleep(0.2)
