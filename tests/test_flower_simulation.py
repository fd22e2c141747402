"""The same run in Flower's simulation engine (Ray, via `flwr run`) and inline."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import asyncfl
from asyncfl.results import find_launched_run
from asyncfl.tools.processes import (
    descendant_groups,
    group_members,
    live_processes,
    process_stat,
    stop_process_group,
)
from asyncfl.tools.superlink import CONNECTION, flower_executable, local_superlink
from tests.helpers import read_rows

pytestmark = [pytest.mark.slow, pytest.mark.ray]  # Flower's SuperLink and simulation engine

ROOT = Path(__file__).resolve().parents[1]


def test_flwr_run_is_bit_identical_to_inline(tmp_path):
    overrides = ("strategy='fedavg' task='digits' num-clients=4 num-server-rounds=3 "
                 "clock='virtual' delay-dist='exponential' run-name='engine' "
                 f"output-dir='{tmp_path}'")
    done = subprocess.run(
        [sys.executable, "-m", "asyncfl.tools.flower_launcher", "--app", str(ROOT),
         "--run-config", overrides],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    engine = tmp_path / "engine"
    inline = asyncfl.simulate(strategy="fedavg", task="digits", num_clients=4,
                              num_server_rounds=3, clock="virtual", delay_dist="exponential",
                              run_name="inline", output_dir=str(tmp_path))
    with np.load(engine / "final_model.npz") as data:
        engine_arrays = {k: data[k] for k in data.files}
    inline_arrays = inline.final_arrays()
    assert engine_arrays.keys() == inline_arrays.keys()
    assert all(np.array_equal(engine_arrays[k], inline_arrays[k]) for k in inline_arrays)
    drop = ("wall_time",)
    engine_events = read_rows(engine / "events.csv", drop)
    assert len(engine_events) == 12
    assert engine_events == read_rows(inline.output_dir / "events.csv", drop)


def test_local_superlink_is_stopped_by_pid_with_its_children():
    with local_superlink(ROOT) as (process, env):
        config = (Path(env["FLWR_HOME"]) / "config.toml").read_text()
        address = config.split('address = "')[1].split('"')[0]
        assert address.startswith("127.0.0.1:")
        assert httpx.get(f"http://{address}/health", timeout=2).is_success
        home = Path(env["FLWR_HOME"])
    assert process.poll() is not None
    assert not group_members(process.pid), "a process of the SuperLink's group outlived it"
    assert not home.exists()


def zombie_children(pid: int) -> list[int]:
    stats = {int(p.name): process_stat(int(p.name)) for p in Path("/proc").glob("[0-9]*")}
    return [child for child, stat in stats.items() if stat and stat[:2] == ("Z", pid)]


def test_a_zombie_does_not_count_as_a_live_member_of_a_stopped_group():
    # the shell's background child exits at once and is never reaped by `sleep`, its new parent
    process = subprocess.Popen(["sh", "-c", "sleep 0 & exec sleep 30"], start_new_session=True)
    deadline = time.monotonic() + 10
    while not (zombies := zombie_children(process.pid)):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert zombies, "the test could not make a zombie"
    assert group_members(process.pid) == [process.pid]
    stop_process_group(process)
    assert process.poll() is not None
    assert group_members(process.pid) == []



def flwr_run(env: dict, run_config: str) -> subprocess.CompletedProcess:
    """`flwr run` on the private SuperLink with Flower's default federation (2 SuperNodes),
    as a plain `flwr run .` gets it."""
    return subprocess.run(
        [flower_executable("flwr"), "run", str(ROOT), CONNECTION, "--stream", "--run-config",
         run_config], env=env, capture_output=True, text=True, timeout=300)


def test_flwr_run_with_the_default_federation(tmp_path):
    run = ("strategy='running-mean' task='mean' num-server-rounds=6 "
           f"output-dir='{tmp_path}' run-name='default' launch-id='{'a' * 32}'")
    with local_superlink(ROOT) as (_, env):
        done = flwr_run(env, run)  # num-clients = 0: every node
        out = find_launched_run({"output-dir": str(tmp_path), "run-name": "default",
                                 "launch-id": "a" * 32})
        assert out is not None, done.stdout[-3000:] + done.stderr[-3000:]
        assert json.loads((out / "config.json").read_text())["num-clients"] == 2
        assert len(read_rows(out / "clients.csv")) == 2
        too_many = flwr_run(env, run.replace("num-server-rounds=6", "num-clients=5"))
    shown = too_many.stdout + too_many.stderr
    assert "num-clients = 5 but the simulated federation has 2 SuperNodes" in shown, shown[-3000:]
    assert '--federation-config "num-supernodes=5"' in shown
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default", "default-2"]
    assert not (tmp_path / "default-2" / "summary.json").exists()


def descendants(pid: int) -> list[int]:
    """Live descendants of `pid`."""
    processes = live_processes()
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child, (state, ppid, _) in processes.items():
            if ppid == parent and state not in ("Z", "X"):
                found.append(child)
                todo.append(child)
    return found


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def processes_with_home(home: Path) -> list[int]:
    """Live processes whose environment names `home` as FLWR_HOME (all the wrapper starts)."""
    needle = f"FLWR_HOME={home}\0".encode()
    found = []
    for pid, (state, _, _) in live_processes().items():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ + b"\0" and state not in ("Z", "X"):
            found.append(pid)
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_wrapper_stops_everything_it_started(tmp_path, sig):
    run = (f"strategy='running-mean' task='mean' num-clients=2 num-server-rounds=1000000 "
           f"output-dir='{tmp_path / 'out'}'")
    with (tmp_path / "wrapper.log").open("w") as log:
        wrapper = subprocess.Popen(
            [sys.executable, "-m", "asyncfl.tools.flower_launcher", "--app", str(ROOT),
             "--run-config", run], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        # wait (generously) until the SuperLink runs the simulation
        deadline = time.monotonic() + 240
        while not any("flwr-simulation" in " ".join(command_line(p))
                      for p in descendants(wrapper.pid)):
            assert wrapper.poll() is None, (tmp_path / "wrapper.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the simulation did not start in 240 s"
            time.sleep(0.5)
        superlink = next(p for p in descendants(wrapper.pid)
                         if "flower-superlink" in " ".join(command_line(p)))
        arguments = command_line(superlink)
        home = Path(arguments[arguments.index("--log-file") + 1]).parent
        groups = descendant_groups(wrapper.pid)
        assert superlink in groups and len(groups) >= 4  # wrapper, SuperLink, flwr, SuperExec
        assert processes_with_home(home)
        os.kill(wrapper.pid, sig)
        code = wrapper.wait(timeout=120)
    finally:
        if wrapper.poll() is None:
            stop_process_group(wrapper)
    assert code == 128 + sig, (tmp_path / "wrapper.log").read_text()[-3000:]
    assert f"stopped by {sig.name}" in (tmp_path / "wrapper.log").read_text()
    assert {g: group_members(g) for g in groups} == {g: [] for g in groups}
    assert processes_with_home(home) == []
    assert not home.exists()
