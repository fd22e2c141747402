"""One GPU: clients trained together (parallel-clients = auto) against one at a time, and
asyncfl against Flower's own FedAvg in Flower's simulation engine, on one device.

    python benchmarks/gpu.py                          # torch-device = cuda (benchmarks/gpu.sh)
    python benchmarks/gpu.py --device cpu --quick     # a dry run on any machine, small sizes

Prints one Markdown table, one row per comparison: updates per wall second of ours, of the
reference, and their ratio. Rows `together`: FedBuff inline on the digits task (embedded, no
download), small-cnn and mnist-cnn, parallel-clients = auto (the P it chose in `P`) against
P = 1 on the same device, interleaved rep by rep after a warm-up, median of --reps. Rows
`engine`: `benchmarks/engine.py` on the same device (asyncfl's fedavg and fedbuff ServerApps
against Flower's FedAvg, all through `flwr run` with asyncfl's ClientApp; with cuda each
ClientApp gets 1 / nodes of the GPU), median of --engine-reps.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine  # noqa: E402

from asyncfl.results import markdown_table  # noqa: E402

#: the table's columns, in order
COLUMNS = ("benchmark", "model", "device", "ours", "P", "updates_per_s", "reference",
           "reference_updates_per_s", "ratio")
MODELS = ("small-cnn", "mnist-cnn")
#: FedBuff inline as in benchmarks/batched.py: 100 in flight, 10 local steps of 10 examples
FULL = dict(num_clients=200, concurrency=100, buffer_size=10, local_steps=10, batch_size=10,
            num_server_rounds=60)
QUICK = dict(num_clients=12, concurrency=8, buffer_size=4, local_steps=2, batch_size=10,
             num_server_rounds=3)
#: the engine rows' sizes: (nodes, rounds, local steps)
ENGINE_FULL = (engine.NODES, engine.ROUNDS, engine.STEPS)
ENGINE_QUICK = (2, 2, 2)


def together_rows(device: str, reps: int, out: str, quick: bool = False) -> list[dict]:
    """One row per model: parallel-clients = auto against 1, median updates/s of `reps`."""
    import asyncfl

    sizes = QUICK if quick else FULL
    rows = []
    for model in MODELS:
        kw = dict(strategy="fedbuff", task="digits", model=model, lr=0.05, torch_device=device,
                  eval_every=1_000_000, output_dir=out, run_name=f"gpu-{model}", **sizes)
        for parallel in (1, "auto"):  # warm-up: the task is loaded and kernels chosen once
            asyncfl.simulate(**{**kw, "num_server_rounds": 1, "parallel_clients": parallel})
        rates: dict[object, list[float]] = {1: [], "auto": []}
        used = 1
        for _ in range(reps):
            for parallel in rates:  # interleaved: load from elsewhere hits both alike
                result = asyncfl.simulate(**{**kw, "parallel_clients": parallel})
                rates[parallel].append(result.summary["updates_per_wall_second"])
                if parallel == "auto":
                    used = result.summary["parallel_clients"]
        auto, one = median(rates["auto"]), median(rates[1])
        rows.append({"benchmark": "together", "model": model, "device": device,
                     "ours": "parallel-clients = auto", "P": used, "updates_per_s": auto,
                     "reference": "parallel-clients = 1", "reference_updates_per_s": one,
                     "ratio": auto / one})
    return rows


def engine_rows(device: str, reps: int, out: str, quick: bool = False) -> list[dict]:
    """Flower's simulation engine: asyncfl's fedavg and fedbuff against Flower's FedAvg."""
    nodes, rounds, steps = ENGINE_QUICK if quick else ENGINE_FULL
    gpus = 1.0 / nodes if device == "cuda" else 0.0
    measured = engine.measure(reps, out, nodes, rounds, steps,
                              extra={"torch-device": device}, gpus_per_client=gpus)
    base = measured[0]
    return [{"benchmark": "engine", "model": "small-cnn", "device": device, "ours": row["run"],
             "P": 1, "updates_per_s": row["updates_per_s"], "reference": base["run"],
             "reference_updates_per_s": base["updates_per_s"],
             "ratio": row["updates_per_s"] / base["updates_per_s"]}
            for row in measured[1:]]


def median(values: Sequence[float]) -> float:
    """The middle value (the upper one of an even count)."""
    return sorted(values)[len(values) // 2]


def measure(reps: int, out: str, device: str = "cuda", quick: bool = False,
            engine_reps: int = 1, with_engine: bool = True) -> list[dict]:
    """Every row of the table (see the module's docstring)."""
    rows = together_rows(device, reps, out, quick)
    if with_engine:
        rows += engine_rows(device, engine_reps, out, quick)
    return rows


def main(argv: Sequence[str] | None = None) -> str:
    """Run the benchmark and print (and return) its Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="small sizes, one rep: a dry run")
    parser.add_argument("--reps", type=int, default=None,
                        help="repetitions of the together rows (default 3; --quick: 1)")
    parser.add_argument("--engine-reps", type=int, default=1)
    parser.add_argument("--no-engine", action="store_true",
                        help="leave out the simulation-engine rows")
    parser.add_argument("--out", default="outputs/benchmarks")
    args = parser.parse_args(argv)
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    import torch

    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "none"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, GPU {gpu}, Python "
          f"{platform.python_version()}, torch {torch.__version__}; median of {reps} "
          f"(engine: {args.engine_reps})", flush=True)
    rows = measure(reps, str(Path(args.out).resolve()), args.device, args.quick,
                   args.engine_reps, not args.no_engine)
    table = markdown_table(rows, COLUMNS)
    print(table, end="")
    return table


if __name__ == "__main__":
    main()
