"""Peers: asyncfl against FLGo and Flower's own FedAvg on one workload, interleaved.

    python benchmarks/peers.py [--reps 3] [--updates 500] [--without flgo]
    python benchmarks/run.py --only peers

One workload for all: asyncfl's small-cnn on the embedded digits task (scikit-learn's 8x8
images, asyncfl's own 80/20 split and IID partitions), 100 clients, 5 local SGD steps of batch
10 at lr 0.1, one torch thread per computation, the same number of updates (client results
aggregated into the model) for every run. Client speeds are asyncfl's exponential per-step
times (delay-dist = exponential, seed 0) in virtual time for asyncfl and FLGo; Flower's
simulation engine has no virtual clock, its clients run as fast as the engine lets them.

- asyncfl `fedbuff` (buffer 10, 100 clients in flight) and `fedavg` (all 100 clients a
  round): `asyncfl.simulate(...)`, the inline runtime, in a fresh process each
  (`scale.CHILD`, which also reads the process's peak memory).
- FLGo 0.4.x (`pip install -e ".[peers]"`) FedBuff (`buffer_ratio` 0.1: a buffer of 10, all
  100 clients in flight, eta 1) and FedAvg (proportion 1), on a task FLGo builds with its
  "direct" toolkit from the same tensors and partitions (no download), the same SmallCNN and
  initial weights, and a simulator whose per-client latency is the same per-step times on
  FLGo's integer clock (FLGO_TICK virtual seconds a unit); a fresh process each.
- Flower's FedAvg (`flwr.serverapp.strategy.FedAvg`) in Flower's simulation engine, the
  ServerApp `benchmarks/engine.py` times (`engine.baseline_app`) on asyncfl's ClientApp,
  through `run_flower` (`flwr run` on a private SuperLink, Ray, one SuperNode per client).

Runs are interleaved rep by rep (A/B/C/D/E, A/B/C/D/E, ...) so that load from elsewhere hits
them alike; each row is the median of `--reps` by updates per second. updates_per_s is the
training loop's rate (asyncfl: the strategy loop, FLGo: `runner.run()`, Flower:
`strategy.start()`); process_s is the whole fresh process (or `flwr run` command) measured from
outside, start-up, imports, data and results included. peak_rss_mb is the process's own VmHWM;
for Flower that of its biggest process (a Ray ClientApp actor; the simulation process with the
ServerApp is about as big) with the sum of the VmHWM of every process it started (SuperLink,
SuperExec, `flwr run`, the simulation, Ray's services and workers) beside it, both read from
/proc every SAMPLE_SECONDS (pages shared between processes count in each); which processes
those were: `<run-name>.processes.json` in the output folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine  # noqa: E402  (Flower's FedAvg ServerApp: engine.baseline_app)
import scale  # noqa: E402  (the asyncfl child process and its peak memory: scale.CHILD)

ROOT = Path(__file__).resolve().parents[1]

#: the workload, as asyncfl's run-config keys (with underscores, for `simulate`)
WORKLOAD = dict(task="digits", model="small-cnn", num_clients=100, partition="iid",
                local_steps=5, batch_size=10, lr=0.1, delay_dist="exponential", delay_mean=1.0,
                seed=0, client_threads=1)
BUFFER = 10
UPDATES = 500
#: virtual seconds per unit of FLGo's integer clock: a client's latency is its task's
#: duration in these units, at least one. FLGo's server does one iteration (its sampling,
#: its simulator's state update for every client) per unit whether or not a reply arrives,
#: so a finer tick costs FLGo wall time; 0.1 s against tasks of 5 s on average
FLGO_TICK = 0.1
#: the tiny workload of `--dry` (and the tests): 10 clients, 20 updates, one rep
DRY = dict(num_clients=10, buffer=2, updates=20)
#: how often the process tree of a Flower run is read for its peak memory
SAMPLE_SECONDS = 0.25

RUNS = ("asyncfl fedbuff", "flgo fedbuff", "asyncfl fedavg", "flgo fedavg", "flower fedavg")
FRAMEWORKS = ("asyncfl", "flgo", "flower")
COLUMNS = ("run", "clients", "updates", "versions", "trained", "updates_per_s",
           "asyncfl_speedup", "loop_s", "process_s", "peak_rss_mb", "all_processes_rss_mb")

FLGO_MISSING = ("FLGo is not installed: install the optional extra with "
                "`pip install -e \".[peers]\"` (flgo 0.4.x), or leave FLGo out with "
                "`python benchmarks/peers.py --without flgo`")

#: FLGo's "direct" task: its config.py, built from asyncfl's own digits task (the same split,
#: partitions, model and initial weights); `%(config)s` is the run config as JSON
FLGO_TASK_CONFIG = '''"""asyncfl's digits task for FLGo (written by benchmarks/peers.py)."""
import json

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from asyncfl.config import validate_run_config
from asyncfl.tasks import load_task

