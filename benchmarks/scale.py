"""Scale: inline virtual-time runs with 100 to 10,000 clients, updates/s and peak memory.

Each run is a fresh process so its peak resident memory is its own."""

from __future__ import annotations

import json
import subprocess
import sys

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

started = time.perf_counter()
result = asyncfl.simulate(**kw)
print(json.dumps({"updates_per_s": result.summary["updates_per_wall_second"],
                  "seconds": time.perf_counter() - started,
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
