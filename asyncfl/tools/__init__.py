"""Tooling apart from the package core (strategies, timing, tasks, the apps): the inline
runtime and `simulate`, the `asyncfl-flwr-run` launcher, a real deployment and sweeps."""
