"""The same run in Flower's simulation engine (Ray, via `flwr run`) and inline."""

import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

import asyncfl
from asyncfl.runtime.flower_run import (
    group_members,
    local_superlink,
    process_stat,
    stop_process_group,
)
from tests.helpers import read_rows

ROOT = Path(__file__).resolve().parents[1]


def test_flwr_run_is_bit_identical_to_inline(tmp_path):
    overrides = ("strategy='fedavg' task='digits' num-clients=4 num-server-rounds=3 "
                 "clock='virtual' delay-dist='exponential' run-name='engine' "
                 f"output-dir='{tmp_path}'")
    done = subprocess.run(
        [sys.executable, "-m", "asyncfl.runtime.flower_run", "--app", str(ROOT),
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

