"""The run-config vocabulary: every setting, its type, default and allowed values.

One table serves every runtime: `flwr run . --run-config "k=v"`, `asyncfl.simulate(k=v)` and
the ServerApp / ClientApp all validate against it, so a mistake is reported, naming the key and
what is allowed, before any node is contacted. `pyproject.toml` mirrors the defaults (tested).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from asyncfl.engine.delays import (
    MAX_PROFILE_ENTRIES,
    MAX_STEP_TIME,
    NETWORK_CLASSES,
    SPEED_CLASSES,
    parse_network_profile,
    parse_profile,
)
from asyncfl.strategies.registry import REGISTRY
from asyncfl.tasks import (
    BUILTIN_MODEL_NAMES,
    IMAGE_TASKS,
    MODEL_CALLABLE,
    MODEL_TASKS,
    PRESET_NAMES,
    TASK_NAMES,
)
from asyncfl.tasks.base import DEVICES
from asyncfl.tracking import INSTALL_HINT, TRACKER_ALLOWED, missing_packages, parse_trackers

ConfigValue = bool | int | float | str


class ConfigError(ValueError):
    """A run-config key is unknown or has a value outside what is allowed."""


@dataclass(frozen=True)
class Setting:
    """One run-config key: its type, default, and the rule its value must meet."""

    key: str
    type: type
    default: ConfigValue
    help: str
    choices: tuple[str, ...] = ()
    check: Callable[[Any], bool] | None = None
    allowed: str = ""
    #: words that stand for a value of the setting's type ("auto" -> 0)
    aliases: tuple[tuple[str, ConfigValue], ...] = ()

    def parse(self, value: Any) -> ConfigValue:
        """Return `value` coerced to this setting's type, or raise ConfigError."""
        if isinstance(value, str) and value in dict(self.aliases):
            value = dict(self.aliases)[value]
        value = self._coerce(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"run-config '{self.key}' = {value!r} is not a finite number; "
                f"allowed: {self.allowed or 'a finite number'}"
            )
        if self.choices and value not in self.choices:
            raise ConfigError(
                f"run-config '{self.key}' = {value!r} is not allowed; "
                f"choose one of: {', '.join(self.choices)}"
            )
        if self.check is not None and not self.check(value):
            raise ConfigError(
                f"run-config '{self.key}' = {value!r} is out of range; allowed: {self.allowed}"
            )
        return value

    def _coerce(self, value: Any) -> ConfigValue:
        wanted = self.type.__name__
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, self.type) and not (self.type is not bool and isinstance(value, bool)):
            return value
        raise ConfigError(
            f"run-config '{self.key}' must be of type {wanted}, got {type(value).__name__} "
            f"({value!r}); allowed: {self.allowed or ', '.join(self.choices) or wanted}"
        )


def _positive(x: float) -> bool:
    return x > 0


def _non_negative(x: float) -> bool:
    return x >= 0


def _fraction(x: float) -> bool:
    return 0 < x <= 1


def _unit_interval(x: float) -> bool:
    return 0 <= x <= 1


def _delay_profile(text: str) -> bool:
    """Whether `text` is a delay profile; ConfigError with parse_profile's reason if not."""
    if text == "":
        return True
    try:
        parse_profile(text)
    except (ValueError, KeyError) as err:
        raise ConfigError(f"run-config 'delay-profile' = {text!r}: {err}; allowed: "
                          f"{PROFILE_ALLOWED}") from None
    return True


def _network_profile(text: str) -> bool:
    if text == "":
        return True
    try:
        parse_network_profile(text)
    except ValueError:
        return False
    return True

PROFILE_ALLOWED = (f"empty, or comma-separated numbers in (0, {MAX_STEP_TIME:g}] or classes "
                   f"{', '.join(f'{k} ({v:g} s)' for k, v in SPEED_CLASSES.items())}, each "
                   f"optionally *count; at most {MAX_PROFILE_ENTRIES:,} in all")

FAULT_KINDS = ("raise", "nan", "shape", "silent")


def _fault_kinds(text: str) -> bool:
    return bool(text) and all(k in FAULT_KINDS for k in text.split(","))


#: longest run-name (a folder name; file systems allow 255 bytes, suffixes need some room)
RUN_NAME_MAX = 100


def _run_name(text: str) -> bool:
    if text == "":
        return True
    return (bool(text.strip()) and len(text) <= RUN_NAME_MAX and text not in (".", "..")
            and not any(c in text for c in ("/", "\\", "\0")))


def _tracker(text: str) -> bool:
    """Whether `text` names trackers; ConfigError with parse_trackers' reason if not."""
    try:
        parse_trackers(text)
    except ValueError as err:
        raise ConfigError(f"run-config 'tracker' = {text!r}: {err}; allowed: "
                          f"{TRACKER_ALLOWED}") from None
    return True


def _path(text: str) -> bool:
    return "\0" not in text


def _output_dir(text: str) -> bool:
    return bool(text.strip()) and _path(text)


def _launch_id(text: str) -> bool:
    return len(text) <= 64 and all(c.isascii() and (c.isalnum() or c == "-") for c in text)


