"""Runtimes that run asyncfl's ServerApp and ClientApp: inline, and Flower's engine."""

from asyncfl.runtime.inline import InlineGrid, SimulationResult, simulate

__all__ = ["InlineGrid", "SimulationResult", "simulate"]
