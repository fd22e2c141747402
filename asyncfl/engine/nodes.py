"""Which nodes a run trains on: waiting for enough of them at the start, as Flower's sampling
does, and noticing the ones that connect later."""

from __future__ import annotations

import math
import sys
import time
from logging import INFO

from flwr.common.logger import log
from flwr.serverapp import Grid

#: Flower's simulation registers all its nodes as it starts: a node count that stays the
#: same this long is the federation's size
SIMULATION_SETTLE_SECONDS = 1.0
#: seconds between "waiting for nodes" lines
WAIT_LOG_SECONDS = 30.0
#: wall seconds between two looks at the Grid for nodes that joined
REFRESH_SECONDS = 5.0


def simulated(grid: Grid) -> bool:
    """Whether `grid` is the Grid of Flower's simulation engine (an `InMemoryGrid`). Its
    module is looked up, not imported: such a Grid exists only once the module is loaded, and
    importing it (Flower's server-side state and object store) would cost every ClientApp
    process, which imports asyncfl's configuration and through it the engine, about 0.4 s
    (one per message in a deployment)."""
    module = sys.modules.get("flwr.superlink.grid.inmemory_grid")
    return module is not None and isinstance(grid, module.InMemoryGrid)


def fixed_federation(grid: Grid) -> bool:
    """Whether no node can join after the start: Flower's simulation (once its nodes are
    registered) and asyncfl's inline runtime (`fixed_nodes`)."""
    return simulated(grid) or bool(getattr(grid, "fixed_nodes", False))


def wait_for_nodes(grid: Grid, num_clients: int, min_nodes: int, wait: float = math.inf,
                   setting: str = "min-available-nodes") -> list[int]:
    """The ids of the nodes a run uses, sorted, once they are there.

    In a fixed federation (simulation, inline) waiting cannot help: once the count settles,
    too few nodes is an error at once, naming the setting and the flag that fixes it. A
    deployment waits up to `wait` seconds (Flower's strategies wait forever) for num_clients
    nodes, or with num_clients = 0 for `min_nodes`, logging every WAIT_LOG_SECONDS, then
    takes every node connected at that moment.
    """
    fixed = fixed_federation(grid)
    settle = SIMULATION_SETTLE_SECONDS if simulated(grid) else 0.0
    wanted = num_clients or max(1, min_nodes)
    named = f"num-clients = {num_clients}" if num_clients else f"{setting} = {min_nodes}"
    started = time.monotonic()
    logged = started
    count, since = -1, started
    while True:
        nodes = sorted(grid.get_node_ids())
        now = time.monotonic()
        if len(nodes) != count:
            count, since = len(nodes), now
        if fixed and count and now - since >= settle:
            if count < wanted:
                kind = "SuperNodes" if simulated(grid) else "nodes"
                raise RuntimeError(
                    f"{named} but the simulated federation has {count} {kind}; pass "
                    f"--federation-config \"num-supernodes={wanted}\" to flwr run, or lower "
                    f"{setting}")
            break
        if not fixed and count >= wanted:
            break
        if now - started > wait:
            raise RuntimeError(f"{named} but only {count} nodes connected after {wait:.0f} s"
                               "; start more SuperNodes or lower the setting")
        if now - logged >= WAIT_LOG_SECONDS:
            log(INFO, "waiting for nodes to connect: %d connected (%d wanted)", count, wanted)
            logged = now
        time.sleep(0.1)
    return nodes[:num_clients] if num_clients else nodes


class NodeWatch:
    """Notices nodes that connect after the run started (at most every REFRESH_SECONDS of
    wall time, and never in a fixed federation), so runners can give them work."""

    def __init__(self, grid: Grid, known: list[int], follow: bool) -> None:
        self.grid = grid
        self.follow = follow and not fixed_federation(grid)
        self.known = set(known) if self.follow else set()  # (a fixed federation: never read)
        self._last = time.monotonic()

    def joined(self) -> list[int]:
        """Node ids that connected since the last look, sorted."""
        if not self.follow or time.monotonic() - self._last < REFRESH_SECONDS:
            return []
        self._last = time.monotonic()
        new = sorted(set(self.grid.get_node_ids()) - self.known)
        self.known.update(new)
        if new:
            log(INFO, "%d node(s) joined the run: %s", len(new), new)
        return new