#: largest seed: numpy and scikit-learn take seeds in [0, 2**32)
SEED_MAX = 2**32 - 1
#: the finest eval-interval: below a millisecond of the run's clock, evaluations repeat the
#: same model many times between two updates (the model changes only when one is applied)
EVAL_INTERVAL_MIN = 1e-3
#: most interval evaluations a time-budget may ask for (time-budget / eval-interval)
MAX_INTERVAL_EVALS = 100_000
#: training examples of the tasks with a fixed data set: each client needs one at least
TRAIN_EXAMPLES = {"digits": 1437, "mnist": 60_000, "fashion-mnist": 60_000, "cifar10": 50_000}
#: most clients of the tasks whose data grows with them (mean, synthetic)
MAX_CLIENTS = 100_000
#: ... except `mean`, whose client holds one integer: a million clients take 8 MB
CLIENT_LIMITS = {"mean": 1_000_000}
#: the most clients of any task (the largest partition id a node may report)
MOST_CLIENTS = max(MAX_CLIENTS, *CLIENT_LIMITS.values())
#: most clients parallel-clients = auto trains together
PARALLEL_AUTO_MAX = 1024
#: ... on cpu when psutil (free memory) is not installed
PARALLEL_AUTO_NO_PSUTIL = 64
#: parallel-clients = 0: the word for it
PARALLEL_AUTO = 0
#: what the inline Grid says of parallel-clients = 1
ONE_AT_A_TIME = "parallel-clients = 1: one at a time"
#: num-clients = 0 in simulate() and asyncfl-flwr-run, which make the nodes themselves
SIMULATED_CLIENTS = 10
#: largest delay-trace file read
TRACE_MAX_BYTES = 64 * 2**20
#: train settings a strategy fixes whatever the run config says (its `fixed_train_config`)
FIXED_BY_STRATEGY: dict[str, dict[str, int]] = {
    name: dict(r.cls.fixed_train_config) for name, r in REGISTRY.items()
    if r.cls.fixed_train_config}


_POSITIVE = "a number > 0"
_NON_NEGATIVE = "a number >= 0"
MODEL_ALLOWED = (f"auto, {', '.join(BUILTIN_MODEL_NAMES)}, or 'module:callable' (a function "
                 "or class taking (input_shape, num_classes) and returning a torch nn.Module)")
DATASET_ALLOWED = ("a Hugging Face hub id (cached), a local folder of train*/test* files "
                   "(parquet, csv, json, arrow), a single such file, or an image folder (one "
                   "subfolder per class)")


def _model(text: str) -> bool:
    return text == "auto" or text in BUILTIN_MODEL_NAMES or bool(MODEL_CALLABLE.match(text))


#: strategies that run in rounds (the rest apply updates as they come)
SYNC_STRATEGIES = tuple(name for name, r in REGISTRY.items() if r.sync)
#: strategies that buffer K updates per server step and take a server optimizer
BUFFERED_STRATEGIES = tuple(name for name, r in REGISTRY.items() if r.server_optimizer)

