"""A sweep's grid: `--grid` and `--seeds` parsed, the grid's points, and every (point, seed)
run planned with its config validated and fingerprinted."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncfl.config import SETTINGS_BY_KEY, ConfigError, validate_run_config

#: keys the sweep sets for every run itself
RESERVED = ("seed", "output-dir", "run-name", "launch-id", "resume")
#: longest run-name made from a grid point (longer ones become p<index>-<config id>)
NAME_MAX = 80
VALUE = re.compile(r"""'[^']*'|"[^"]*"|[^,]+""")


@dataclass(frozen=True)
class Point:
    """One setting of the sweep: a name (shown in tables and figures) and its run-config."""

    name: str
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class Run:
    """One (point, seed) of a sweep; `config_id` fingerprints its whole validated config, so
    a resumed sweep skips a run only if nothing about it changed."""

    point: Point
    seed: int
    config_id: str
    run_name: str
    overrides: Mapping[str, Any]


def coerce(key: str, raw: str) -> Any:
    """A grid value written on the command line, as the type its run-config key takes."""
    if key not in SETTINGS_BY_KEY:
        raise ConfigError(f"--grid: unknown run-config key {key!r}; known keys: "
                          f"{', '.join(SETTINGS_BY_KEY)}")
    kind = SETTINGS_BY_KEY[key].type
    text = raw.strip()
    if kind is str:
        return text[1:-1] if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"" else text
    try:
        if kind is bool:
            return {"true": True, "false": False}[text.lower()]
        return kind(text)
    except (KeyError, ValueError):
        raise ConfigError(f"--grid: run-config '{key}' = {text!r} is not a {kind.__name__}"
                          ) from None


def parse_grid(text: str) -> dict[str, list[Any]]:
    """`"strategy=fedavg,fedbuff buffer-size=5,10"` -> {key: values}; a string value holding
    commas is quoted (`delay-profile='1,2','1,8'`)."""
    grid: dict[str, list[Any]] = {}
    for token in re.findall(r"""(?:[^\s'"]|'[^']*'|"[^"]*")+""", text):
        key, sep, values = token.partition("=")
        if not sep or not values:
            raise ConfigError(f"--grid: cannot read {token!r}; write key=value1,value2 pairs "
                              "separated by spaces")
        if key in grid:
            raise ConfigError(f"--grid: run-config '{key}' is listed twice")
        if key in RESERVED:
            raise ConfigError(f"--grid: run-config '{key}' is set by the sweep"
                              + (" (use --seeds)" if key == "seed" else ""))
        grid[key] = [coerce(key, v) for v in VALUE.findall(values)]
    return grid


def parse_seeds(text: str) -> list[int]:
    """`--seeds`: a count ("3": seeds 0, 1, 2) or a comma-separated list ("0,5,7")."""
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return list(range(count))
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds = {text!r}: allowed: a count >= 1 or comma-separated "
                          "seeds (0,1,2)") from None
    if not seeds or len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seeds = {text!r}: list each seed once")
    return seeds


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[Point]:
    """The product of the grid's values, each named `key=value key=value`."""
    keys = list(grid)
    return [Point(" ".join(f"{k}={v}" for k, v in zip(keys, combo, strict=True)) or "base",
                  dict(zip(keys, combo, strict=True)))
            for combo in itertools.product(*grid.values())]


def run_name(point: Point, index: int, seed: int, config_id: str) -> str:
    """A readable results-folder name for a run, short enough for a run-name."""
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", point.name).strip("_") or "base"
    if len(slug) > NAME_MAX:
        slug = f"p{index}-{config_id[:8]}"
    return f"{slug}-s{seed}"


def plan(points: Sequence[Point], seeds: Sequence[int], fixed: Mapping[str, Any],
         output_dir: Path) -> list[Run]:
    """Every run of the sweep, each config validated: a bad key or value in any point is a
    ConfigError naming it (and the point) before anything runs."""
    for key in RESERVED:
        if key in fixed:
            raise ConfigError(f"--run-config: run-config '{key}' is set by the sweep"
                              + (" (use --seeds)" if key == "seed" else ""))
    runs = []
    for index, point in enumerate(points):
        for seed in seeds:
            overrides = {**fixed, **point.settings, "seed": seed}
            try:
                config = validate_run_config(overrides)
            except ConfigError as err:
                raise ConfigError(f"grid point {point.name!r}: {err}") from None
            identity = {k: v for k, v in config.items() if k not in RESERVED}
            config_id = hashlib.sha1(json.dumps([identity, seed], sort_keys=True).encode()
                                     ).hexdigest()[:12]
            name = run_name(point, index, seed, config_id)
            runs.append(Run(point, seed, config_id, name, {
                **overrides, "output-dir": str(output_dir / "runs"), "run-name": name}))
    return runs