CONFIG = validate_run_config(json.loads(%(config)r))
TASK = load_task(CONFIG)
train_data = [TensorDataset(TASK.x_train[part], TASK.y_train[part]) for part in TASK.partitions]
test_data = TensorDataset(TASK.x_test, TASK.y_test)
val_data = None


def data_to_device(batch, device):
    return batch[0].to(device), batch[1].to(device)


def compute_loss(model, batch, device):
    x, y = data_to_device(batch, device)
    return {"loss": F.cross_entropy(model(x), y)}


@torch.no_grad()
def eval(model, loader, device):
    seen = correct = 0
    loss = 0.0
    for batch in loader:
        x, y = data_to_device(batch, device)
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        seen += len(y)
    return {"loss": loss / seen, "accuracy": correct / seen}


def get_model():
    """asyncfl's SmallCNN (FLGo makes one for every model it computes: the initial weights
    are loaded into the server's model once, by the benchmark)."""
    return TASK.model_factory()
'''

#: one FLGo run in a fresh process (working directory: the folder holding the task)
FLGO_CHILD = '''
import json, os, sys, time, types
import numpy as np
import flgo
from flgo.algorithm import fedavg, fedbuff
from flgo.simulator.base import BasicSimulator
from asyncfl.engine import draw_step_times
from asyncfl.tasks.classification import load_arrays

kw = json.loads(sys.argv[1])


def peak_mb():
    """This process's own peak resident memory (VmHWM), as scale.CHILD reads it."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024


class Latency(BasicSimulator):
    """Every client always available and never dropping out; a task's latency is the
    client's asyncfl per-step time x its steps, in clock units of `tick` virtual seconds."""

    def initialize(self):
        steps = draw_step_times(kw["delay_dist"], len(self.clients), kw["seed"],
                                mean=kw["delay_mean"])
        self.step_time = dict(zip(sorted(self.clients), steps))

    def update_client_responsiveness(self, client_ids):
        self.set_variable(client_ids, "latency", [
            max(1, int(round(self.step_time[c] * self.clients[c].num_steps / kw["tick"])))
            for c in client_ids])


TRAINED = [0]


def counted(base):
    """base.Client counting its local trainings (FLGo trains when it dispatches)."""
    class Client(base.Client):
        def reply(self, svr_pkg):
            TRAINED[0] += 1
            return super().reply(svr_pkg)
    return Client


class FedBuffServer(fedbuff.Server):
    """Counts the updates received; `applied`: those in aggregated versions."""
    received = applied = 0

    def package_handler(self, received_packages):
        self.received += len(received_packages["__cid"])
        updated = super().package_handler(received_packages)
        if updated:
            self.applied = self.received
        return updated


class FedAvgServer(fedavg.Server):
    applied = 0

    def aggregate(self, models, *args, **kwargs):
        self.applied += len(models)
        return super().aggregate(models, *args, **kwargs)