SETTINGS: tuple[Setting, ...] = (
    Setting("strategy", str, "fedavg", "federated algorithm",
            choices=tuple(REGISTRY)),
    Setting("task", str, "digits", "data set; images: the one `dataset` names (mnist, "
            "fashion-mnist, cifar10 are presets of it: hub, cached)", choices=TASK_NAMES),
    Setting("dataset", str, "", f"task = images: {DATASET_ALLOWED}", check=_path,
            allowed="a hub id or a local path (task = images only)"),
    Setting("image-column", str, "", "image tasks: the column of images; empty = the "
            "image-typed one", check=_path, allowed="a column name (image tasks only)"),
    Setting("label-column", str, "", "image tasks: the column of integer class ids; empty = "
            "the ClassLabel or integer one", check=_path,
            allowed="a column name (image tasks only)"),
    Setting("test-fraction", float, 0.2, "task = images without a test split: fraction of "
            "the examples held out for testing (by the seed)", check=lambda x: 0 < x < 1,
            allowed="a number in (0, 1)"),
    Setting("model", str, "auto", "auto = the task's own: small-cnn for digits, mnist-cnn for "
            "(fashion-)mnist and images, resnet18 for cifar10", check=_model,
            allowed=MODEL_ALLOWED),
    Setting("seed", int, 0, "drives data split, speeds, sampling and init",
            check=lambda x: 0 <= x <= SEED_MAX, allowed=f"an integer in [0, {SEED_MAX}]"),
    Setting("num-clients", int, 0, "N, the number of clients (one per node); 0 = every node "
            f"the Grid has (simulate() and asyncfl-flwr-run: {SIMULATED_CLIENTS})",
            check=_non_negative, allowed="an integer >= 0, at most the task's training "
            f"examples (digits: {TRAIN_EXAMPLES['digits']}) or {MAX_CLIENTS:,} (mean: "
            f"{CLIENT_LIMITS['mean']:,})"),
    Setting("min-available-nodes", int, 2, "num-clients = 0 in a deployment: wait (at most "
            "120 s) until this many nodes are connected, then use every connected node",
            check=_positive, allowed="an integer >= 1"),
    Setting("num-server-rounds", int, 10, "rounds (sync) or global versions (async)",
            check=_positive, allowed="an integer >= 1"),
    Setting("partition", str, "iid", "how training data is split over clients",
            choices=("iid", "dirichlet", "pathological", "shard", "label-skew")),
    Setting("alpha", float, 0.5, "Dirichlet concentration (partition = dirichlet); alpha of "
            "task = synthetic",
            check=_positive, allowed=_POSITIVE),
    Setting("synthetic-beta", float, 0.5, "task = synthetic: beta, how much clients' inputs "
            "differ", check=_non_negative, allowed=_NON_NEGATIVE),
    Setting("classes-per-client", int, 2, "classes per client (partition = pathological); "
            "label-sorted shards per client (partition = shard)",
            check=_positive, allowed="an integer >= 1"),
    Setting("label-groups", int, 2, "partition = label-skew: disjoint class groups; client i "
            "holds group i mod label-groups", check=_positive, allowed="an integer >= 1"),
    Setting("fraction", float, 1.0, "C, the fraction of clients sampled per round",
            check=_fraction, allowed="a number in (0, 1]"),
    Setting("local-epochs", int, 2, "E, local epochs (used when local-steps = 0)",
            check=_positive, allowed="an integer >= 1"),
    Setting("local-steps", int, 0, "K, local SGD steps; 0 means run local-epochs epochs "
            "(esync: the slowest worker's steps per round, the others run what fits; 0 means 1)",
            check=_non_negative, allowed="an integer >= 0"),
    Setting("batch-size", int, 10, "B, minibatch size; 0 means the whole partition",
            check=_non_negative, allowed="an integer >= 0"),
    Setting("torch-device", str, "cpu", "where ClientApps train and the ServerApp evaluates "
            "(a node's --node-config torch-device=... overrides it); auto: cuda where the "
            "process sees a GPU. Bit-identical runs across runtimes on cpu only",
            choices=DEVICES),
    Setting("client-threads", int, 1, "torch threads per ClientApp call; 1 keeps runs "
            "bit-identical across runtimes, more speeds up large models inline",
            check=_positive, allowed="an integer >= 1"),
    Setting("parallel-clients", int, 1, "inline runtime, virtual clock: train up to this "
            "many pending client tasks together as one vectorized computation (same results "
            "to float rounding; 1 = one at a time, bit-identical across runtimes). 0 or "
            "'auto': as many as are pending, at most floor(available / (2 x per client)) "
            "where per client = 4 bytes x (4 x the model's parameters: weights, gradients, "
            "their copies, a gradient sum; plain SGD keeps no optimizer state) + 2 x a "
            "batch's activations, available = free CUDA memory (torch.cuda.mem_get_info) "
            f"or free RAM (psutil), at most {PARALLEL_AUTO_MAX} ({PARALLEL_AUTO_NO_PSUTIL} on "
            "cpu without psutil); one at a time, quietly, where clients cannot be trained "
            "together (wall clock, apsb, faults, batch norm, a model torch.func cannot "
            "vectorize, another runtime). summary.json says which P ran",
            check=_non_negative, allowed="0 or 'auto', or an integer >= 1",
            aliases=(("auto", 0),)),
    Setting("lr", float, 0.2, "client learning rate eta", check=_positive, allowed=_POSITIVE),
    Setting("server-lr", float, 0.0, "the server step, in the same units as the strategies' "
            "server_lr: the multiple of the clients' move (a delta x server-lr for the "
            f"buffered strategies ({', '.join(BUFFERED_STRATEGIES)}), esync and mifa; gamma = lr x "
            "server-lr for fedsgd, alsgd, asgd, apsb); for adam / yogi / adagrad / amsgrad their "
            "eta. 0 = the algorithm's default: min(1, B/M) for sgd steps (B updates per step: "
            "buffer-size, else 1; M in flight; fedbuff divides its buffer's mean by the "
            "run's measured mean staleness weight, up to a unit step), adam 0.01, yogi 0.01, "
            "adagrad 0.1, amsgrad 0.01, 1 for esync, mifa and fedsgd",
            check=_non_negative, allowed=_NON_NEGATIVE),
    Setting("server-optimizer", str, "auto", "server step of the buffered strategies: sgd "
            "(FedAvgM with server-momentum), adam / yogi / adagrad (Reddi et al. 2021), amsgrad; "
            "auto = amsgrad for fadas, sgd for the others",
            choices=("auto", "sgd", "adam", "yogi", "adagrad", "amsgrad")),
    Setting("server-momentum", float, 0.0, "server momentum beta of server-optimizer = sgd "
            "(FedAvgM); 0 = none", check=lambda x: 0 <= x < 1, allowed="a number in [0, 1)"),
    Setting("server-beta1", float, 0.9, "first-moment decay of adam, yogi, adagrad, amsgrad",
            check=lambda x: 0 <= x < 1, allowed="a number in [0, 1)"),
    Setting("server-beta2", float, 0.99, "second-moment decay of adam, yogi, amsgrad",
            check=lambda x: 0 <= x < 1, allowed="a number in [0, 1)"),
    Setting("server-epsilon", float, 1e-3, "epsilon (Reddi et al.'s tau) of adam, yogi, "
            "adagrad, amsgrad: m / (sqrt(v) + epsilon)", check=_positive, allowed=_POSITIVE),
    Setting("buffer-size", int, 10, "K, updates per server step of the buffered strategies",
            check=_positive, allowed="an integer >= 1"),
    Setting("fadas-threshold", int, 5, "fadas: tau_c; a buffer whose stalest update is "
            "older steps with min(server-lr, 1 / its staleness)", check=_non_negative,
            allowed="an integer >= 0"),
    Setting("concurrency", int, 0, "M, clients training at once (async); 0 = every client",
            check=_non_negative, allowed="an integer >= 0, at most num-clients"),
    Setting("staleness", str, "auto", "staleness weight s(tau) (fedbuff, fedasync, "
            "fedcompass); auto = the strategy's own: constant for fedbuff, polynomial for "
            "fedasync and fedcompass", choices=("auto", "constant", "polynomial", "hinge")),
    Setting("staleness-a", float, 0.5, "a of polynomial (1+tau)^-a and of hinge",
            check=_non_negative, allowed=_NON_NEGATIVE),
    Setting("staleness-b", float, 4.0, "b of hinge: staleness up to b counts fully",
            check=_non_negative, allowed=_NON_NEGATIVE),
    Setting("mixing", float, 0.5, "a, FedAsync's mixing weight", check=_fraction,
            allowed="a number in (0, 1]"),
    Setting("broadcast-latency", float, 0.0, "apsb: seconds before a broadcast model "
            "reaches the workers", check=_non_negative, allowed=_NON_NEGATIVE),
    Setting("apsb-chunk", int, 1, "apsb with a wall clock: iterations between check-ins",
            check=_positive, allowed="an integer >= 1"),
    Setting("esync-eps", float, 0.0, "esync: seconds a worker may overrun the slowest "
            "worker's step", check=_non_negative, allowed=_NON_NEGATIVE),
    Setting("compass-alpha", float, 0.9, "fedcompass: alpha, the weight of a fresh update "
            "(each client moves the model by alpha s(tau) / N)", check=_fraction,
            allowed="a number in (0, 1]"),
    Setting("compass-q-ratio", float, 0.2, "fedcompass: Q_min / Q_max, the fewest local "
            "steps a task gets as a share of local-steps", check=_fraction,
            allowed="a number in (0, 1]"),
    Setting("compass-lambda", float, 1.5, "fedcompass: an arrival group waits up to lambda "
            "times its expected task time", check=lambda x: x >= 1, allowed="a number >= 1"),
    Setting("clock", str, "virtual", "virtual: durations computed; wall: real time",
            choices=("virtual", "wall")),
    Setting("delay-dist", str, "lognormal", "distribution of per-step compute times; the "
            "default, lognormal with delay-std 0.5 at delay-mean 1, keeps 90% of the clients "
            "within 0.41-1.95 s and the fastest of 100,000 about 9x quicker than the mean "
            "(exponential: one client in 1,000 is 1,000x quicker)",
            choices=("normal", "exponential", "uniform", "lognormal", "constant", "trace")),
    Setting("delay-mean", float, 1.0, "mean per-step time, seconds (normal, exponential, "
            "lognormal, constant)", check=_positive, allowed=_POSITIVE),
    Setting("delay-std", float, 0.5, "std of per-step time, seconds (normal, lognormal)",
            check=_non_negative, allowed=_NON_NEGATIVE),
    Setting("delay-low", float, 0.5, "lower bound of per-step time (uniform)",
            check=_non_negative, allowed=_NON_NEGATIVE),
    Setting("delay-high", float, 1.5, "upper bound of per-step time (uniform)",
            check=_positive, allowed=_POSITIVE),
    Setting("delay-jitter", float, 0.0, "relative std of each step's time around the "
            "client's own (0 = none)", check=_non_negative, allowed=_NON_NEGATIVE),
    Setting("delay-profile", str, "", "per-step times '1,2,4,8' or speed classes "
            "'gpu-fast*2,cpu', cycled over clients; overrides delay-dist", check=_delay_profile,
            allowed=PROFILE_ALLOWED),
    Setting("delay-trace", str, "", "delay-dist = trace: CSV of recorded per-task times "
            "(client + step_time, or client + duration + steps, e.g. a wall-clock run's "
            "events.csv), replayed per client and task", check=_path,
            allowed=f"a path to a CSV file of at most {TRACE_MAX_BYTES // 2**20} MiB"),
    Setting("availability", str, "always", "when clients are online (virtual clock): "
            "always; exponential on/off periods (availability-on / -off means); or the "
            "windows of availability-trace. Offline clients get no task; a task whose client "
            "leaves is lost", choices=("always", "exponential", "trace")),
    Setting("availability-on", float, 600.0, "availability = exponential: mean seconds a "
            "client stays online", check=_positive, allowed=_POSITIVE),
    Setting("availability-off", float, 300.0, "availability = exponential: mean seconds a "
            "client stays offline", check=_positive, allowed=_POSITIVE),
    Setting("availability-trace", str, "", "availability = trace: CSV of online windows "
            "(client, start, end in seconds), cycled over clients", check=_path,
            allowed=f"a path to a CSV file of at most {TRACE_MAX_BYTES // 2**20} MiB"),
    Setting("arrival-rate", float, 0.0, "clients joining per second (virtual clock): "
            "after the first clients-at-start, the others arrive as a Poisson process, "
            "offline before; 0: every client from the start", check=_non_negative,
            allowed=_NON_NEGATIVE),
    Setting("clients-at-start", int, 1, "arrival-rate > 0: clients there from the start",
            check=_non_negative, allowed="an integer >= 0"),
    Setting("comm-latency", float, 0.0, "one-way message latency, seconds",
            check=_non_negative, allowed=_NON_NEGATIVE),
    Setting("comm-bandwidth", float, 0.0, "bytes per second each way; 0 = unlimited",
            check=_non_negative, allowed=_NON_NEGATIVE),
    Setting("comm-profile", str, "", "per-client links, cycled over clients: classes "
            "'wifi*3,4g' or 'latency:down:up' (seconds, bytes/s; 0 = unlimited); overrides "
            "comm-latency and comm-bandwidth", check=_network_profile,
            allowed="empty, or comma-separated classes "
            f"{', '.join(NETWORK_CLASSES)} or latency:down:up triples of numbers >= 0, each "
            "optionally *count"),
    Setting("time-budget", float, 0.0, "stop once the run's clock passes this many seconds "
            "(0: run all num-server-rounds)", check=_non_negative, allowed=_NON_NEGATIVE),
    Setting("stop-file", str, "", "a path: once a file exists there, the run ends after the "
            "update or round in progress and writes its results as finished (a graceful stop "
            "from outside); empty: none", check=_path, allowed="a path, or empty"),
    Setting("max-faults", int, 3, "drop a client after this many faulty replies in a row "
            "(0: never)", check=_non_negative, allowed="an integer >= 0"),
    Setting("update-norm-bound", float, 0.0, "if > 0: L2 bound on every update (the delta "
            "from the model the client started from)", check=_non_negative,
            allowed=_NON_NEGATIVE),
    Setting("norm-action", str, "clip", "what to do with an update above the bound",
            choices=("clip", "reject")),
    Setting("outlier-factor", float, 100.0, "reject (as the client's fault) an update whose "
            "L2 norm per local step passes this many times the 90th percentile of the last 50 "
            "accepted ones (after 3), or the divergence limit alone; 0: off",
            check=lambda x: x == 0 or x > 1, allowed="0 or a number > 1"),
    Setting("reply-timeout", float, 0.0, "wall seconds without any reply after which "
            "the oldest task in flight counts as failed; 0: 3600 s for a node's first reply, "
            "then ten times the slowest task seen (or, with a wall clock, expected from the "
            "delays), at least 60 s",
            check=_non_negative, allowed=_NON_NEGATIVE),
    Setting("retry-backoff", float, 2.0, "async strategies, wall clock: seconds a client "
            "rests after a failed task before it gets another, doubling with each failure in "
            "a row (at most 60 s); 0: at once", check=_non_negative, allowed=_NON_NEGATIVE),
    Setting("work-window", float, 0.0, "buffered strategies: seconds of local work a task "
            "should take; a client measured at t seconds a step gets min(local-steps, "
            "max(1, floor(work-window / t))) steps (TimelyFL's adaptive local work); 0: "
            "every task local-steps", check=_non_negative, allowed=_NON_NEGATIVE),
    Setting("staleness-cutoff", int, 0, "async strategies: discard every update this many "
            "or more versions old and send its client the newest model (Ringmaster ASGD's R; "
            "R = concurrency keeps all but updates older than a full turn of the clients in "
            "flight); 0: none", check=_non_negative, allowed="an integer >= 0"),
    Setting("round-timeout", float, 0.0, "sync strategies: a round ends this many seconds "
            "(run's clock) after it was sent, with the replies in by then; the rest are "
            "logged as missing (0: wait for all)", check=_non_negative, allowed=_NON_NEGATIVE),
    Setting("fault-fraction", float, 0.0, "fraction of clients that misbehave on every task "
            "(experiments and tests)", check=_unit_interval, allowed="a number in [0, 1]"),
    Setting("fault-kinds", str, "raise,nan,shape,silent", "how faulty clients misbehave, "
            "cycled over them", check=_fault_kinds,
            allowed="comma-separated: raise, nan, shape, silent"),
    Setting("eval-interval", float, 0.0, "if > 0: evaluate the newest model every this many "
            "seconds of the run's clock instead of every eval-every versions",
            check=lambda x: x == 0 or x >= EVAL_INTERVAL_MIN,
            allowed=f"0, or a number >= {EVAL_INTERVAL_MIN:g}"),
    Setting("fraction-evaluate", float, 0.0, "federated evaluation: the fraction of the "
            "clients with nothing in flight that evaluate each evaluated version on their own "
            "data (evals.csv: clients-* columns; 0: the server's test set only)",
            check=lambda x: 0 <= x <= 1, allowed="a number in [0, 1]"),
    Setting("eval-every", int, 1, "evaluate the newest model every this many versions",
            check=_positive, allowed="an integer >= 1"),
    Setting("target-accuracy", float, 0.9, "accuracy whose first reaching time is reported",
            check=_unit_interval, allowed="a number in [0, 1]"),
    Setting("checkpoint-every", int, 0, "write the whole run state to checkpoint.bin in the "
            "results folder every this many versions (0: never)", check=_non_negative,
            allowed="an integer >= 0"),
    Setting("resume", bool, False, "continue the run named run-name from its checkpoint"),
    Setting("profile", bool, False, "run the ServerApp under cProfile; report written to "
            "server_profile.txt next to the results"),
    Setting("output-dir", str, "outputs", "folder that holds one results folder per run",
            check=_output_dir, allowed="a writable folder path"),
    Setting("run-name", str, "", "results folder name; empty = strategy-task-timestamp; a "
            "taken name gets -2, -3, ... (unless resume)", check=_run_name,
            allowed=f"a folder name of at most {RUN_NAME_MAX} characters, not blank, without "
            "'/', '\\' or NUL"),
    Setting("tracker", str, "", "also write the run's evaluations, config and summary for "
            "experiment trackers, at the end of the run, in the results folder: tensorboard/ "
            "(event files), mlruns/ (an MLflow file store); needs the `tracking` extra",
            check=_tracker, allowed=TRACKER_ALLOWED),
    Setting("launch-id", str, "", "set by simulate() and asyncfl-flwr-run to find the "
            "results folder the ServerApp created; leave empty", check=_launch_id,
            allowed="up to 64 letters, digits and '-'"),
)

