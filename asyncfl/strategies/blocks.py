r"""The building blocks several algorithms share, each small and pure: averaging and gradient
steps, the buffer of the buffered rules (FedBuff, CA2FL, FedStaleWeight, FADAS), staleness
weights s(tau), the server optimizers, and the one default server step.

Server optimizers
-----------------

A buffered rule (FedBuff, CA2FL, FedStaleWeight, FADAS) computes a direction Delta_t, the
aggregate of its clients' deltas (a descent direction: the negative of a pseudo-gradient),
and hands it to one `ServerOptimizer`. With server learning rate eta (per coordinate,
squares, roots and divisions elementwise, m_{-1} = v_{-1} = \hat v_{-1} = 0):

sgd (FedAvgM when beta > 0, Hsu et al. 2019; plain gamma step when beta = 0)
    m_t = \beta m_{t-1} + \Delta_t, \quad w_{t+1} = w_t + \eta m_t

adam, yogi, adagrad (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Alg. 2)
    m_t = \beta_1 m_{t-1} + (1 - \beta_1) \Delta_t
    adam:    v_t = \beta_2 v_{t-1} + (1 - \beta_2) \Delta_t^2
    yogi:    v_t = v_{t-1} - (1 - \beta_2) \Delta_t^2 \operatorname{sign}(v_{t-1} - \Delta_t^2)
    adagrad: v_t = v_{t-1} + \Delta_t^2
    w_{t+1} = w_t + \eta \, m_t / (\sqrt{v_t} + \epsilon)

amsgrad (FADAS's server step, Wang et al. 2024)
    m_t, v_t as adam, \quad \hat v_t = \max(\hat v_{t-1}, v_t), \quad
    w_{t+1} = w_t + \eta \, m_t / (\sqrt{\hat v_t} + \epsilon)

These are Flower's FedAvgM / FedAdam / FedYogi / FedAdagrad formulas with two differences,
both following the paper: no bias correction in adam (Flower's FedAdam scales eta by
sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1)); Reddi et al. have none), and adagrad keeps the
first moment with beta1 as in Reddi et al. (Flower's FedAdagrad fixes beta1 = 0). Moments
start at zero (Flower's choice; Reddi et al. analyse v_{-1} >= epsilon^2). Every step is
computed in float64 and cast back to each array's dtype.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from asyncfl.engine import arguments
from asyncfl.engine.base import AsyncStrategy
from asyncfl.engine.checkpoint import state_class
from asyncfl.engine.dispatch import WholeTasks, WindowedTasks
from asyncfl.engine.runner import RunParts

Arrays = dict[str, np.ndarray]


def checked_lr(lr: float | None, name: str) -> float:
    """A learning rate that is a positive finite number, else an error naming `name` (a
    ValueError for a missing one: None)."""
    if lr is None:
        raise ValueError(f"{name} must be a number > 0, got None")
    return arguments.positive(name, lr)


def weighted_average(
    models: Sequence[dict[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """sum_i w_i * x_i / sum_i w_i per array, accumulated in float64, cast back to each dtype."""
    total = float(sum(weights))
    if not models or total <= 0:
        raise ValueError("weighted_average needs at least one model and a positive total weight")
    out = {}
    for key, first in models[0].items():
        acc = np.zeros(first.shape, dtype=np.float64)
        for model, weight in zip(models, weights, strict=True):
            acc += (weight / total) * model[key]
        out[key] = acc.astype(first.dtype)
    return out


def gradient_step(
    arrays: dict[str, np.ndarray], gradient: dict[str, np.ndarray], lr: float
) -> dict[str, np.ndarray]:
    """w - lr * g per (floating-point) array, in the array's own dtype."""
    return {key: (value - np.asarray(lr, dtype=value.dtype) * gradient[key]).astype(value.dtype)
            for key, value in arrays.items()}


def default_server_lr(updates_per_step: int, in_flight: int) -> float:
    """The server step gamma = min(1, B / M) of an asynchronous rule that takes a plain (sgd)
    step on every B updates while M clients are in flight (B = K for the buffered rules, 1 for
    A-LSGD, ASGD and APSB).

    With M in flight an update is about M / B versions stale, and delayed SGD is stable with
    a step of order 1 / staleness; with gamma = B / M, M updates move the model as far as one
    synchronous average of them does. (The APSB poster uses gamma = 1 times the clients' lr:
    A-LSGD then collapses at K = 8, as the poster reports.)"""
    return min(1.0, updates_per_step / in_flight)




