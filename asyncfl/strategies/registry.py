"""Strategy names for the run config: every algorithm module registers its Flower class under
its run-config name with the function that reads its constructor arguments from a run config.
The app builds its strategy table, its checks and its constructor calls from here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from asyncfl.engine.base import AsyncflStrategy, SyncStrategy
from asyncfl.strategies.blocks import ServerOptimizer

Settings = Callable[[Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Registered:
    """A registered strategy: its run-config `name`, its class, what it reads from a run
    config (`settings`: validated run config -> constructor arguments) and whether it takes a
    server optimizer (run-config server-optimizer)."""

    name: str
    cls: type[AsyncflStrategy]
    settings: Settings
    server_optimizer: bool = False

    @property
    def sync(self) -> bool:
        return issubclass(self.cls, SyncStrategy)


REGISTRY: dict[str, Registered] = {}


def register(name: str, cls: type[AsyncflStrategy], *, server_optimizer: bool = False
             ) -> Callable[[Settings], Settings]:
    """Decorator of a strategy module's run-config reader: registers `cls` as `name`."""
    def add(settings: Settings) -> Settings:
        if name in REGISTRY:
            raise ValueError(f"strategy name {name!r} is registered twice")
        REGISTRY[name] = Registered(name, cls, settings, server_optimizer)
        return settings
    return add


def sync_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """What every synchronous strategy reads from a run config."""
    return {"fraction_train": config["fraction"], "round_timeout": config["round-timeout"],
            "min_train_nodes": 1}


def async_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """What every asynchronous strategy reads from a run config."""
    return {"concurrency": config["concurrency"], "retry_backoff": config["retry-backoff"],
            "staleness_cutoff": config["staleness-cutoff"]}


def server_lr(config: Mapping[str, Any]) -> float | None:
    """run-config server-lr: 0 means the algorithm's default (None)."""
    return config["server-lr"] or None


def buffered_settings(config: Mapping[str, Any], default_optimizer: str = "sgd"
                      ) -> dict[str, Any]:
    """What every buffered strategy reads: K, M, the server step (server-optimizer = auto is
    the algorithm's `default_optimizer`); the clients return deltas."""
    name = config["server-optimizer"]
    name = default_optimizer if name == "auto" else name
    step: dict[str, Any] = {"server_optimizer": "sgd", "server_lr": server_lr(config),
                            "server_momentum": config["server-momentum"]}
    if name != "sgd":
        step = {"server_optimizer": ServerOptimizer(
            name, server_lr(config), config["server-momentum"],
            (config["server-beta1"], config["server-beta2"]), config["server-epsilon"])}
    return {**async_settings(config), "buffer_size": config["buffer-size"],
            "client_returns": "delta", "work_window": config["work-window"], **step}