"""Every run-config key, in the order of the docs' table (docs/configuration.md, generated
from it by `markdown_table`)."""

SETTINGS_BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
"""Each `Setting` by its run-config key (`"num-clients"`)."""
DEFAULTS: dict[str, ConfigValue] = {s.key: s.default for s in SETTINGS}
"""Each run-config key's default, as `[tool.flwr.app.config]` of pyproject.toml has it."""


def validate_run_config(overrides: Mapping[str, Any]) -> dict[str, ConfigValue]:
    """Return the full run config (defaults + overrides), checked key by key.

    Raises ConfigError for an unknown key, a wrong type, an out-of-range value or an unknown
    name, and for combinations that cannot work (e.g. delay-low >= delay-high).
    """
    unknown = sorted(set(overrides) - set(SETTINGS_BY_KEY))
    if unknown:
        raise ConfigError(
            f"unknown run-config key(s): {', '.join(unknown)}; "
            f"known keys: {', '.join(SETTINGS_BY_KEY)}"
        )
    config = dict(DEFAULTS)
    for key, value in overrides.items():
        config[key] = SETTINGS_BY_KEY[key].parse(value)
    if config["delay-dist"] == "uniform" and config["delay-low"] >= config["delay-high"]:
        raise ConfigError(
            f"run-config 'delay-low' ({config['delay-low']}) must be below 'delay-high' "
            f"({config['delay-high']}) for delay-dist = uniform"
        )
    if config["delay-dist"] == "trace" and not (config["delay-trace"]
                                                 or config["delay-profile"]):
        raise ConfigError("run-config 'delay-dist' = 'trace' needs 'delay-trace': the CSV "
                          "file of recorded times")
    check_task_settings(config)
    if (config["strategy"] in ("lsgd", "alsgd", "apsb", "fedcompass")
            and config["local-steps"] < 1):
        raise ConfigError(
            f"run-config 'local-steps' must be >= 1 for strategy = {config['strategy']} "
            "(K local iterations per round or push; fedcompass: Q_max)"
        )
    if config["round-timeout"] > 0 and config["strategy"] not in SYNC_STRATEGIES:
        raise ConfigError(
            f"run-config 'round-timeout' applies to round-based strategies "
            f"({', '.join(SYNC_STRATEGIES)}), not strategy = {config['strategy']}; "
            "asynchronous ones give up a task after 'reply-timeout'"
        )
    if config["availability"] != "always" and config["clock"] != "virtual":
        raise ConfigError(f"run-config 'availability' = {config['availability']!r} needs "
                          "clock = 'virtual': who is online is a matter of simulated time")
    if config["arrival-rate"] > 0 and config["clock"] != "virtual":
        raise ConfigError("run-config 'arrival-rate' > 0 needs clock = 'virtual': clients "
                          "join in simulated time")
    if config["availability"] == "trace" and not config["availability-trace"]:
        raise ConfigError("run-config 'availability' = 'trace' needs 'availability-trace': "
                          "the CSV file of online windows (client, start, end)")
    if config["staleness-cutoff"] > 0 and config["strategy"] in SYNC_STRATEGIES:
        raise ConfigError(
            f"run-config 'staleness-cutoff' applies to asynchronous strategies, not strategy "
            f"= {config['strategy']}, whose updates are never stale")
    _check_server_optimizer(config)
    _check_parallel_clients(config)
    if config["resume"] and not config["run-name"]:
        raise ConfigError("run-config 'resume' = true needs 'run-name': the run whose "
                          "results folder holds the checkpoint")
    if 0 < config["num-clients"] < config["concurrency"]:
        raise ConfigError(
            f"run-config 'concurrency' ({config['concurrency']}) must be at most 'num-clients' "
            f"({config['num-clients']}); 0 means every client"
        )
    most = TRAIN_EXAMPLES.get(config["task"], CLIENT_LIMITS.get(config["task"], MAX_CLIENTS))
    if config["num-clients"] > most:
        why = (f"task = {config['task']} has {most} training examples and every client needs "
               "one" if config["task"] in TRAIN_EXAMPLES else f"task = {config['task']} "
               "builds every client's data in memory")
        raise ConfigError(f"run-config 'num-clients' = {config['num-clients']} is too large: "
                          f"{why}; allowed: 0 to {most}")
    if config["strategy"] == "running-mean" and config["task"] != "mean":
        raise ConfigError(f"run-config 'strategy' = 'running-mean' averages the values of "
                          f"task = 'mean', not task = {config['task']!r}; use task = 'mean'")
    if (config["eval-interval"] > 0 and config["time-budget"] > 0
            and config["time-budget"] / config["eval-interval"] > MAX_INTERVAL_EVALS):
        raise ConfigError(
            f"run-config 'eval-interval' = {config['eval-interval']:g} with 'time-budget' = "
            f"{config['time-budget']:g} asks for more than {MAX_INTERVAL_EVALS:,} evaluations; "
            f"allowed: eval-interval >= time-budget / {MAX_INTERVAL_EVALS:,} "
            f"= {config['time-budget'] / MAX_INTERVAL_EVALS:g}"
        )
    return config


