"""asyncfl's Flower strategies: import them into any Flower ServerApp.

They keep Flower's `Strategy.start(grid, initial_arrays, num_rounds, ...)` signature and work
with any ClientApp that answers a train message with one ArrayRecord and a MetricRecord holding
`num-examples` (Flower's FedAvg contract).
"""

from asyncfl.strategies.base import AsyncflStrategy, SyncStrategy
from asyncfl.strategies.fedavg import FedAvg
from asyncfl.strategies.fedsgd import FedSGD
from asyncfl.strategies.fedsgd_weights import FedSGDWeights

#: run-config name -> strategy class
STRATEGIES: dict[str, type[AsyncflStrategy]] = {
    "fedsgd": FedSGD,
    "fedsgd-weights": FedSGDWeights,
    "fedavg": FedAvg,
}

__all__ = ["STRATEGIES", "AsyncflStrategy", "FedAvg", "FedSGD", "FedSGDWeights", "SyncStrategy"]
