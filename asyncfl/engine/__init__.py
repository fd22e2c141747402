"""Clocks, delay models and the event loop over a Flower Grid (no task or strategy imports)."""

from asyncfl.engine.clocks import Clock, VirtualClock, WallClock
from asyncfl.engine.delays import DelayModel, draw_step_times, profile_step_times, zero_delays
from asyncfl.engine.event_loop import Completion, EventLoop, TaskTiming, TrafficCounters
from asyncfl.engine.phases import PhaseTimer

__all__ = [
    "Clock",
    "Completion",
    "DelayModel",
    "EventLoop",
    "PhaseTimer",
    "TaskTiming",
    "TrafficCounters",
    "VirtualClock",
    "WallClock",
    "draw_step_times",
    "profile_step_times",
    "zero_delays",
]
