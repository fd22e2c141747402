"""The ServerApp: run config -> task, strategy, clock -> strategy.start(...) -> results folder."""

from __future__ import annotations

import cProfile
import itertools
import pstats
import time
from collections.abc import Mapping, Sequence
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from asyncfl.config import (
    MOST_CLIENTS,
    PARALLEL_AUTO,
    changed_strategy_settings,
    check_local_files,
    config_warnings,
    validate_run_config,
)
from asyncfl.engine import (
    DelayModel,
    PhaseTimer,
    VirtualClock,
    WallClock,
    draw_step_times,
    profile_step_times,
)
from asyncfl.engine.availability import (
    Arrivals,
    Availability,
    OnOffWindows,
    TraceWindows,
)
from asyncfl.engine.checkpoint import CheckpointError, load_checkpoint
from asyncfl.engine.delays import parse_network_profile, parse_profile, read_trace
from asyncfl.engine.nodes import fixed_federation, wait_for_nodes
from asyncfl.engine.recorder import EVENT_COLUMNS, RunRecorder
from asyncfl.engine.utils import MAX_EXAMPLES, number_problem
from asyncfl.protocol import NUM_EXAMPLES, PARTITION_ID, QUERY, arrays_to_record, record_to_arrays
from asyncfl.results import (
    FINISHED,
    STOPPED,
    claim_run_dir,
    dominance_note,
    participation,
    run_dir,
    write_results,
)
from asyncfl.strategies import (
    REGISTRY,
    AsyncflStrategy,
    Checkpointer,
    EvaluationSchedule,
    ReplyGuard,
)
from asyncfl.tasks import check_task, load_task
from asyncfl.tasks.base import resolve_device

