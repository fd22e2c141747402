"""asyncfl's Flower strategies: import them into any Flower ServerApp.

They keep Flower's `Strategy.start(grid, initial_arrays, num_rounds, ...)` signature and work
with any ClientApp that answers a train message with one ArrayRecord and a MetricRecord holding
`num-examples` (Flower's FedAvg contract).
"""

from asyncfl.strategies.alsgd import ALSGD
from asyncfl.strategies.apsb import APSB
from asyncfl.strategies.asgd import ASGD
from asyncfl.strategies.base import (
    AsyncflStrategy,
    AsyncStrategy,
    BufferedStrategy,
    SyncStrategy,
)
from asyncfl.strategies.ca2fl import CA2FL
from asyncfl.strategies.checkpoint import Checkpointer
from asyncfl.strategies.esync import ESync
from asyncfl.strategies.evaluation import EvaluationSchedule
from asyncfl.strategies.fadas import FADAS
from asyncfl.strategies.fedasync import FedAsync
from asyncfl.strategies.fedavg import FedAvg
from asyncfl.strategies.fedbuff import FedBuff
from asyncfl.strategies.fedsgd import FedSGD
from asyncfl.strategies.fedsgd_weights import FedSGDWeights
from asyncfl.strategies.fedstaleweight import FedStaleWeight
from asyncfl.strategies.guard import (
    CapabilityError,
    DivergenceError,
    NoClientLeftError,
    ReplyGuard,
)
from asyncfl.strategies.lsgd import LSGD
from asyncfl.strategies.running_mean import RunningMean
from asyncfl.strategies.server_optimizer import OPTIMIZERS, ServerOptimizer
from asyncfl.strategies.ssgd import SSGD
from asyncfl.strategies.staleness import constant, hinge, polynomial, staleness_function

#: run-config name -> strategy class
STRATEGIES: dict[str, type[AsyncflStrategy]] = {
    "fedsgd": FedSGD,
    "fedsgd-weights": FedSGDWeights,
    "fedavg": FedAvg,
    "fedbuff": FedBuff,
    "fedasync": FedAsync,
    "ca2fl": CA2FL,
    "fedstaleweight": FedStaleWeight,
    "fadas": FADAS,
    "running-mean": RunningMean,
    "lsgd": LSGD,
    "ssgd": SSGD,
    "alsgd": ALSGD,
    "asgd": ASGD,
    "apsb": APSB,
    "esync": ESync,
}

__all__ = [
    "ALSGD", "APSB", "ASGD", "CA2FL", "CapabilityError", "DivergenceError", "ESync", "FADAS",
    "LSGD", "OPTIMIZERS", "SSGD", "STRATEGIES", "AsyncStrategy", "AsyncflStrategy",
    "BufferedStrategy", "Checkpointer", "EvaluationSchedule", "FedAsync", "FedAvg", "FedBuff",
    "FedSGD", "FedSGDWeights", "FedStaleWeight", "NoClientLeftError", "ReplyGuard", "RunningMean",
    "ServerOptimizer", "SyncStrategy", "constant", "hinge", "polynomial", "staleness_function",
]