def checked_size(buffer_size: int) -> int:
    """K, the updates per server step: an integer >= 1."""
    return arguments.integer("buffer_size", buffer_size, 1)


def client_returns_arg(value: str) -> str:
    """What a buffered strategy asks the ClientApp for: 'weights' or 'delta'."""
    return arguments.choice("client_returns", value, ("weights", "delta"))


@state_class
class DeltaBuffer:
    """sum_i a_i Delta_i over the updates since the last step, accumulated in float64, with
    their count, the sum of their weights a_i and the largest staleness among them."""

    def __init__(self) -> None:
        self.total: Arrays = {}
        self.count = 0
        self.weight = 0.0
        self.max_staleness = 0

    def add(self, update: Arrays, weight: float = 1.0, staleness: int = 0) -> None:
        """Add a_i Delta_i (a_i = `weight`)."""
        for key, delta in update.items():
            if key not in self.total:
                self.total[key] = np.zeros(delta.shape, dtype=np.float64)
            self.total[key] += weight * delta
        self.count += 1
        self.weight += weight
        self.max_staleness = max(self.max_staleness, staleness)

    def divided(self, divisor: float) -> Arrays:
        """The buffer's sum over `divisor` (K for a mean, the weights' sum for a weighted
        mean)."""
        return {key: value / divisor for key, value in self.total.items()}


StalenessFn = Callable[[int], float]

STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")


def constant(tau: int) -> float:
    """s(tau) = 1: every update counts fully."""
    return 1.0


def polynomial(tau: int, a: float) -> float:
    """s(tau) = (1 + tau)^(-a)."""
    return (1.0 + tau) ** -a


def hinge(tau: int, a: float, b: float) -> float:
    """s(tau) = 1 if tau <= b, else 1 / (a (tau - b) + 1)."""
    return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)


def staleness_setting(config: Mapping[str, Any]) -> StalenessFn | None:
    """Run-config `staleness` (with `staleness-a`, `staleness-b`) as a strategy's argument:
    None for auto (the strategy's own default)."""
    if config["staleness"] == "auto":
        return None
    return staleness_function(config["staleness"], config["staleness-a"], config["staleness-b"])


def staleness_function(name: str, a: float = 0.5, b: float = 4.0) -> StalenessFn:
    """The named staleness function with its parameters bound."""
    if name == "constant":
        return constant
    if name == "polynomial":
        return partial(polynomial, a=a)
    if name == "hinge":
        return partial(hinge, a=a, b=b)
    raise ValueError(f"unknown staleness function {name!r}; choose one of {STALENESS_FUNCTIONS}")


#: FedBuff's default: polynomial with a = 0.5
polynomial_default: StalenessFn = partial(polynomial, a=0.5)


#: one array's optimizer state: its moments by name ("m", "v", "v_max")
Moments = dict[str, np.ndarray]

OPTIMIZERS = ("sgd", "adam", "yogi", "adagrad", "amsgrad")
#: server learning rate eta when none is given
DEFAULT_LR = {"sgd": 1.0, "adam": 0.01, "yogi": 0.01, "adagrad": 0.1, "amsgrad": 0.01}


def sgd(direction: np.ndarray, moments: Moments, lr: float, momentum: float) -> np.ndarray:
    """The sgd increment eta m_t (m_t = Delta_t without momentum); updates `moments`."""
    if momentum > 0:
        step = moments.get("m", 0.0) * momentum + direction
        moments["m"] = step
        return lr * step
    return lr * direction


def _first_moment(direction: np.ndarray, moments: Moments, beta1: float) -> np.ndarray:
    moments["m"] = beta1 * moments.get("m", 0.0) + (1.0 - beta1) * direction
    return moments["m"]


