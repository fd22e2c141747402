"""Flower's simulation engine: asyncfl's FedAvg and FedBuff vs Flower's own FedAvg.

All three run through `flwr run` on the same private SuperLink setup with the same number of
simulated nodes and asyncfl's ClientApp (which follows Flower's FedAvg reply contract); the
baseline is a ServerApp whose only job is `flwr.serverapp.strategy.FedAvg(...).start(...)`,
written with a copy of this project's pyproject into a temporary app folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from asyncfl.tools.flower_launcher import run_flower

ROOT = Path(__file__).resolve().parents[1]
NODES, ROUNDS, STEPS = 4, 5, 10

BASELINE_SERVER = '''
"""Flower's own FedAvg on asyncfl's ClientApp, timed around strategy.start()."""
import json, time
from pathlib import Path
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from asyncfl.config import validate_run_config
from asyncfl.protocol import arrays_to_record
from asyncfl.tasks import load_task

app = ServerApp()

@app.main()
def main(grid: Grid, context: Context) -> None:
    config = validate_run_config(context.run_config)
    task = load_task(config)
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0)
    started = time.monotonic()
    strategy.start(grid, arrays_to_record(task.initial_arrays(config["seed"])),
                   num_rounds=config["num-server-rounds"],
                   train_config=ConfigRecord({"lr": config["lr"],
                                              "local-steps": config["local-steps"],
                                              "batch-size": config["batch-size"]}))
    wall = time.monotonic() - started
    out = Path(config["output-dir"]) / config["run-name"]
    out.mkdir(parents=True, exist_ok=True)
    updates = config["num-server-rounds"] * config["num-clients"]
    # what run_flower looks for: the launch-id in config.json, a finished summary.json
    (out / "config.json").write_text(json.dumps({"launch-id": config["launch-id"]}))
    (out / "summary.json").write_text(json.dumps(
        {"status": "finished", "updates": updates, "wall_time": wall,
         "updates_per_wall_second": updates / wall}))
'''


def baseline_app(folder: Path) -> Path:
    """An app folder: this project's pyproject with the baseline ServerApp."""
    pyproject = (ROOT / "pyproject.toml").read_text().replace(
        'serverapp = "asyncfl.server_app:app"', 'serverapp = "baseline_server:app"')
    (folder / "pyproject.toml").write_text(pyproject)
    (folder / "README.md").write_text("Flower FedAvg baseline for asyncfl's benchmarks\n")
    (folder / "baseline_server.py").write_text(BASELINE_SERVER)
    return folder


def measure(reps: int, out: str, nodes: int = NODES, rounds: int = ROUNDS, steps: int = STEPS,
            extra: dict | None = None, gpus_per_client: float = 0.0) -> list[dict]:
    """One row per ServerApp (Flower's FedAvg first): the median of `reps` runs. `extra`:
    more run-config settings for all three (e.g. torch-device); `gpus_per_client`: the
    share of a GPU Ray gives each ClientApp."""
    settings = {"num-clients": nodes, "num-server-rounds": rounds, "local-steps": steps,
                "batch-size": 16, "eval-every": rounds, "output-dir": str(Path(out).resolve()),
                **(extra or {})}
    runs = {
        "flower FedAvg": ({}, "baseline"),
        "asyncfl fedavg": ({"strategy": "fedavg"}, "project"),
        "asyncfl fedbuff": ({"strategy": "fedbuff", "buffer-size": nodes,
                             "concurrency": nodes, "num-server-rounds": rounds}, "project"),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        apps = {"baseline": baseline_app(Path(tmp)), "project": ROOT}
        for name, (own, app) in runs.items():
            rates, totals = [], []
            for rep in range(reps):
                started = time.perf_counter()
                folder = run_flower({**settings, **own,
                                     "run-name": f"engine-{name.replace(' ', '-')}-{rep}"},
                                    apps[app], gpus_per_client=gpus_per_client)
                totals.append(time.perf_counter() - started)
                rates.append(json.loads((folder / "summary.json").read_text())
                             ["updates_per_wall_second"])
                shutil.rmtree(folder, ignore_errors=True)
            rows.append({"run": name, "nodes": nodes, "updates": nodes * rounds,
                         "updates_per_s": sorted(rates)[reps // 2],
                         "command_s": sorted(totals)[reps // 2]})
    base = rows[0]["updates_per_s"]
    for row in rows:
        row["ratio_vs_flower"] = row["updates_per_s"] / base
    return rows
