"""Per-message overhead of a real deployment: a TLS SuperLink and 3 SuperNodes on 127.0.0.1.

    python benchmarks/deployment.py                                  # this interpreter's flwr
    python benchmarks/deployment.py --python .venv/bin/python --python /path/venv141/bin/python
    python benchmarks/run.py --only deployment

Each run starts a fresh deployment with `asyncfl.tools.deploy.Deployment` (the launcher
`python -m asyncfl.tools.deploy local` uses), runs FedBuff for `--updates` updates of tiny
compute (the `mean` task, one local step, a 0.01 s wall-clock sleep per task) with
`clock = wall`, and reads the run's events.csv. Per setting and interpreter it reports:

- s per update: (wall time of the strategy loop - the compute the clients did) / updates,
  the compute being updates x 0.01 s spread over the nodes in flight: what each update costs
  the run beyond its compute, with `concurrency` messages in flight;
- round trip - compute: the median time from sending a task to applying its reply, minus
  its 0.01 s of compute: what one message costs a client;
- first reply: from the loop's start to the first applied reply (the first ClientApp start);
- flwr run: the whole `flwr run` command (FAB upload, ServerApp process, the run, its end);
- node: the SuperNodes' log lines timestamped as they appear (medians over messages):
  received -> ClientApp up (the SuperExec's task poll, the process start, Flower's imports),
  ClientApp up -> reply sent (asyncfl's import, the task, the SuperNode's reply poll), and
  reply -> next message (the server's turnaround and the SuperNode's 3 s idle sleep).

Every (interpreter, setting) pair runs once per repetition, interleaved (A B A B), each run in
a fresh process of the interpreter given (`--python`, repeatable), so one invocation compares
Flower versions installed in different venvs. The worktree's asyncfl is put first on
PYTHONPATH for those processes and every Flower process they start.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NODES = 3
COMPUTE = 0.01  # seconds each task sleeps (delay-mean x local-steps)
RUN = {"strategy": "fedbuff", "task": "mean", "clock": "wall", "delay-dist": "constant",
       "delay-mean": COMPUTE, "local-steps": 1, "buffer-size": 1}

#: name: (Deployment keyword arguments, run-config overrides, modules every Flower process
#: imports at start). "before" loads Flower's InMemoryGrid in every process, as asyncfl's
#: ClientApp did through `asyncfl.engine.nodes` until that import was made lazy: it reproduces
#: the old per-process import cost with today's code, so before and after run side by side.
SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]] = {
    "before: Flower defaults, eager import": (
        {"task_poll_interval": None}, {"concurrency": NODES},
        ("flwr.superlink.grid.inmemory_grid",)),
    "lazy import": ({"task_poll_interval": None}, {"concurrency": NODES}, ()),
    "lazy import, task poll 0.1 s": ({"task_poll_interval": 0.1}, {"concurrency": NODES}, ()),
    "lazy import, task poll 0.1 s, 1 in flight": (
        {"task_poll_interval": 0.1}, {"concurrency": 1}, ()),
}


def preload(modules: tuple[str, ...], folder: Path) -> None:
    """Make every process started from here on import `modules` first (a sitecustomize on
    PYTHONPATH, which the Deployment's processes inherit)."""
    if not modules:
        return
    site = folder / "preload"
    site.mkdir()
    (site / "sitecustomize.py").write_text("".join(f"import {m}\n" for m in modules))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)


#: what a SuperNode logs at each step of a message (Flower 1.41-1.42)
MARKS = {"received": "Receiving: train message", "started": "Start `flwr-clientapp` process",
         "sent": "Sending: train message"}


class LogWatch(threading.Thread):
    """Timestamps the SuperNodes' log lines as they appear (Flower's log has no times): when
    each node received a message, started its ClientApp process, and sent the reply."""

    def __init__(self, folder: Path, names: list[str]) -> None:
        super().__init__(daemon=True)
        self.paths = {name: folder / f"{name}.log" for name in names}
        self.marks: dict[str, list[tuple[float, str]]] = {name: [] for name in names}
        self.stopped = threading.Event()

    def run(self) -> None:
        offsets = dict.fromkeys(self.paths, 0)
        while not self.stopped.wait(0.05):
            now = time.perf_counter()
            for name, path in self.paths.items():
                if not path.exists():
                    continue
                with path.open("rb") as f:
                    f.seek(offsets[name])
                    chunk = f.read()
                end = chunk.rfind(b"\n") + 1
                offsets[name] += end
                for line in chunk[:end].decode(errors="replace").splitlines():
                    for kind, text in MARKS.items():
                        if text in line:
                            self.marks[name].append((now, kind))

    def phases(self) -> dict[str, float]:
        """Medians over messages: received -> ClientApp started (the SuperExec's poll),
        started -> reply sent (the ClientApp process and the SuperNode's 0.5 s reply poll),
        reply sent -> next message received (the server's turnaround and the idle sleep)."""
        waits: dict[str, list[float]] = {"poll": [], "clientapp": [], "idle": []}
        for marks in self.marks.values():
            for (t0, k0), (t1, k1) in zip(marks, marks[1:], strict=False):
                pair = (k0, k1)
                key = {("received", "started"): "poll", ("started", "sent"): "clientapp",
                       ("sent", "received"): "idle"}.get(pair)
                if key:
                    waits[key].append(t1 - t0)
        return {k: statistics.median(v) if v else float("nan") for k, v in waits.items()}