def check_task_settings(config: Mapping[str, Any]) -> None:
    """The settings that apply to some tasks only are left alone by the others; task = images
    needs its `dataset`. (Whether the data and the model fit is checked when the task is
    built, before any node is contacted: tasks.check_task.)"""
    task = config["task"]
    if task == "images" and not config["dataset"]:
        raise ConfigError(f"run-config 'dataset' must be set for task = 'images'; allowed: "
                          f"{DATASET_ALLOWED}")
    if config["dataset"] and task != "images":
        preset = (f" (task = {task!r} is the preset of its own hub dataset)"
                  if task in PRESET_NAMES else "")
        raise ConfigError(f"run-config 'dataset' applies to task = 'images', not task = "
                          f"{task!r}{preset}")
    for key in ("image-column", "label-column"):
        if config[key] and task not in IMAGE_TASKS:
            raise ConfigError(f"run-config '{key}' applies to the image tasks "
                              f"({', '.join(IMAGE_TASKS)}), not task = {task!r}")
    if config["model"] != "auto" and task not in MODEL_TASKS:
        raise ConfigError(f"run-config 'model' = {config['model']!r}: task = {task!r} has no "
                          f"model to choose; allowed: auto (models: {', '.join(MODEL_TASKS)})")


def server_optimizer_name(config: Mapping[str, Any]) -> str:
    """The server optimizer a validated config asks for (`auto` resolved)."""
    if config["server-optimizer"] != "auto":
        return config["server-optimizer"]
    return getattr(REGISTRY[config["strategy"]].cls, "default_optimizer", "sgd")