# the algorithm as FLGo's init reads one: a module whose Server and Client it wraps (only
# these two, so each is wrapped once)
name, base, server = {"fedbuff": ("fedbuff", fedbuff, FedBuffServer),
                      "fedavg": ("fedavg", fedavg, FedAvgServer)}[kw["algorithm"]]
algorithm = types.ModuleType(name)
algorithm.Server, algorithm.Client = server, counted(base)

started, cpu = time.perf_counter(), time.process_time()
task = kw["task_path"]
if not os.path.isdir(task):
    task = flgo.gen_direct_task_from_file(os.path.basename(task), kw["config_file"],
                                          target_path=os.path.dirname(task))
config = __import__(os.path.basename(task) + ".config", fromlist=["get_model"])
model = flgo.convert_model(config.get_model, "small_cnn")
# FedBuff: at most one version per update; the exit condition below stops it
option = {"num_rounds": kw["updates"] if name == "fedbuff" else kw["updates"] // kw["clients"],
          "proportion": 1.0, "num_steps": kw["local_steps"], "batch_size": kw["batch_size"],
          "learning_rate": kw["lr"], "train_holdout": 0.0, "test_holdout": 0.0,
          "eval_interval": -1, "log_level": "WARNING", "no_log_console": True,
          "no_tqdm": True, "torch_num_threads": 1, "seed": kw["seed"],
          "algo_para": [kw["buffer"] / kw["clients"], 1.0] if name == "fedbuff" else []}
runner = flgo.init(task, algorithm, option=option, model=model, Simulator=Latency)
load_arrays(runner.model.model, config.TASK.initial_arrays(kw["seed"]))  # asyncfl's start
if name == "fedbuff":  # stop once the aggregated versions hold the updates asked for
    runner.register_exit_condition(lambda s: s.applied >= kw["updates"])
loop = time.perf_counter()
runner.run()
loop = time.perf_counter() - loop
print(json.dumps({"updates": runner.applied, "versions": runner.current_round - 1,
                  "trained": TRAINED[0], "updates_per_s": runner.applied / loop,
                  "loop_seconds": loop, "seconds": time.perf_counter() - started,
                  "cpu_seconds": time.process_time() - cpu,
                  "clock_units": runner.gv.clock.current_time, "peak_rss_mb": peak_mb()}))