def one_run(setting: str, updates: int, folder: Path) -> dict[str, Any]:
    """One deployment with `setting`, one FedBuff run; its timings (in this interpreter)."""
    import flwr

    from asyncfl.tools.deploy import Deployment

    launcher, overrides, modules = SETTINGS[setting]
    preload(modules, folder)
    in_flight = int(overrides.get("concurrency", NODES))
    with Deployment(folder / "deploy", NODES, **launcher) as deployment:
        watch = LogWatch(deployment.folder, [f"node{i}" for i in range(NODES)])
        watch.start()
        started = time.perf_counter()
        out = deployment.run({**RUN, **overrides, "num-server-rounds": updates,
                              "eval-every": updates, "run-name": "bench",
                              "output-dir": str(folder / "out")}, timeout=900)
        command = time.perf_counter() - started
        watch.stopped.set()
        watch.join()
    with (out / "events.csv").open() as f:
        events = [row for row in csv.DictReader(f) if not row["rejected"]]
    wall = max(float(r["wall_time"]) for r in events)
    begun = min(float(r["dispatch_time"]) for r in events)
    return {
        "flwr": flwr.__version__,
        "updates": len(events),
        "per_message": (wall - begun - len(events) * COMPUTE / in_flight) / len(events),
        "round_trip": statistics.median(float(r["duration"]) for r in events) - COMPUTE,
        "first_reply": min(float(r["wall_time"]) for r in events) - begun,
        "command": command,
        **{f"node_{k}": v for k, v in watch.phases().items()},
    }


def run_in(python: str, setting: str, updates: int) -> dict[str, Any]:
    """`one_run` in a fresh process of interpreter `python` (its flwr, this worktree's asyncfl)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    with tempfile.TemporaryDirectory(prefix="asyncfl-deploy-bench-") as tmp:
        worker = subprocess.Popen([python, str(Path(__file__).resolve()), "--worker", setting,
                                   "--updates", str(updates), "--folder", tmp], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = worker.communicate(timeout=1200)
        except BaseException:  # a time-out, Ctrl-C: the worker's SIGTERM handler stops the
            worker.terminate()  # deployment's processes by their PIDs before it exits
            worker.communicate(timeout=120)
            raise
        if worker.returncode != 0:
            logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                             for p in sorted(Path(tmp).glob("deploy/*.log")))
            raise RuntimeError(f"{python} {setting!r} failed:\n{stderr[-3000:]}\n{logs}")
    return json.loads(stdout.strip().splitlines()[-1])


def measure(reps: int, out: str, pythons: tuple[str, ...] = (sys.executable,),
            settings: tuple[str, ...] = tuple(SETTINGS), updates: int = 12) -> list[dict]:
    """Interleaved runs (every interpreter and setting once per repetition); medians."""
    runs: dict[tuple[str, str], list[dict]] = {(p, s): [] for p in pythons for s in settings}
    for rep in range(reps):
        for python in pythons:
            for setting in settings:
                result = run_in(python, setting, updates)
                print(f"rep {rep + 1}/{reps} flwr {result['flwr']} {setting}: "
                      f"{result['per_message']:.2f} s per update, round trip "
                      f"{result['round_trip']:.2f} s, first reply {result['first_reply']:.2f} s",
                      flush=True)
                runs[(python, setting)].append(result)
    rows = []
    for (_, setting), results in runs.items():
        def median(key: str, results: list[dict] = results) -> float:
            return round(statistics.median(r[key] for r in results), 2)

        rows.append({"flwr": results[0]["flwr"], "setting": setting,
                     "s per update (median)": median("per_message"),
                     "round trip - compute (s)": median("round_trip"),
                     "first reply (s)": median("first_reply"),
                     "flwr run (s)": median("command"),
                     "node: received -> ClientApp up (s)": median("node_poll"),
                     "node: ClientApp up -> reply sent (s)": median("node_clientapp"),
                     "node: reply -> next message (s)": median("node_idle"),
                     "runs": f"{len(results)} x {results[0]['updates']} updates"})
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "deployment.json").write_text(json.dumps(
        {key[1] + " @ " + res[0]["flwr"]: res for key, res in runs.items()}, indent=2))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append",
                        help="interpreter whose flwr to use (repeat to compare venvs)")
    parser.add_argument("--setting", action="append", choices=sorted(SETTINGS),
                        help="settings to run (default: all)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--updates", type=int, default=12)
    parser.add_argument("--out", default="outputs/benchmarks")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # the Deployment cleans up
        print(json.dumps(one_run(args.worker, args.updates, Path(args.folder))))
        return
    from asyncfl.results import markdown_table

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; {NODES} SuperNodes; median of {args.reps}", flush=True)
    rows = measure(args.reps, args.out, tuple(args.python or [sys.executable]),
                   tuple(args.setting or SETTINGS), args.updates)
    print()
    print(markdown_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
