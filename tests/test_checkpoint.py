"""Checkpoints: stop and resume gives the uninterrupted run, bit for bit; bad files refused."""

import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import asyncfl
from asyncfl.engine import checkpoint
from asyncfl.engine.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from asyncfl.strategies import STRATEGIES
from tests.helpers import Crash, crashing_grid, read_rows


def assert_same_run(a, b):
    x, y = a.final_arrays(), b.final_arrays()
    assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    for name in ("events.csv", "evals.csv"):
        assert (read_rows(a.output_dir / name, ("wall_time",))
                == read_rows(b.output_dir / name, ("wall_time",)))


@pytest.mark.parametrize(("strategy", "extra"), [
    ("fedavg", dict(num_server_rounds=6, fraction=0.5)),
    ("fedbuff", dict(num_server_rounds=16, concurrency=4, buffer_size=2)),
    ("apsb", dict(num_server_rounds=16, concurrency=4)),
    ("ca2fl", dict(num_server_rounds=16, concurrency=4, buffer_size=2)),
    ("fedstaleweight", dict(num_server_rounds=16, concurrency=4, buffer_size=2)),
    ("fadas", dict(num_server_rounds=16, concurrency=4, buffer_size=2, fadas_threshold=0)),
    # clients that come and go: offline clients waiting at the crash, lost tasks in flight
    ("fedbuff", dict(num_server_rounds=16, concurrency=4, buffer_size=2,
                     availability="exponential", availability_on=8.0, availability_off=4.0)),
    ("mifa", dict(num_server_rounds=6, fraction=0.5, availability="exponential",
                  availability_on=8.0, availability_off=4.0)),
    ("fedbuff", dict(num_server_rounds=16, concurrency=4, buffer_size=2, work_window=2.0,
                     staleness_cutoff=3)),
    # arrival groups open and waiting for their members, late updates buffered
    ("fedcompass", dict(num_server_rounds=40, availability="exponential",
                        availability_on=8.0, availability_off=4.0)),
])
def test_stopped_and_resumed_equals_uninterrupted(out, strategy, extra):
    kw = dict(strategy=strategy, num_clients=8, local_steps=3, batch_size=8,
              delay_dist="exponential", delay_jitter=0.2, checkpoint_every=3, **extra, **out)
    full = asyncfl.simulate(run_name="full", **kw)
    with pytest.raises(Crash):
        asyncfl.simulate(grid_class=crashing_grid(15), run_name="cut", **kw)
    assert (full.output_dir.parent / "cut" / "checkpoint.bin").exists()
    resumed = asyncfl.simulate(run_name="cut", resume=True, **kw)
    assert_same_run(full, resumed)