'''


def child_env() -> dict:
    """This checkout's asyncfl first for the children, as scale.target_run does."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def flgo_installed() -> bool:
    return importlib.util.find_spec("flgo") is not None


def run_child(code: str, kw: dict, cwd: Path = ROOT) -> dict:
    """`code` in a fresh interpreter with `kw` as JSON; its last line of output as JSON, with
    the process's wall time from outside (process_s). In this checkout's folder by default:
    `python -c` puts the working directory ahead of PYTHONPATH."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, json.dumps(kw)], capture_output=True,
                          text=True, env=child_env(), cwd=cwd)
    if done.returncode:
        raise RuntimeError(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def run_asyncfl(strategy: str, sizes: dict, out: Path, name: str) -> dict:
    kw = {**WORKLOAD, "num_clients": sizes["clients"], "strategy": strategy,
          "eval_every": 1_000_000, "output_dir": str(out), "run_name": name}
    if strategy == "fedbuff":
        kw.update(buffer_size=sizes["buffer"], concurrency=sizes["clients"],
                  num_server_rounds=sizes["updates"] // sizes["buffer"])
    else:
        kw.update(num_server_rounds=sizes["updates"] // sizes["clients"])
    shutil.rmtree(out / name, ignore_errors=True)  # else the run would write to name-2
    r = run_child(scale.CHILD, kw)
    summary = json.loads((out / name / "summary.json").read_text())
    shutil.rmtree(out / name, ignore_errors=True)
    return {"updates": summary["updates"], "versions": summary["final_version"],
            "trained": summary["replies_received"], "updates_per_s": r["updates_per_s"],
            "loop_s": r["loop_seconds"], "process_s": r["process_s"],
            "peak_rss_mb": r["peak_rss_mb"]}


def flgo_task(sizes: dict, out: Path) -> tuple[Path, Path]:
    """The folder FLGo's task goes to (made by the first FLGo child) and its config file."""
    folder = out / f"flgo-{sizes['clients']}"
    folder.mkdir(parents=True, exist_ok=True)
    config = {key.replace("_", "-"): value for key, value in WORKLOAD.items()
              if key in ("task", "model", "partition", "seed")}
    config["num-clients"] = sizes["clients"]
    config_file, task = folder / "digits_config.py", folder / "peers_digits"
    config_file.write_text(FLGO_TASK_CONFIG % {"config": json.dumps(config)})
    if (task / "config.py").exists() and (task / "config.py").read_text() != \
            config_file.read_text():
        shutil.rmtree(task)  # made for another workload: the next FLGo child makes it anew
    return task, config_file


def run_flgo(algorithm: str, sizes: dict, out: Path) -> dict:
    task, config_file = flgo_task(sizes, out)
    kw = {**WORKLOAD, "algorithm": algorithm, "clients": sizes["clients"],
          "buffer": sizes["buffer"], "updates": sizes["updates"], "tick": FLGO_TICK,
          "task_path": str(task), "config_file": str(config_file)}
    r = run_child(FLGO_CHILD, kw, cwd=task.parent)
    return {"updates": r["updates"], "versions": r["versions"], "trained": r["trained"],
            "updates_per_s": r["updates_per_s"], "loop_s": r["loop_seconds"],
            "process_s": r["process_s"], "peak_rss_mb": r["peak_rss_mb"]}


class TreePeaks:
    """The peak resident memory (VmHWM) of every process descended from this one, read from
    /proc every `every` seconds while the block runs (a process that ends between two reads
    keeps its last value)."""

    def __init__(self, every: float = SAMPLE_SECONDS) -> None:
        self.every, self.peaks, self.names = every, {}, {}
        self._stop = threading.Event()

    def _descendants(self) -> list[int]:
        from asyncfl.tools.processes import live_processes

        children: dict[int, list[int]] = {}
        for pid, (_, parent, _) in live_processes().items():
            children.setdefault(parent, []).append(pid)
        found, todo = [], [os.getpid()]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    def sample(self) -> None:
        for pid in self._descendants():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                if pid not in self.names:
                    self.names[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(
                        b"\0", b" ").decode(errors="replace")[:200]
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.peaks[pid] = max(self.peaks.get(pid, 0), int(line.split()[1]) / 1024)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self) -> TreePeaks:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def biggest(self) -> tuple[float, str]:
        pid = max(self.peaks, key=self.peaks.get)
        return self.peaks[pid], self.names.get(pid, "")

    def listing(self) -> list[tuple[float, str]]:
        """(peak MB, command line) of every process seen, the biggest first."""
        return sorted(((mb, self.names.get(pid, "")[:120]) for pid, mb in self.peaks.items()),
                      reverse=True)

    def total(self) -> float:
        return sum(self.peaks.values())


def run_flower_fedavg(sizes: dict, out: Path, name: str, app: Path) -> dict:
    from asyncfl.tools.flower_launcher import run_flower

    rounds = sizes["updates"] // sizes["clients"]
    settings = {key.replace("_", "-"): value for key, value in WORKLOAD.items()}
    settings.update({"num-clients": sizes["clients"], "num-server-rounds": rounds,
                     "eval-every": rounds, "output-dir": str(out), "run-name": name})
    started = time.perf_counter()
    with TreePeaks() as tree:
        folder = run_flower(settings, app)
    process_s = time.perf_counter() - started
    summary = json.loads((folder / "summary.json").read_text())
    shutil.rmtree(folder, ignore_errors=True)
    # which processes those were: the row keeps the biggest and the sum
    (out / f"{name}.processes.json").write_text(json.dumps(tree.listing(), indent=1))
    return {"updates": summary["updates"], "versions": rounds, "trained": summary["updates"],
            "updates_per_s": summary["updates_per_wall_second"], "loop_s": summary["wall_time"],
            "process_s": process_s, "peak_rss_mb": tree.biggest()[0],
            "all_processes_rss_mb": tree.total()}


def measure(reps: int, out: str, without: tuple[str, ...] = (), dry: bool = False
            ) -> list[dict]:
    """One row per run in RUNS (those of frameworks not in `without`): the median of `reps`
    fresh runs by updates per second, the runs interleaved rep by rep."""
    if "flgo" not in without and not flgo_installed():
        raise RuntimeError(FLGO_MISSING)
    sizes = ({"clients": DRY["num_clients"], "buffer": DRY["buffer"], "updates": DRY["updates"]}
             if dry else {"clients": WORKLOAD["num_clients"], "buffer": BUFFER,
                          "updates": UPDATES})
    folder = Path(out).resolve() / "peers"
    folder.mkdir(parents=True, exist_ok=True)
    runs = [run for run in RUNS if run.split()[0] not in without]
    results: dict[str, list[dict]] = {run: [] for run in runs}
    with tempfile.TemporaryDirectory() as tmp:
        app = engine.baseline_app(Path(tmp)) if "flower fedavg" in runs else None
        for rep in range(reps):
            for run in runs:
                framework, algorithm = run.split()
                name = f"peers-{framework}-{algorithm}-{rep}"
                if framework == "asyncfl":
                    r = run_asyncfl(algorithm, sizes, folder, name)
                elif framework == "flgo":
                    r = run_flgo(algorithm, sizes, folder)
                else:
                    r = run_flower_fedavg(sizes, folder, name, app)
                print(f"peers: rep {rep + 1}/{reps} {run}: {r['updates_per_s']:.1f} updates/s,"
                      f" {r['process_s']:.1f} s, {r['peak_rss_mb']:.0f} MB", flush=True)
                results[run].append(r)
    rows = []
    for run in runs:
        mid = sorted(results[run], key=lambda r: r["updates_per_s"])[len(results[run]) // 2]
        row = {"run": run, "clients": sizes["clients"], **mid}
        rows.append({**{c: row.get(c) for c in COLUMNS},
                     "all_rates": [round(r["updates_per_s"], 2) for r in results[run]]})
    by_run = {row["run"]: row for row in rows}
    for row in rows:
        ours = by_run.get(f"asyncfl {row['run'].split()[1]}")
        row["asyncfl_speedup"] = (ours["updates_per_s"] / row["updates_per_s"]
                                  if ours else None)
    return rows


def load_average() -> str:
    """The 1, 5 and 15-minute load averages now (other jobs slow every run alike)."""
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default="outputs/benchmarks")
    parser.add_argument("--without", default="", help="comma-separated frameworks to leave "
                        f"out, of {', '.join(FRAMEWORKS)}")
    parser.add_argument("--dry", action="store_true", help=f"a tiny workload ({DRY}), once")
    args = parser.parse_args(argv)
    from asyncfl.results import markdown_table

    without = tuple(x for x in args.without.split(",") if x)
    unknown = set(without) - set(FRAMEWORKS)
    if unknown:
        parser.error(f"--without: unknown {sorted(unknown)}; choose from {FRAMEWORKS}")
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}, torch {__import__('torch').__version__}")
    load = load_average()
    rows = measure(1 if args.dry else args.reps, args.out, without, args.dry)
    machine += f"; load average {load} at the start, {load_average()} at the end"
    text = (f"machine: {machine}; median of {1 if args.dry else args.reps}\n\n"
            + markdown_table(rows, COLUMNS))
    print(text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "peers.json").write_text(json.dumps(
        {"machine": machine, "rows": rows}, indent=2))
    return text


if __name__ == "__main__":
    main()
