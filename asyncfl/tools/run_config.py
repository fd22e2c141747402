"""A launch's run config: `--run-config` text read (strictly) and written back in flwr's
syntax, resolved before a launch (run-name, launch-id, absolute paths, checks), and the
results folder the launch wrote."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from uuid import uuid4

from flwr.common.config import parse_config_args

from asyncfl.config import ConfigError, check_local_files, validate_run_config
from asyncfl.results import check_output_dir, default_run_name, find_launched_run, run_dir

TOKEN = re.compile(r"""(\S+?)=('[^']*'|"[^"]*"|\S+)""")


def parse_run_config(text: str) -> dict:
    """`--run-config` text as flwr reads it (`k=v` pairs, TOML values, or one .toml file),
    except that anything that is not a `k=v` pair is an error naming it, where flwr drops it
    silently (`"lr =0.1"` would run with the default lr)."""
    text = text.strip()
    if not text:
        return {}
    if text.endswith(".toml") and "=" not in text:
        return parse_config_args([text])
    pairs, position = [], 0
    for match in TOKEN.finditer(text):
        stray = text[position:match.start()].strip()
        if stray:
            break
        pairs.append(match.groups())
        position = match.end()
    else:
        stray = text[position:].strip()
    if stray:
        raise ConfigError(f"--run-config: cannot read {stray.split()[0]!r} in {text!r}; write "
                          "space-separated key=value pairs with no space around '=', strings "
                          "quoted (strategy='fedbuff' num-clients=10)")
    overrides = {}
    for key, value in pairs:
        try:
            overrides[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"--run-config: {key}={value} is not a TOML value (numbers, "
                              "true/false, or a quoted string)") from None
    return overrides


def format_run_config(overrides: dict) -> str:
    """A dict back into flwr's `--run-config` syntax."""
    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(v)

    return " ".join(f"{k}={value(v)}" for k, v in overrides.items())


def resolve_run(overrides: dict) -> tuple[dict, dict]:
    """The overrides with a run-name, a fresh launch-id and absolute paths filled in, and
    the validated config; the trace file and the output folder checked before anything starts.
    The ServerApp creates the results folder (run-name, or run-name-2, ... if taken) and
    records the launch-id in its config.json, which is how `written_results` finds it."""
    overrides = dict(overrides)
    config = validate_run_config(overrides)
    if not config["run-name"]:
        overrides["run-name"] = config["run-name"] = default_run_name(config)
    overrides["launch-id"] = config["launch-id"] = uuid4().hex
    # the ServerApp runs in another process, maybe in another folder: paths become absolute
    for key in ("output-dir", "delay-trace"):
        if config[key] and not Path(config[key]).is_absolute():
            overrides[key] = config[key] = str(Path.cwd() / config[key])
    dataset = Path(config["dataset"]).expanduser()
    if config["dataset"] and dataset.exists():  # a local path (a hub id stays as it is)
        overrides["dataset"] = config["dataset"] = str(dataset.resolve())
    check_local_files(config)
    check_output_dir(config)
    return overrides, config


def written_results(config: dict, hint: str = "") -> Path:
    """The results folder this launch's ServerApp wrote, or RuntimeError if it wrote none."""
    out = find_launched_run(config)
    if out is None:
        raise RuntimeError(f"the run wrote no results to {run_dir(config)}{hint}")
    return out