@pytest.mark.slow  # a separate Python process, killed mid-run
def test_a_killed_process_resumes_from_its_last_checkpoint(tmp_path):
    kw = dict(strategy="fedbuff", num_clients=10, num_server_rounds=300, concurrency=5,
              buffer_size=2, local_steps=2, batch_size=8, checkpoint_every=20,
              output_dir=str(tmp_path))
    code = ("import json, sys, asyncfl\n"
            "asyncfl.simulate(**json.loads(sys.argv[1]))\n")
    child = subprocess.Popen([sys.executable, "-c", code, json.dumps({**kw,
                                                                       "run_name": "killed"})],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "checkpoint.bin"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert child.poll() is None, "the run ended before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    assert not (tmp_path / "killed" / "summary.json").exists()
    resumed = asyncfl.simulate(run_name="killed", resume=True, **kw)
    full = asyncfl.simulate(run_name="full", **kw)
    assert_same_run(full, resumed)


def test_corrupt_foreign_or_mismatched_checkpoints_are_refused(out):
    kw = dict(strategy="fedbuff", num_clients=4, num_server_rounds=6, buffer_size=2,
              local_steps=1, checkpoint_every=2, **out)
    result = asyncfl.simulate(run_name="ck", **kw)
    path = result.output_dir / "checkpoint.bin"
    original = path.read_bytes()
    with pytest.raises(CheckpointError, match="other settings: lr"):
        asyncfl.simulate(run_name="ck", resume=True, **{**kw, "lr": 0.01})
    path.write_bytes(original[:-10] + bytes(10))
    with pytest.raises(CheckpointError, match="corrupt"):
        asyncfl.simulate(run_name="ck", resume=True, **kw)
    header, _, body = original.partition(b"\n")
    version = f'"version": {FORMAT_VERSION}'.encode()
    path.write_bytes(header.replace(version, b'"version": 99') + b"\n" + body)
    with pytest.raises(CheckpointError, match="format 99"):
        asyncfl.simulate(run_name="ck", resume=True, **kw)
    path.write_bytes(b"not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not an asyncfl checkpoint"):
        asyncfl.simulate(run_name="ck", resume=True, **kw)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        asyncfl.simulate(run_name="never-ran", resume=True, **kw)


def test_apsb_carrying_worker_state_through_the_server_is_the_same_algorithm(out):
    """Checkpointed APSB runs keep the workers' mid-task state on the server, not in
    context.state: same parameters and events either way (far-off checkpoints: none written)."""
    kw = dict(strategy="apsb", num_clients=4, local_steps=4, batch_size=8, concurrency=4,
              num_server_rounds=12, delay_dist="exponential", delay_jitter=0.2, **out)
    in_nodes = asyncfl.simulate(run_name="state-in-nodes", **kw)
    on_server = asyncfl.simulate(run_name="state-on-server", checkpoint_every=1000, **kw)
    assert not (on_server.output_dir / "checkpoint.bin").exists()
    assert_same_run(in_nodes, on_server)
    # the runs did cut tasks into segments (workers adopted broadcasts mid-task)
    assert in_nodes.summary["messages_sent"] > in_nodes.summary["updates"] + 4


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategys_checkpoint_decodes_to_what_was_saved(out, strategy):
    """Saving the decoded payload again writes the same bytes: nothing is lost or changed
    by the JSON + npz encoding, for every strategy's state."""
    task = dict(task="mean") if strategy == "running-mean" else dict(local_steps=2)
    result = asyncfl.simulate(strategy=strategy, num_clients=4, num_server_rounds=4,
                              checkpoint_every=2, concurrency=3, **task, **out)
    path = result.output_dir / "checkpoint.bin"
    again = path.with_name("again.bin")
    save_checkpoint(again, load_checkpoint(path))
    assert again.read_bytes() == path.read_bytes()


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _write_body(path, state: bytes, arrays: bytes = b"", version=FORMAT_VERSION):
    body = state + (arrays or _npz())
    header = {"format": FORMAT, "version": version, "state_length": len(state),
              "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    path.write_bytes(json.dumps(header).encode() + b"\n" + body)


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # what a crafted pickle does when it is loaded
        return (open, (self.path, "w"))


def test_a_crafted_checkpoint_cannot_run_code(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "checkpoint.bin"
    # an old-format (pickle) checkpoint with a valid header and checksum: refused, not loaded
    _write_body(path, pickle.dumps({"x": _Marker(str(marker))}), version=1)
    with pytest.raises(CheckpointError, match="format 1"):
        load_checkpoint(path)
    # the current format naming a type it does not know, or a pickled array: refused
    for state, arrays in [
        (json.dumps({"x": {"__t__": "object", "class": "os.system", "fields": {}}}), b""),
        (json.dumps({"x": {"__t__": "posix.system", "items": []}}), b""),
    ]:
        _write_body(path, state.encode(), arrays)
        with pytest.raises(CheckpointError, match="unknown type"):
            load_checkpoint(path)
    _write_body(path, json.dumps({"x": {"__t__": "ndarray", "ref": "a0"}}).encode(),
                _npz(a0=np.array([_Marker(str(marker))], dtype=object)))
    with pytest.raises(CheckpointError, match="does not decode"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_killed_writers_temp_files_are_removed_when_the_next_run_starts(out):
    kw = dict(strategy="fedbuff", num_clients=4, num_server_rounds=6, buffer_size=2,
              local_steps=1, checkpoint_every=2, **out)
    first = asyncfl.simulate(run_name="ck", **kw)
    stale = first.output_dir / f"{checkpoint.TEMP_PREFIX}left-by-a-kill"
    stale.write_bytes(b"half a checkpoint")
    asyncfl.simulate(run_name="ck", resume=True, **kw)
    assert not stale.exists()


def test_a_counter_comes_back_as_the_same_counts(tmp_path):
    """A run's skip counts (a Counter) survive a checkpoint: a resumed run with skips before
    its checkpoint used to get the (reason, count) pairs back as keys, and its summary.json
    could not be written."""
    from collections import Counter

    path = tmp_path / "c.bin"
    counts = Counter({"unavailable": 3, "stale": 1})
    save_checkpoint(path, {"failures": counts, "by_client": {2: 5}})
    loaded = load_checkpoint(path)
    assert loaded["failures"] == counts and type(loaded["failures"]) is Counter
    assert loaded["by_client"] == {2: 5}