NODE_WAIT_SECONDS = 120.0

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Validate the run config and build the task before any node is contacted, then run
    (under the standard library's profiler when `profile` is set, writing its report next to
    the results)."""
    config = validate_run_config(context.run_config)
    check_local_files(config)
    check_task(config)  # data, columns, labels, model fit; the split if num-clients is set
    for note in config_warnings(config):
        log(WARNING, "%s", note)
    if config["parallel-clients"] != 1:  # the Grid is not touched before this point
        size, note = parallel_used(grid, config)
        if config["parallel-clients"] > 1 and size == 1:
            log(WARNING, "run-config 'parallel-clients' = %d has no effect here: only the "
                "inline runtime running asyncfl's ClientApp (asyncfl.simulate) trains clients "
                "together", config["parallel-clients"])
        else:
            log(INFO, "%s", note)
    if not config["profile"]:
        run_server(grid, config)
        return
    profiler = cProfile.Profile()
    out = profiler.runcall(run_server, grid, config)
    profiler.dump_stats(out / "server.prof")
    with (out / "server_profile.txt").open("w") as f:
        pstats.Stats(profiler, stream=f).sort_stats("cumulative").print_stats(60)


def parallel_used(grid: Grid, config: Mapping[str, Any]) -> tuple[int, str]:
    """How many clients the Grid trains together at most (1: one at a time), and a line
    saying why: the inline Grid's choice (`tools/together.py`); any other Grid runs every
    ClientApp call on its own."""
    together = getattr(grid, "together", None)
    note = getattr(grid, "parallel_note", None)
    if note is None:
        label = ("auto" if config["parallel-clients"] == PARALLEL_AUTO
                 else config["parallel-clients"])
        note = (f"parallel-clients = {label}: one at a time (only the inline runtime trains "
                "clients together)")
    return (together.size if together is not None else 1), note


def make_delays(config: Mapping[str, Any]) -> DelayModel:
    """The delay model the run config describes (delay-profile overrides delay-dist)."""
    n = config["num-clients"]
    common = dict(seed=config["seed"], jitter=config["delay-jitter"],
                  latency=config["comm-latency"], bandwidth=config["comm-bandwidth"],
                  networks=tuple(parse_network_profile(config["comm-profile"])
                                 if config["comm-profile"] else ()))
    if config["delay-dist"] == "trace" and not config["delay-profile"]:
        return DelayModel.from_trace(read_trace(config["delay-trace"]), n, **common)
    if config["delay-profile"]:
        steps = profile_step_times(parse_profile(config["delay-profile"]), n)
    else:
        steps = draw_step_times(
            config["delay-dist"], n, config["seed"], mean=config["delay-mean"],
            std=config["delay-std"], low=config["delay-low"], high=config["delay-high"],
        )
    return DelayModel(steps, **common)


def make_availability(config: Mapping[str, Any]) -> Availability | None:
    """When clients are online, as the run config says (None: always)."""
    windows: Availability | None = None
    if config["availability"] == "exponential":
        windows = OnOffWindows(config["availability-on"], config["availability-off"],
                               config["seed"])
    elif config["availability"] == "trace":
        windows = TraceWindows(config["availability-trace"])
    if config["arrival-rate"] > 0:
        return Arrivals(config["arrival-rate"], config["clients-at-start"], config["seed"],
                        windows)
    return windows


def make_strategy(
    config: Mapping[str, Any], delays: DelayModel, node_ids: list[int],
    partition_sizes: Sequence[int] | None = None, resume: dict | None = None,
    phases: PhaseTimer | None = None,
) -> AsyncflStrategy:
    """The strategy named in the run config, with the run's clock, delay model, reply guard,
    evaluation schedule and checkpoints."""
    clock = VirtualClock() if config["clock"] == "virtual" else WallClock()
    registered = REGISTRY[config["strategy"]]
    return registered.cls(
        clock=clock, delays=delays, availability=make_availability(config),
        seed=config["seed"], time_budget=config["time-budget"], stop_file=config["stop-file"],
        node_ids=node_ids, partition_sizes=partition_sizes, phases=phases,
        fraction_evaluate=config["fraction-evaluate"], min_evaluate_nodes=1,
        guard=ReplyGuard(config["max-faults"], config["update-norm-bound"],
                         config["norm-action"], outlier_factor=config["outlier-factor"]),
        evaluation=EvaluationSchedule(config["eval-every"], config["eval-interval"]),
        checkpoints=Checkpointer(run_dir(config) / CHECKPOINT, config["checkpoint-every"],
                                 resume, meta={"config": dict(config)}),
        **registered.settings(config),
    )


def train_config(config: Mapping[str, Any]) -> ConfigRecord:
    """The part of the run config every train instruction carries; settings at the value
    the ClientApp assumes anyway stay out (every key costs on every message)."""
    keys = ["lr", "local-steps", "batch-size"]
    if config["local-steps"] == 0:
        keys.append("local-epochs")
    if config["client-threads"] != 1:
        keys.append("client-threads")
    return ConfigRecord({k: config[k] for k in keys})


def discover_clients(
    grid: Grid, num_clients: int, min_nodes: int = 1, wait: float = NODE_WAIT_SECONDS
) -> tuple[list[int], Sequence[int] | None]:
    """Node ids in client order (index = the node's partition-id), and partition sizes.

    Waits for the nodes (wait_for_nodes; num-clients = 0: every node), then asks each for its
    partition-id and size with one `query` message; if the ClientApps do not answer, nodes are
    taken in node-id order and the sizes are unknown.
    """
    order = getattr(grid, "client_order", None)
    known = order() if order is not None else None  # the inline Grid knows without asking
    if known is not None and len(known[0]) >= num_clients:
        nodes, sizes = known
        if num_clients and num_clients < len(nodes):
            return nodes[:num_clients], list(sizes[:num_clients])
        return nodes, sizes
    deadline = time.monotonic() + wait
    # min-available-nodes is for deployments: a simulation has all its nodes from the start
    nodes = wait_for_nodes(grid, num_clients, 1 if fixed_federation(grid) else min_nodes, wait)
    num_clients = len(nodes)
    queries = [Message(RecordDict(), node, QUERY) for node in nodes]
    pending = set(grid.push_messages(queries))
    by_partition: dict[int, int] = {}
    sizes: dict[int, int] = {}
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(pending):
            if reply.metadata.reply_to_message_id not in pending:
                continue  # a duplicate, or a reply to something this did not ask
            pending.discard(reply.metadata.reply_to_message_id)
            answer = query_answer(reply)
            if answer is not None:
                pid, sizes[pid] = answer
                by_partition[pid] = reply.metadata.src_node_id
        if pending:
            time.sleep(0.01)
    if sorted(by_partition)[:num_clients] != list(range(num_clients)):
        log(WARNING, "nodes did not report partition ids 0..%d; using node-id order",
            num_clients - 1)
        return nodes[:num_clients], None
    return ([by_partition[i] for i in range(num_clients)],
            [sizes[i] for i in range(num_clients)])


def query_answer(reply: Message) -> tuple[int, int] | None:
    """A query reply's partition id and example count; None (logged) for an error reply or
    one whose numbers are not whole numbers in range, which then counts as no answer."""
    if reply.has_error():
        return None
    metrics = reply.content.metric_records.get("metrics", MetricRecord())
    pid, size = metrics.get(PARTITION_ID), metrics.get(NUM_EXAMPLES)
    problem = (number_problem(pid, integral=True, low=0, high=MOST_CLIENTS)
               or number_problem(size, integral=True, low=1, high=MAX_EXAMPLES))
    if problem:
        log(WARNING, "node %d answered the query with %s = %r, %s = %r (%s): not used",
            reply.metadata.src_node_id, PARTITION_ID, pid, NUM_EXAMPLES, size, problem)
        return None
    return int(pid), int(size)


CHECKPOINT = "checkpoint.bin"
#: keys that may differ between a run and its resumption
RESUMABLE_CHANGES = ("resume", "profile", "reply-timeout", "launch-id", "min-available-nodes")


def resume_payload(config: Mapping[str, Any]) -> dict:
    """The checkpoint of the run to resume, refused unless it was written for this config."""
    payload = load_checkpoint(run_dir(config) / CHECKPOINT)
    saved = payload["meta"].get("config", {})
    changed = sorted(k for k in config if k not in RESUMABLE_CHANGES
                     and saved.get(k) != config[k])
    if changed:
        raise CheckpointError(f"the checkpoint was written with other settings: "
                              f"{', '.join(changed)}; resume with the run's own config")
    return payload


def run_server(grid: Grid, config: Mapping[str, Any]) -> Path:
    """Run the configured strategy on the Grid and write the results folder."""
    began = time.perf_counter()
    phases = PhaseTimer()
    phases.enter("setup")
    config = dict(config)
    out = claim_run_dir(config)  # sets run-name: a fresh folder, or the one to resume
    device = resolve_device(config["torch-device"])  # cuda without a GPU stops the run here
    node_ids, sizes = discover_clients(grid, config["num-clients"],
                                       config["min-available-nodes"])
    config = validate_run_config({**config, "num-clients": len(node_ids)})
    resume = resume_payload(config) if config["resume"] else None
    task = load_task(config)
    delays = make_delays(config)  # a malformed delay-trace stops the run here
    strategy = make_strategy(config, delays, node_ids, sizes, resume, phases)

    def evaluate(version: int, arrays: ArrayRecord) -> MetricRecord:
        return MetricRecord(task.evaluate(record_to_arrays(arrays), device))

    log(INFO, "asyncfl: %s on %s, %d clients, results in %s", config["strategy"],
        config["task"], config["num-clients"], out)
    started = time.monotonic()
    try:
        result = strategy.start(
            grid, arrays_to_record(task.initial_arrays(config["seed"])),
            num_rounds=config["num-server-rounds"], train_config=train_config(config),
            evaluate_fn=evaluate, timeout=config["reply-timeout"],
        )
    except Exception as error:
        write_stopped(out, config, strategy.recorder, error, time.monotonic() - started)
        raise
    wall = time.monotonic() - started
    phases.enter("results")
    recorder = strategy.recorder
    totals = recorder.totals
    traffic, comm = totals.traffic, totals.algorithm
    events = recorder.applied()
    updates = len(events)
    staleness = [row["staleness"] for row in events]
    summary = {
        "status": FINISHED,
        "strategy": config["strategy"],
        "task": config["task"],
        "clock": config["clock"],
        "virtual_time": totals.virtual_time,
        "wall_time": wall,
        "mean_staleness": sum(staleness) / updates if updates else None,
        "max_staleness": max(staleness, default=None),
        "updates": updates,
        "updates_per_wall_second": updates / wall if wall > 0 else None,
        "messages": traffic.messages,
        "messages_sent": traffic.messages_sent,
        "replies_received": traffic.replies_received,
        "bytes_down": traffic.bytes_down,
        "bytes_up": traffic.bytes_up,
        "comm_messages_down": comm.messages_sent,
        "comm_messages_up": comm.replies_received,
        "comm_bytes_down": comm.bytes_down,
        "comm_bytes_up": comm.bytes_up,
        "skipped_replies": sum(recorder.failures.values()),
        "skipped_by_reason": dict(recorder.failures),
        "dropped_clients": totals.dropped,
        "ignored_replies": totals.ignored_replies,
        "skipped_evaluate_replies": strategy.federated_evaluation.skipped,
    }
    n = len(node_ids)
    counts = np.bincount(np.fromiter((row["client"] for row in events), dtype=np.int64,
                                     count=updates), minlength=n)[:n]
    if delays.networks:
        links = [delays.link(i) for i in range(n)]
        latency, down, up = ([getattr(link, name) for link in links]
                             for name in ("latency", "down", "up"))
    else:  # (one shared link)
        link = delays.link(0)
        latency, down, up = (itertools.repeat(v, n) for v in (link.latency, link.down, link.up))
    clients = {  # clients.csv's columns: N can be a million
        "client": range(n), "node_id": node_ids, "step_time": delays.step_times[:n].tolist(),
        "num_examples": sizes if sizes else itertools.repeat(None, n),
        "updates": counts.tolist(), "latency": latency, "bandwidth_down": down,
        "bandwidth_up": up,
    }

    summary["parallel_clients"], summary["parallel_clients_note"] = parallel_used(grid, config)
    summary["changed_settings"] = changed_strategy_settings(config)
    summary["participation"] = participation(counts)
    if note := dominance_note(config["strategy"], summary["participation"]):
        log(WARNING, "%s", note)

    def finalize(summary: dict) -> None:
        """The ServerApp's time by phase, up to writing summary.json."""
        phases.enter(None)
        summary["server_wall_time"] = time.perf_counter() - began
        summary["server_phases"] = phases.as_dict()

    write_results(
        out, config, events=recorder.events, event_columns=EVENT_COLUMNS,
        evals=recorder.evals,
        clients=clients, final_arrays=record_to_arrays(result.arrays), summary=summary,
        tables=recorder.tables, finalize=finalize,
    )
    log(INFO, "asyncfl: results written to %s", out.resolve())
    return out


def write_stopped(out: Path, config: Mapping[str, Any], recorder: RunRecorder,
                  error: Exception, wall: float) -> None:
    """What a run that stopped with `error` (DivergenceError, a configuration error found at
    the first replies, ...) did until then: events, evaluations, config and a summary with
    status 'stopped' and the reason; no final model. A failure to write is logged, and the
    run's own error is what the caller raises."""
    applied = recorder.applied()
    summary = {
        "status": STOPPED, "reason": f"{type(error).__name__}: {error}",
        "strategy": config["strategy"], "task": config["task"], "clock": config["clock"],
        "wall_time": wall, "updates": len(applied),
        "virtual_time": max((row["virtual_time"] for row in recorder.events), default=0.0),
        "skipped_replies": sum(recorder.failures.values()),
        "skipped_by_reason": dict(recorder.failures),
    }
    try:
        write_results(out, config, events=recorder.events, event_columns=EVENT_COLUMNS,
                      evals=recorder.evals, clients=[], final_arrays=None, summary=summary,
                      tables=recorder.tables)
    except OSError as failure:
        log(WARNING, "asyncfl: the stopped run's partial results were not written: %s",
            failure)
        return
    log(WARNING, "asyncfl: the run stopped (%s); what it did until then is in %s", error,
        out.resolve())