def adaptive(kind: str, direction: np.ndarray, moments: Moments, lr: float, beta1: float,
             beta2: float, epsilon: float) -> np.ndarray:
    """The increment eta m_t / (sqrt(v_t) + epsilon) of adam, yogi, adagrad or amsgrad (v_t
    replaced by \\hat v_t); updates `moments`."""
    m = _first_moment(direction, moments, beta1)
    square = direction * direction
    v = moments.get("v", np.zeros_like(direction))
    if kind == "yogi":
        v = v - (1.0 - beta2) * square * np.sign(v - square)
    elif kind == "adagrad":
        v = v + square
    else:
        v = beta2 * v + (1.0 - beta2) * square
    moments["v"] = v
    if kind == "amsgrad":
        v = moments["v_max"] = np.maximum(moments.get("v_max", v), v)
    return lr * m / (np.sqrt(v) + epsilon)


def _check(name: str, value: float, ok: Callable[[float], bool], allowed: str) -> None:
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"server optimizer: {name} = {value!r} is out of range; "
                         f"allowed: {allowed}")


@state_class
class ServerOptimizer:
    """One server optimizer (see the module's formulas) and its state: `moments` per array
    and the number of `steps` taken. Give each strategy its own: the state is the run's.

    `lr` (eta) defaults to DEFAULT_LR of the optimizer; `momentum` is sgd's beta (FedAvgM),
    `betas` (beta1, beta2) and `epsilon` are the adaptive optimizers'.
    """

    def __init__(self, name: str = "sgd", lr: float | None = None, momentum: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.99), epsilon: float = 1e-3) -> None:
        if name not in OPTIMIZERS:
            raise ValueError(f"server optimizer {name!r} is unknown; choose one of: "
                             f"{', '.join(OPTIMIZERS)}")
        lr = DEFAULT_LR[name] if lr is None else lr
        _check("lr", lr, lambda x: x > 0, "a number > 0")
        _check("momentum", momentum, lambda x: 0 <= x < 1, "a number in [0, 1)")
        if momentum > 0 and name != "sgd":
            raise ValueError(f"server optimizer {name!r} takes betas, not momentum (sgd's, "
                             f"FedAvgM); got momentum = {momentum}")
        for which, beta in zip(("beta1", "beta2"), betas, strict=True):
            _check(which, beta, lambda x: 0 <= x < 1, "a number in [0, 1)")
        _check("epsilon", epsilon, lambda x: x > 0, "a number > 0")
        self.name, self.lr, self.momentum = name, float(lr), momentum
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.epsilon = epsilon
        self.moments: dict[str, Moments] = {}
        self.steps = 0

    def step(self, global_arrays: Arrays, direction: Arrays, lr: float | None = None) -> Arrays:
        """The new model w + increment(Delta) for every array of `global_arrays`, with this
        step's learning rate `lr` (default: the optimizer's eta)."""
        lr = self.lr if lr is None else lr
        self.steps += 1
        new = {}
        for key, value in global_arrays.items():
            moments = self.moments.setdefault(key, {})
            if self.name == "sgd":
                increment = sgd(direction[key], moments, lr, self.momentum)
            else:
                increment = adaptive(self.name, direction[key], moments, lr, self.beta1,
                                     self.beta2, self.epsilon)
            new[key] = (value + increment).astype(value.dtype)
        return new

    def __repr__(self) -> str:
        if self.name == "sgd":
            return f"sgd(lr={self.lr:g}, momentum={self.momentum:g})"
        return (f"{self.name}(lr={self.lr:g}, betas=({self.beta1:g}, {self.beta2:g}), "
                f"epsilon={self.epsilon:g})")


def staleness_arg(value: str | StalenessFn | None,
                  default: StalenessFn = polynomial_default) -> StalenessFn:
    """The `staleness` argument of a strategy: None (the strategy's `default`), a name of
    STALENESS_FUNCTIONS (default parameters: polynomial a = 0.5, hinge a = 0.5, b = 4) or a
    function tau -> weight."""
    if value is None:
        return default
    if isinstance(value, str):
        if value not in STALENESS_FUNCTIONS:
            raise ValueError(f"staleness must be a function tau -> weight or one of "
                             f"{', '.join(map(repr, STALENESS_FUNCTIONS))}, got {value!r}")
        return staleness_function(value)
    if not callable(value):
        raise TypeError(f"staleness must be a function tau -> weight or one of "
                        f"{', '.join(map(repr, STALENESS_FUNCTIONS))}, got {value!r}")
    return value