def _check_server_optimizer(config: Mapping[str, Any]) -> None:
    if config["server-optimizer"] != "auto" and config["strategy"] not in BUFFERED_STRATEGIES:
        raise ConfigError(
            f"run-config 'server-optimizer' applies to the buffered strategies "
            f"({', '.join(BUFFERED_STRATEGIES)}), not strategy = {config['strategy']}")
    name = server_optimizer_name(config)
    if config["server-momentum"] > 0 and name != "sgd":
        raise ConfigError(
            f"run-config 'server-momentum' is the momentum of server-optimizer = sgd "
            f"(FedAvgM); server-optimizer = {name} takes 'server-beta1' instead")


def parallel_problem(config: Mapping[str, Any]) -> str:
    """Why the run config's clients cannot be trained together ('' if nothing in the config
    stands against it; the model is checked when the inline Grid is built: tools/together.py).
    """
    if config["clock"] != "virtual":
        return ("with clock = wall replies apply in arrival order and clients sleep their "
                "delays, so they cannot wait to be trained together; it needs clock = virtual")
    if config["strategy"] == "apsb":
        return ("apsb sends tasks in segments whose local model stays on the node between "
                "messages; they are not trained together")
    if config["task"] not in MODEL_TASKS + ("synthetic",):
        return f"task = {config['task']} trains no torch model"
    if config["fault-fraction"] > 0:
        return ("injected faults (fault-fraction > 0) are the ClientApp's, one message at "
                "a time")
    return ""


