"""The ServerApp: asyncfl's strategies as plug-ins, each built with no arguments and run in
turn on the same nodes with the quickstart's ClientApp; writes outcomes.json."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from asyncfl.strategies import STRATEGIES, CapabilityError, SyncStrategy
from plugin_quickstart.task import Net, accuracy, test_set

app = ServerApp()


def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    net = Net()
    net.load_state_dict(arrays.to_torch_state_dict())
    loss, acc = accuracy(net, *test_set())
    return MetricRecord({"loss": loss, "accuracy": acc})


def initial_model() -> ArrayRecord:
    """The same initial model for every strategy (seeded)."""
    torch.manual_seed(0)
    return ArrayRecord(Net().state_dict())


def rounds_for(strategy, updates: int, nodes: int, local_steps: int) -> int:
    """Rounds (sync) or versions (async) that take about `updates` client updates of
    `local_steps` steps each: an algorithm whose clients run one step (FedSGD, SSGD, ASGD)
    gets proportionally more updates."""
    updates *= local_steps // strategy.fixed_train_config.get("local-steps", local_steps)
    if isinstance(strategy, SyncStrategy):
        return max(1, updates // nodes)
    return max(1, math.ceil(updates / getattr(strategy.rule, "buffer_size", 1)))


def run_one(grid: Grid, name: str, config: dict) -> dict:
    """One strategy's outcome: trained (first and last accuracy) or the capability error."""
    strategy = STRATEGIES[name]()
    began = time.monotonic()
    rounds = rounds_for(strategy, int(config["updates"]), len(list(grid.get_node_ids())),
                        int(config["local-steps"]))
    try:
        result = strategy.start(
            grid, initial_model(), num_rounds=rounds,
            train_config=ConfigRecord({"lr": float(config["lr"]),
                                       "local-steps": int(config["local-steps"])}),
            evaluate_fn=central_evaluate)
    except CapabilityError as err:
        return {"outcome": "capability error", "error": str(err),
                "wall_s": time.monotonic() - began}
    evals = result.evaluate_metrics_serverapp
    return {"outcome": "trained", "rounds": rounds,
            "updates": len(strategy.recorder.applied()),
            "accuracy_start": evals[min(evals)]["accuracy"],
            "accuracy_end": evals[max(evals)]["accuracy"],
            "loss_start": evals[min(evals)]["loss"], "loss_end": evals[max(evals)]["loss"],
            "client_metrics": {str(k): dict(v) for k, v in
                               result.evaluate_metrics_clientapp.items()},
            "train_metrics": {str(k): dict(v) for k, v in
                              result.train_metrics_clientapp.items()},
            "wall_s": time.monotonic() - began}


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    outcomes = {name: run_one(grid, name, config)
                for name in str(config["strategies"]).split(",")}
    out = Path(str(config["out"]) or ".") / "outcomes.json"
    out.write_text(json.dumps(outcomes, indent=1))
