"""Every asyncfl strategy with this example's plain and helped ClientApps under `flwr run` (a
private local SuperLink, 4 simulated SuperNodes): prints the table in docs/plugin.md.

    python examples/plugin_quickstart/table.py [--updates 40] [--local-steps 10]

Equal local steps: the plain app trains one epoch a task, 10 steps of 32 on its 300 examples.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from asyncfl.strategies import STRATEGIES
from asyncfl.tools.superlink import CONNECTION, flower_executable, local_superlink

EXAMPLE = Path(__file__).resolve().parent


def run(client: str, updates: int, local_steps: int, out: Path,
        strategies: list[str]) -> tuple[dict, float]:
    """The outcomes.json of one `flwr run` of `strategies` with the `client` app, and the
    run's wall seconds."""
    overrides = (f"strategies='{','.join(strategies)}' out='{out}' client='{client}' "
                 f"updates={updates} local-steps={local_steps}")
    began = time.monotonic()
    with local_superlink(EXAMPLE) as (_, env):
        pythonpath = ":".join([str(EXAMPLE), str(EXAMPLE.parents[1])])
        done = subprocess.run(
            [flower_executable("flwr"), "run", str(EXAMPLE), CONNECTION, "--stream",
             "--run-config", overrides, "--federation-config", "num-supernodes=4"],
            env={**env, "PYTHONPATH": pythonpath}, capture_output=True, text=True,
            timeout=3600)
    found = out / "outcomes.json"
    if not found.exists():
        raise RuntimeError(f"flwr run wrote no outcomes ({done.returncode}):\n"
                           f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return json.loads(found.read_text()), time.monotonic() - began


def row(name: str, client: str, outcome: dict) -> str:
    if outcome["outcome"] != "trained":
        return f"| {name} | {client} | {outcome['outcome']} | | {outcome['wall_s']:.0f} | |"
    evaluated = "yes" if outcome["client_metrics"] else "no"
    return (f"| {name} | {client} | {outcome['accuracy_start']:.3f} -> "
            f"{outcome['accuracy_end']:.3f} | {outcome['updates']} | {outcome['wall_s']:.0f} "
            f"| {evaluated} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--strategies", default=",".join(sorted(STRATEGIES)))
    args = parser.parse_args()
    names = args.strategies.split(",")
    outcomes, walls = {}, {}
    for client in ("plain", "helped"):
        out = Path(tempfile.mkdtemp(prefix=f"quickstart-{client}-"))
        outcomes[client], walls[client] = run(client, args.updates, args.local_steps, out,
                                              names)
    print(f"{args.updates} client updates of {args.local_steps} local steps (sync: rounds "
          f"x 4 nodes); flwr run wall s: plain {walls['plain']:.0f}, helped "
          f"{walls['helped']:.0f}\n")
    print("| strategy | ClientApp | accuracy before -> after | updates | wall s | "
          "client eval |")
    print("|---|---|---|---|---|---|")
    for name in names:
        for client in ("plain", "helped"):
            print(row(name, client, outcomes[client][name]))


if __name__ == "__main__":
    sys.exit(main())