def _check_parallel_clients(config: Mapping[str, Any]) -> None:
    """What training clients together cannot reproduce is refused when P > 1 is asked for;
    auto (0) falls back to one at a time instead (tools/together.py)."""
    size = config["parallel-clients"]
    if size in (1, PARALLEL_AUTO):
        return
    if why := parallel_problem(config):
        raise ConfigError(f"run-config 'parallel-clients' = {size}: {why}; set "
                          "parallel-clients = 1")


class _Reads(dict):
    """A run config that records which keys are read from it."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.read: list[str] = []

    def __getitem__(self, key: str) -> Any:
        if key not in self.read:
            self.read.append(key)
        return super().__getitem__(key)


def changed_strategy_settings(config: Mapping[str, Any]) -> dict[str, ConfigValue]:
    """The run-config keys the strategy reads (through its registered settings) that differ
    from their defaults: what a figure's title must name beside the strategy."""
    reads = _Reads(config)
    REGISTRY[config["strategy"]].settings(reads)
    return {key: config[key] for key in reads.read if config[key] != DEFAULTS[key]}


def config_warnings(config: Mapping[str, Any]) -> list[str]:
    """Settings of a validated config that the strategy overrides: each is a run-config that
    does not do what it says. Settings at their default say nothing and are not reported."""
    notes = []
    for key, fixed in FIXED_BY_STRATEGY.get(config["strategy"], {}).items():
        if config[key] not in (fixed, DEFAULTS[key]):
            notes.append(f"run-config '{key}' = {config[key]} has no effect: strategy = "
                         f"{config['strategy']} fixes {key} = {fixed}")
    return notes


