"""asyncfl's Flower strategies: import them into any Flower ServerApp.

One module per algorithm (its rule, its Flower class, its run-config settings and its
registered name); `blocks` holds what several share; the engine that runs them all is
`asyncfl.engine`. They keep Flower's `Strategy.start(grid, initial_arrays, num_rounds, ...)`
signature and work with any ClientApp that answers a train message with one ArrayRecord and a
MetricRecord holding `num-examples` (Flower's FedAvg contract).
"""

from asyncfl.engine.base import AsyncflStrategy, AsyncStrategy, SyncStrategy
from asyncfl.engine.checkpoint import Checkpointer
from asyncfl.engine.evaluation import EvaluationSchedule
from asyncfl.engine.guard import (
    CapabilityError,
    DivergenceError,
    NoClientLeftError,
    ReplyGuard,
    SettingError,
)
from asyncfl.strategies.alsgd import ALSGD
from asyncfl.strategies.apsb import APSB
from asyncfl.strategies.asgd import ASGD
from asyncfl.strategies.blocks import (
    OPTIMIZERS,
    ServerOptimizer,
    constant,
    hinge,
    polynomial,
    staleness_function,
)
from asyncfl.strategies.ca2fl import CA2FL
from asyncfl.strategies.esync import ESync
from asyncfl.strategies.fadas import FADAS
from asyncfl.strategies.fedasync import FedAsync
from asyncfl.strategies.fedavg import FedAvg
from asyncfl.strategies.fedbuff import FedBuff
from asyncfl.strategies.fedcompass import FedCompass
from asyncfl.strategies.fedsgd import FedSGD
from asyncfl.strategies.fedsgd_weights import FedSGDWeights
from asyncfl.strategies.fedstaleweight import FedStaleWeight
from asyncfl.strategies.lsgd import LSGD
from asyncfl.strategies.mifa import MIFA
from asyncfl.strategies.registry import REGISTRY
from asyncfl.strategies.running_mean import RunningMean
from asyncfl.strategies.ssgd import SSGD

#: run-config name -> strategy class (every module registers its own)
STRATEGIES: dict[str, type[AsyncflStrategy]] = {name: r.cls for name, r in REGISTRY.items()}

__all__ = [
    "ALSGD", "APSB", "ASGD", "CA2FL", "CapabilityError", "DivergenceError", "ESync", "FADAS",
    "LSGD", "MIFA", "OPTIMIZERS", "REGISTRY", "SSGD", "STRATEGIES", "AsyncStrategy",
    "AsyncflStrategy", "Checkpointer", "EvaluationSchedule", "FedAsync", "FedAvg", "FedBuff",
    "FedCompass", "FedSGD", "FedSGDWeights", "FedStaleWeight", "NoClientLeftError",
    "ReplyGuard", "RunningMean", "ServerOptimizer", "SettingError", "SyncStrategy", "constant",
    "hinge", "polynomial", "staleness_function",
]
