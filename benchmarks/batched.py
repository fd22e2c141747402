"""parallel-clients: FedBuff inline with P = 1, 16, 100 clients trained together.

digits with small-cnn and mnist-cnn, 200 and 2,000 clients, 100 in flight, updates per wall
second and peak memory. Each case runs in a fresh process, its P interleaved rep by rep so that
load from elsewhere hits them alike; the peak resident memory (VmHWM) is reset before each
run. digits has 1,437 training examples, fewer than 2,000 clients need: the 2,000-client
runs use the digits images twice over (3,594 images, 20% held out), written once as a local
parquet data set and read by task = images. `measure(..., device="cuda")` runs the same on a
GPU (the table names the device)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = '''
import json, logging, sys
import asyncfl
from asyncfl.tools.inline import InlineGrid
logging.getLogger("flwr").setLevel(logging.WARNING)
kw, parallel, reps = json.loads(sys.argv[1])


class Grid(InlineGrid):
    """Keeps the Grid so the batch sizes can be read after the run."""

    last = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        Grid.last = self


def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024


for p in parallel:  # warm-up: the task is loaded and kernels chosen once
    asyncfl.simulate(**{**kw, "num_server_rounds": 2, "parallel_clients": p})
for rep in range(reps):
    for p in parallel:  # interleaved, so that load from elsewhere hits every P alike
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident memory (VmHWM)
        result = asyncfl.simulate(grid_class=Grid, **{**kw, "parallel_clients": p})
        together = Grid.last.together
        batches = together.batch_sizes if together else []
        print(json.dumps({"P": p, "updates_per_s": result.summary["updates_per_wall_second"],
                          "mean_batch": sum(batches) / len(batches) if batches else 1.0,
                          "unused": together.held if together else 0,
                          "peak_rss_mb": peak_mb()}), flush=True)
'''

#: FedBuff with 100 clients in flight, 10 local steps of 10 examples
SETTINGS = dict(strategy="fedbuff", concurrency=100, buffer_size=10, local_steps=10,
                batch_size=10, lr=0.05, eval_every=1_000_000)
PARALLEL = (1, 16, 100)
#: (model, clients, delay-dist, versions): the default exponential speeds, once equal speeds
#: (where every batch can fill up), and once a 5x longer run. A run's versions x 10 updates:
#: the tasks still in flight when it ends (100) may have been computed ahead for nothing, a
#: cost that longer runs spread thinner; mnist-cnn's runs are shorter to keep the benchmark at
#: about ten minutes
CASES = (("small-cnn", 200, "exponential", 60), ("small-cnn", 2_000, "exponential", 60),
         ("mnist-cnn", 200, "exponential", 30), ("mnist-cnn", 2_000, "exponential", 30),
         ("small-cnn", 200, "constant", 60), ("small-cnn", 200, "exponential", 300))


def digits_repeated(out: str, copies: int = 2) -> str:
    """A local parquet copy of the digits images, each `copies` times (twice: enough examples
    for 2,000 clients; 70 times: for 100,000, with 20% held out)."""
    folder = Path(out) / f"digits-x{copies}"
    if not (folder / "train.parquet").exists():
        from datasets import Dataset
        from sklearn.datasets import load_digits

        data = load_digits()
        folder.mkdir(parents=True, exist_ok=True)
        Dataset.from_dict({"image": [img.tolist() for img in data.images] * copies,
                           "label": [int(y) for y in data.target] * copies}
                          ).to_parquet(folder / "train.parquet")
    return str(folder)


def run(kw: dict, reps: int) -> dict[int, dict]:
    """The median run (by updates per second) of each P, measured in one process."""
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps([kw, PARALLEL, reps])],
                          capture_output=True, text=True, check=True)
    runs = [json.loads(line) for line in done.stdout.strip().splitlines()]
    medians = {}
    for parallel in PARALLEL:
        mine = sorted((r for r in runs if r["P"] == parallel), key=lambda r: r["updates_per_s"])
        medians[parallel] = mine[len(mine) // 2]
    return medians


def measure(reps: int, out: str, device: str = "cpu") -> list[dict]:
    """One row per case and P: the median of `reps` runs."""
    rows = []
    for model, clients, delays, versions in CASES:
        data = (dict(task="digits") if clients <= 1_437
                else dict(task="images", dataset=digits_repeated(out)))
        kw = {**SETTINGS, **data, "model": model, "num_clients": clients,
              "delay_dist": delays, "num_server_rounds": versions, "torch_device": device,
              "output_dir": out, "run_name": f"batched-{model}-{clients}-{delays}-{versions}"}
        medians = run(kw, reps)
        for parallel, mid in medians.items():
            rows.append({"model": model, "clients": clients, "speeds": delays,
                         "versions": versions, "device": device, "P": parallel,
                         "updates_per_s": mid["updates_per_s"],
                         "speed-up": mid["updates_per_s"] / medians[1]["updates_per_s"],
                         "tasks_per_batch": mid["mean_batch"],
                         "computed_unused": mid["unused"],
                         "peak_rss_mb": mid["peak_rss_mb"]})
    return rows
