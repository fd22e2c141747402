"""All of asyncfl's benchmarks, side by side in one run.

    python benchmarks/run.py                   # everything (about 14 minutes here)
    python benchmarks/run.py --only overhead   # overhead | engine | scale | mean | batched
                                               # | gpu | deployment
    python benchmarks/run.py --only scale-targets   # 1k to 1M clients (not in a plain run)
    python benchmarks/run.py --only peers   # FLGo and Flower's FedAvg on one workload (not in
                                            # a plain run; FLGo: pip install -e ".[peers]")
    python benchmarks/run.py --reps 5

Prints one table per benchmark (medians of --reps repetitions, ratios measured in this run,
the machine named) and writes the raw numbers to outputs/benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import batched  # noqa: E402
import deployment  # noqa: E402
import engine  # noqa: E402
import gpu  # noqa: E402
import mean_throughput  # noqa: E402
import overhead  # noqa: E402
import peers  # noqa: E402
import scale  # noqa: E402

from asyncfl.results import markdown_table  # noqa: E402

BENCHMARKS = {
    "overhead": overhead.measure,
    "engine": engine.measure,
    "scale": scale.measure,
    # the mean task end to end at 1k to 1M clients, this build only (scale.py --targets
    # --before PATH compares with another checkout); not in a plain run: about 10 minutes
    "scale-targets": lambda reps, out: scale.measure_targets(
        reps, out, {"this": str(Path(__file__).resolve().parents[1])}),
    "mean": lambda reps, out: mean_throughput.measure(reps, out),
    "batched": batched.measure,
    # cuda where there is one; else the dry run on the cpu (small sizes)
    "gpu": lambda reps, out: gpu.measure(reps, out, *(("cuda", False) if _cuda() else
                                                      ("cpu", True))),
    # a real SuperLink + 3 SuperNodes on loopback, this interpreter's flwr (about 10 minutes);
    # `python benchmarks/deployment.py --python A --python B` compares two venvs
    "deployment": deployment.measure,
    # asyncfl against FLGo (the optional extra `peers`) and Flower's FedAvg, one workload
    # interleaved (about 10 minutes); not in a plain run: it needs the extra
    "peers": peers.measure,
}
#: run only when named with --only
NOT_IN_A_PLAIN_RUN = ("scale-targets", "peers")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(BENCHMARKS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default="outputs/benchmarks")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}, torch {__import__('torch').__version__}")
    print(f"machine: {machine}; median of {args.reps}")
    raw = {"machine": machine}
    for name, measure in BENCHMARKS.items():
        if (args.only and name != args.only) or (not args.only and name in NOT_IN_A_PLAIN_RUN):
            continue
        rows = measure(args.reps, args.out)
        raw[name] = rows
        print(f"\n## {name}\n")
        print(markdown_table(rows, list(rows[0])))
    (Path(args.out) / "results.json").write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