def check_local_files(config: Mapping[str, Any]) -> None:
    """Check the files the ServerApp reads (the delay-trace CSV, a local dataset) and the
    tracker packages it imports, where it runs: nodes validate the same run config without
    them. A trace must be a regular file of at most TRACE_MAX_BYTES, so that /dev/zero or a
    huge file is refused before it is read; a dataset that is no hub id must exist."""
    missing = missing_packages(parse_trackers(config["tracker"]))
    if missing:
        raise ConfigError(f"run-config 'tracker' = {config['tracker']!r} needs "
                          f"{' and '.join(missing)}, not installed here: {INSTALL_HINT}")
    if config["task"] == "images":
        from asyncfl.tasks.images import local_path

        local_path(config["dataset"])
    if config["delay-dist"] == "trace" and not config["delay-profile"]:
        _check_trace_file("delay-trace", config["delay-trace"])
    if config["availability"] == "trace":
        _check_trace_file("availability-trace", config["availability-trace"])


def _check_trace_file(setting: str, path: str) -> None:
    if not path:
        return
    allowed = f"a path to a CSV file of at most {TRACE_MAX_BYTES // 2**20} MiB"
    try:
        info = os.stat(path)
    except OSError as error:
        raise ConfigError(f"run-config '{setting}' = {path!r}: cannot read it "
                          f"({error.strerror}); allowed: {allowed}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"run-config '{setting}' = {path!r} is not a regular file; "
                          f"allowed: {allowed}")
    if info.st_size > TRACE_MAX_BYTES:
        raise ConfigError(f"run-config '{setting}' = {path!r} has {info.st_size:,} bytes; "
                          f"allowed: {allowed}")


def with_node_count(config: dict[str, ConfigValue],
                    node_config: Mapping[str, Any]) -> dict[str, ConfigValue]:
    """A ClientApp's config with num-clients = 0 resolved to the node's `num-partitions`
    (Flower's simulation sets it; a deployed node gets it with --node-config)."""
    if config["num-clients"] != 0:
        return config
    if "num-partitions" not in node_config:
        raise ConfigError("run-config 'num-clients' = 0 needs the node's num-partitions: start "
                          "the SuperNode with --node-config \"partition-id=<i> "
                          "num-partitions=<N>\", or set num-clients")
    return validate_run_config({**config, "num-clients": int(node_config["num-partitions"])})


def from_python_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Map `simulate(num_clients=5)` style names to run-config keys (`num-clients`)."""
    return {key.replace("_", "-"): value for key, value in kwargs.items()}


def markdown_table() -> str:
    """The run-config keys as the Markdown table of the docs' configuration page
    (`python -m asyncfl.config docs/configuration.md` rewrites the one there)."""
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        allowed = ", ".join(s.choices) if s.choices else (s.allowed or s.type.__name__)
        default = repr(s.default) if isinstance(s.default, str) else s.default
        rows.append(f"| `{s.key}` | `{default}` | {allowed} | {s.help} |")
    return "\n".join(rows) + "\n"


def update_table(path: str) -> None:
    """Rewrite the run-config table that follows the `config-table` marker in a Markdown file
    (docs/configuration.md)."""
    import pathlib

    page = pathlib.Path(path)
    text = page.read_text()
    start = text.index("\n", text.index("<!-- config-table")) + 1
    end = text.index("\n\n", start)
    page.write_text(text[:start] + markdown_table().rstrip("\n") + text[end:])


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1:
        update_table(sys.argv[1])
    else:
        print(markdown_table(), end="")
