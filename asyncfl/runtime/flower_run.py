"""`flwr run .` on a private local SuperLink that this command starts and stops by PID.

`flwr run .` with Flower's default `:local:` connection leaves a detached SuperLink running
and, unless told otherwise, reinstalls the app's dependencies into a fresh environment. This
wrapper instead:

1. validates the run config (a mistake is reported before anything starts);
2. starts `flower-superlink --simulation --disable-runtime-dependency-installation` on free
   127.0.0.1 ports, with its own FLWR_HOME holding one connection, `asyncfl-local`;
3. runs `flwr run <app> asyncfl-local --stream` with num-supernodes = num-clients;
4. stops the SuperLink's process group by its PID, whatever happened, and removes FLWR_HOME.

Usage: `asyncfl-flwr-run --run-config "strategy='fedavg' num-clients=10"`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
from flwr.common.config import parse_config_args

from asyncfl.config import ConfigError, validate_run_config
from asyncfl.results import default_run_name, run_dir

CONNECTION = "asyncfl-local"
STARTUP_SECONDS = 30.0
STOP_SECONDS = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def format_run_config(overrides: dict) -> str:
    """A dict back into flwr's `--run-config` syntax."""
    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(v)

    return " ".join(f"{k}={value(v)}" for k, v in overrides.items())


def start_superlink(home: Path, app_dir: Path, env: dict) -> tuple[subprocess.Popen, int]:
    """Start a simulation SuperLink in its own process group; return it and its API port."""
    api_port, control_port, fleet_port = free_port(), free_port(), free_port()
    command = [
        "flower-superlink", "--insecure", "--simulation",
        "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1", "--port", str(api_port),
        "--control-api-address", f"127.0.0.1:{control_port}",
        "--fleet-api-address", f"127.0.0.1:{fleet_port}",
        "--log-file", str(home / "superlink.log"),
    ]
    process = subprocess.Popen(command, env=env, cwd=app_dir, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {process.returncode}; "
                               f"see {home / 'superlink.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=0.5).is_success:
                return process, api_port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_process_group(process)
    raise RuntimeError(f"flower-superlink did not start within {STARTUP_SECONDS:.0f} s")


@contextmanager
def local_superlink(app_dir: Path) -> Iterator[tuple[subprocess.Popen, dict]]:
    """A private simulation SuperLink with its own FLWR_HOME and `asyncfl-local` connection;
    yields the process and the environment for `flwr`; stops it by PID on exit."""
    home = Path(tempfile.mkdtemp(prefix="asyncfl-flwr-"))
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    superlink = None
    try:
        superlink, api_port = start_superlink(home, app_dir, env)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{api_port}"\ninsecure = true\n'
        )
        yield superlink, env
    finally:
        if superlink is not None:
            stop_process_group(superlink)
        shutil.rmtree(home, ignore_errors=True)


def process_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent PID, process group) of a process from /proc, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the fields after the command name (which may hold spaces and parentheses)
    state, ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
    return state, int(ppid), int(pgrp)


def group_members(pgid: int) -> list[int]:
    """PIDs of the live processes in process group `pgid`.

    Zombies do not count: a killed child reparented to PID 1 stays a zombie until PID 1 reaps
    it, which some container inits never do. Without /proc, any member (zombie or not) counts.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        stat = process_stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None and stat[2] == pgid and stat[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def wait_group_gone(pgid: int, seconds: float) -> bool:
    """Poll until no live process is left in group `pgid`; whether that happened in time."""
    deadline = time.monotonic() + seconds
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group led by `process` (by its PID), SIGKILL what lingers, and
    wait until every process of the group is gone (the leader reaped)."""
    for sig, wait in ((signal.SIGTERM, STOP_SECONDS), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        if wait_group_gone(process.pid, wait):
            break
    try:
        process.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"process {process.pid} survived SIGKILL") from None


def resolve_run(overrides: dict) -> tuple[dict, dict]:
    """The overrides with a run-name and an absolute output-dir filled in, and the validated
    config: the results folder is known before the run starts in another process."""
    overrides = dict(overrides)
    config = validate_run_config(overrides)
    if not config["run-name"]:
        overrides["run-name"] = config["run-name"] = default_run_name(config)
    # the ServerApp runs in another process, maybe in another folder: paths become absolute
    for key in ("output-dir", "delay-trace"):
        if config[key] and not Path(config[key]).is_absolute():
            overrides[key] = config[key] = str(Path.cwd() / config[key])
    return overrides, config


def written_results(config: dict, started: float, hint: str = "") -> Path:
    """The run's results folder, or RuntimeError if the run wrote no summary after `started`."""
    out = run_dir(config)
    summary = out / "summary.json"
    if not summary.exists() or summary.stat().st_mtime < started:
        raise RuntimeError(f"the run wrote no results to {out}{hint}")
    return out


def run_flower(overrides: dict, app_dir: Path, cpus_per_client: int = 1,
               gpus_per_client: float = 0.0) -> Path:
    """Validate, run `flwr run` on a private SuperLink, stop it; return the results folder.
    `gpus_per_client` is the share of a GPU Ray gives each ClientApp (0.25: four share one)."""
    overrides, config = resolve_run(overrides)
    started = time.time()
    cpus = os.cpu_count() or 1
    federation = (f"num-supernodes={config['num-clients']} "
                  f"client-resources-num-cpus={cpus_per_client} "
                  f"client-resources-num-gpus={gpus_per_client:g} init-args-num-cpus={cpus}")
    with local_superlink(app_dir) as (_, env):
        command = ["flwr", "run", str(app_dir), CONNECTION, "--stream",
                   "--run-config", format_run_config(overrides), "--federation-config", federation]
        subprocess.run(command, env=env, check=False)
    return written_results(config, started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default=".", help="the Flower app folder (default: .)")
    parser.add_argument("--run-config", default="", help="run-config overrides, as for flwr run")
    parser.add_argument("--cpus-per-client", type=int, default=1,
                        help="Ray CPUs per ClientApp (1 lets every core run a client)")
    parser.add_argument("--gpus-per-client", type=float, default=0.0,
                        help="share of a GPU per ClientApp, e.g. 0.25 (with torch-device "
                             "= 'cuda' or 'auto' in --run-config); default 0: CPU only")
    args = parser.parse_args(argv)
    if args.gpus_per_client < 0:
        parser.error(f"--gpus-per-client = {args.gpus_per_client} must be >= 0")
    overrides = parse_config_args([args.run_config]) if args.run_config else {}
    try:
        out = run_flower(overrides, Path(args.app).resolve(), args.cpus_per_client,
                         args.gpus_per_client)
    except (ConfigError, RuntimeError) as err:
        print(f"asyncfl-flwr-run: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    print(f"asyncfl-flwr-run: results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
