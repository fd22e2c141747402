"""Scale: inline virtual-time runs with 100 to 10,000 clients, updates/s and peak memory;
`--targets`: the mean task end to end at 1,000 to 1,000,000 clients, this build against
another (`--before PATH`, a checkout of main), interleaved run by run; `--images`: FedBuff
with small-cnn on the digits images as a local parquet data set (repeated to give every
client an example) at 1,000 and 100,000 clients, the same way.

    python benchmarks/scale.py --targets --before /path/to/main [--reps 3]
    python benchmarks/scale.py --images [--sizes 1000,100000] [--updates 2000]

Each run is a fresh process so its peak resident memory is its own."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = '''
import json, logging, sys, time
import asyncfl
logging.getLogger("flwr").setLevel(logging.WARNING)
kw = json.loads(sys.argv[1])


def peak_mb():
    """This process's own peak resident memory (VmHWM; getrusage would include the
    parent's, which the child inherits at fork)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

started, cpu = time.perf_counter(), time.process_time()
result = asyncfl.simulate(**kw)
seconds = time.perf_counter() - started
phases = result.summary.get("server_phases", {})
print(json.dumps({"updates_per_s": result.summary["updates_per_wall_second"],
                  "seconds": seconds, "cpu_seconds": time.process_time() - cpu,
                  "loop_seconds": result.summary["wall_time"],
                  "results_seconds": phases.get("results", 0.0),
                  "peak_rss_mb": peak_mb()}))
'''

RUNS = {
    "mean": dict(task="mean", strategy="running-mean", num_server_rounds=10_000, local_steps=1),
    "synthetic": dict(task="synthetic", strategy="fedbuff", buffer_size=10, concurrency=100,
                      num_server_rounds=200, local_steps=1, batch_size=10, lr=0.05),
}


def measure(reps: int, out: str, sizes=(100, 1_000, 10_000)) -> list[dict]:
    rows = []
    for task, settings in RUNS.items():
        for n in sizes:
            results = []
            for rep in range(reps):
                kw = {**settings, "num_clients": n, "eval_every": 1_000_000,
                      "concurrency": min(n, settings.get("concurrency", n)),
                      "output_dir": out, "run_name": f"scale-{task}-{n}-{rep}"}
                done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(kw)],
                                      capture_output=True, text=True, check=True)
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            mid = sorted(results, key=lambda r: r["updates_per_s"])[reps // 2]
            rows.append({"task": task, "clients": n, **mid,
                         "us_per_update": 1e6 / mid["updates_per_s"]})
    return rows


#: the issue's target run: the mean task, FedAsync-style running mean, 1,000 clients in flight
TARGET_RUN = dict(task="mean", strategy="running-mean", local_steps=1, concurrency=1_000,
                  eval_every=1_000_000)


#: the images target: FedBuff (buffer 10, 100 in flight) with small-cnn, one step of 10
#: examples per task, lognormal speeds; its versions are the updates / 10
IMAGES_RUN = dict(task="images", model="small-cnn", strategy="fedbuff", buffer_size=10,
                  concurrency=100, local_steps=1, batch_size=10, lr=0.05,
                  eval_every=1_000_000)


def images_run(out: str, sizes: tuple[int, ...]) -> dict:
    """IMAGES_RUN on digits repeated to give the largest size an example each (80% train)."""
    from batched import digits_repeated

    copies = -(-max(sizes) * 5 // (4 * 1_797)) + 1
    return {**IMAGES_RUN, "dataset": str(Path(digits_repeated(out, copies)).resolve())}


def target_run(n: int, updates: int, out: str, build: str, name: str,
               run: dict | None = None) -> dict:
    """One end-to-end `simulate` of the target run (`run`, else TARGET_RUN) in a fresh
    process on `build` (the folder put first on PYTHONPATH); setup = the call's time before
    the strategy loop and after it the results folder, i.e. everything but those two."""
    run = run or TARGET_RUN
    per_version = run.get("buffer_size", 1)
    kw = {**run, "num_clients": n, "num_server_rounds": updates // per_version,
          "concurrency": min(n, run["concurrency"]),
          "output_dir": str(Path(out).resolve()),
          "run_name": name}
    env = {**os.environ, "PYTHONPATH": build}
    # in the build's folder: `python -c` puts the working directory ahead of PYTHONPATH
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(kw)], capture_output=True,
                          text=True, env=env, cwd=build)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1][:120]}
    r = json.loads(done.stdout.strip().splitlines()[-1])
    r["setup_seconds"] = r["seconds"] - r["loop_seconds"] - r["results_seconds"]
    return r


def measure_targets(reps: int, out: str, builds: dict[str, str],
                    sizes=(1_000, 100_000, 1_000_000), updates: int = 20_000,
                    run: dict | None = None) -> list[dict]:
    """Per build and size, the median of `reps` fresh runs, interleaved (rep by rep, size by
    size, build by build) so that a loaded machine slows all alike; cost per update relative
    to the same build's 1,000-client row."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for rep in range(reps):
        for n in sizes:
            for build, path in builds.items():
                runs.setdefault((build, n), []).append(
                    target_run(n, updates, out, path, f"targets-{build}-{n}-{rep}", run))
    rows = []
    for build in builds:
        base = None
        for n in sizes:
            ok = [r for r in runs[(build, n)] if "error" not in r]
            if not ok:
                rows.append({"build": build, "clients": n,
                             "note": runs[(build, n)][0]["error"]})
                continue
            med = {k: statistics.median(r[k] for r in ok) for k in ok[0]}
            per_update = med["seconds"] / updates
            base = per_update if n == sizes[0] else base
            rows.append({"build": build, "clients": n, "runs": len(ok),
                         "setup_s": med["setup_seconds"],
                         "updates_per_s_end_to_end": updates / med["seconds"],
                         "updates_per_cpu_s": updates / med["cpu_seconds"],
                         "cost_vs_1k": per_update / base if base else None,
                         "results_s": med["results_seconds"],
                         "peak_rss_mb": med["peak_rss_mb"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", action="store_true")
    parser.add_argument("--images", action="store_true",
                        help="the images target (default --sizes 1000,100000, --updates 2000)")
    parser.add_argument("--before", help="a checkout to compare with (e.g. main)")
    parser.add_argument("--after", help="the checkout to measure (default: this one)")
    parser.add_argument("--sizes", default=None,
                        help="client counts (default 1000,100000,1000000; --images: "
                             "1000,100000)")
    parser.add_argument("--updates", type=int, default=None,
                        help="updates per run (default 20000; --images: 2000)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default="outputs/benchmarks")
    args = parser.parse_args()
    from asyncfl.results import markdown_table

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if not (args.targets or args.images):
        rows = measure(args.reps, args.out)
    else:
        here = args.after or str(Path(__file__).resolve().parents[1])
        builds = {"before": args.before, "after": here} if args.before else {"this": here}
        sizes = tuple(int(x) for x in (args.sizes or (
            "1000,100000" if args.images else "1000,100000,1000000")).split(","))
        updates = args.updates or (2_000 if args.images else 20_000)
        run = images_run(args.out, sizes) if args.images else None
        rows = measure_targets(args.reps, args.out, builds, sizes, updates, run)
    print(f"machine: {machine}; median of {args.reps}")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    print(markdown_table(rows, columns))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "scale_targets.json").write_text(json.dumps(
        {"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