class ServerStep:
    """A buffered strategy's server step as its user gave it, turned into a fresh
    `ServerOptimizer` for each run (`new`): a `ServerOptimizer` (copied, so no run inherits
    another's moments), an optimizer's name (`server_lr` its eta, default DEFAULT_LR), or None:
    `default` (sgd: eta = `server_lr`, by default `default_server_lr`; FedAvgM with
    `server_momentum` > 0). Checked when it is given."""

    def __init__(self, server_optimizer: ServerOptimizer | str | None,
                 server_lr: float | None, server_momentum: float, default: str = "sgd") -> None:
        server_lr = arguments.optional_positive("server_lr", server_lr)
        server_momentum = arguments.number("server_momentum", server_momentum,
                                           "a number in [0, 1)", lambda x: 0 <= x < 1)
        if isinstance(server_optimizer, ServerOptimizer):
            if server_lr is not None or server_momentum != 0.0:
                raise ValueError("give server_lr and server_momentum to the ServerOptimizer "
                                 "passed as server_optimizer, not beside it")
        elif server_optimizer is not None and (not isinstance(server_optimizer, str)
                                               or server_optimizer not in OPTIMIZERS):
            raise ValueError(f"server_optimizer must be a ServerOptimizer or one of "
                             f"{', '.join(map(repr, OPTIMIZERS))}, got {server_optimizer!r}")
        self.given = server_optimizer
        self.name = server_optimizer if isinstance(server_optimizer, str) else default
        self.server_lr = server_lr
        self.server_momentum = server_momentum
        self.new(1, None)  # the optimizer checks momentum and lr now

    @property
    def is_default_sgd(self) -> bool:
        """sgd with no step given: its step is `default_server_lr`."""
        return (self.name == "sgd" and self.server_lr is None
                and not isinstance(self.given, ServerOptimizer))

    def new(self, updates_per_step: int, in_flight: int | None) -> ServerOptimizer:
        """The optimizer of one run with B = `updates_per_step` and M = `in_flight` (None:
        not known yet, at construction)."""
        if isinstance(self.given, ServerOptimizer):
            return self.given if in_flight is None else copy.deepcopy(self.given)
        lr = self.server_lr
        if lr is None and self.name == "sgd":
            lr = 1.0 if in_flight is None else default_server_lr(updates_per_step, in_flight)
        return ServerOptimizer(self.name, lr, self.server_momentum)


class BufferedStrategy(AsyncStrategy):
    """What the buffered strategies (FedBuff, CA2FL, FedStaleWeight, FADAS) take alike: K
    (`buffer_size`), M (`concurrency`), what the clients return (`client_returns`) and the
    server step (`server_lr`, `server_momentum`, `server_optimizer`: a `ServerStep`, whose
    default for sgd is `default_server_lr`). Each names its own rule in `buffered_rule`; its
    docstring documents these arguments."""

    step_setting = "server_lr (run config: server-lr)"
    #: the server optimizer when none is given
    default_optimizer = "sgd"

    def __init__(
        self,
        buffer_size: int = 10,
        concurrency: int = 0,
        *,
        client_returns: str = "weights",
        server_lr: float | None = None,
        server_momentum: float = 0.0,
        server_optimizer: ServerOptimizer | str | None = None,
        work_window: float = 0.0,
        **options: Any,
    ) -> None:
        super().__init__(concurrency, **options)
        self.work_window = arguments.non_negative("work_window", work_window)
        self.reply_kind = client_returns_arg(client_returns)
        self.buffer_size = checked_size(buffer_size)
        self.server_step = ServerStep(server_optimizer, server_lr, server_momentum,
                                      self.default_optimizer)
        self.rule = self.new_rule()

    def new_rule(self, parts: RunParts | None = None) -> Any:
        in_flight = self.in_flight(parts) if parts is not None else None
        return self.buffered_rule(self.server_step.new(self.buffer_size, in_flight), parts)

    def tasks(self, parts: RunParts) -> WholeTasks:
        """With a `work_window`, tasks sized to it from each client's measured speed."""
        if self.work_window > 0:
            return WindowedTasks(parts.dispatcher, self.work_window)
        return super().tasks(parts)

    def buffered_rule(self, optimizer: ServerOptimizer, parts: RunParts | None) -> Any:
        """The strategy's rule with this run's fresh `optimizer`."""
        raise NotImplementedError
