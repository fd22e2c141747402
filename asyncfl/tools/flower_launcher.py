"""`flwr run .` on a private local SuperLink that this command starts and stops by PID.

`flwr run .` with Flower's default `:local:` connection leaves a detached SuperLink running
and, unless told otherwise, reinstalls the app's dependencies into a fresh environment. This
wrapper instead:

1. validates the run config, the trace file and the output folder (a mistake is reported
   before anything starts; a malformed `--run-config` token is one);
2. starts `flower-superlink --simulation --disable-runtime-dependency-installation` on free
   127.0.0.1 ports, with its own FLWR_HOME holding one connection, `asyncfl-local`;
3. runs `flwr run <app> asyncfl-local --stream` with num-supernodes = num-clients (0: 10);
4. stops every process group it started (the SuperLink's, `flwr run`'s, and those their
   processes opened: SuperExec, the simulation) by PID, whatever happened, also on SIGTERM or
   SIGINT, and removes FLWR_HOME;
5. exits 0 only if the ServerApp wrote this run's summary.json (`flwr run` itself exits 0
   when the ServerApp fails).

`flwr run`'s output passes through, its progress lines drawn as a progress bar. With no
`strategy` in `--run-config` (the main job) it runs FedAvg, then FedBuff, on the same clients
and draws both against virtual time (`--compare` picks others; `--compare ""`: one run).

Usage: `asyncfl-flwr-run --run-config "strategy='fedavg' num-clients=10"`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from types import FrameType
from uuid import uuid4

import httpx
from flwr.common.config import parse_config_args
from tqdm import tqdm

from asyncfl.config import (
    SIMULATED_CLIENTS,
    ConfigError,
    check_local_files,
    validate_run_config,
)
from asyncfl.plots import plot_comparison, read_csv
from asyncfl.results import (
    check_output_dir,
    claim_run_dir,
    default_run_name,
    find_launched_run,
    run_dir,
    time_to_target,
    write_table,
)

CONNECTION = "asyncfl-local"
DEFAULT_COMPARISON = "fedavg,fedbuff"  # the main job: synchronous against asynchronous
COMPARISON_COLUMNS = ("strategy", "run", "final_accuracy", "virtual_time_s", "time_to_target_s",
                      "speedup")
#: the ServerApp's log lines that move the bar: the start (how many versions or rounds), the
#: periodic progress line, each evaluation and the closing summary
STARTED_LINE = re.compile(r"Starting \w+ for (\d+) (round|version)s")
PROGRESS_LINE = re.compile(r"progress: version (\d+)/(\d+)")
EVALUATED_LINE = re.compile(r"\bversion (\d+) \| (?:virtual|wall) ")
FINISHED_LINE = re.compile(r" finished in [\d.]+ s[^:]*: (\d+) (?:round|version)s")
STARTUP_SECONDS = 30.0
STOP_SECONDS = 15.0


def flower_executable(name: str) -> str:
    """A Flower executable (`flwr`, `flower-superlink`, ...) next to the running interpreter,
    so `.venv/bin/python -m ...` works without an activated venv; else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found next to {sys.executable} or on PATH; install "
                           "flwr[simulation] into this interpreter's environment")
    return found


def flower_env(home: Path, ray_address: str = "") -> dict[str, str]:
    """The environment for Flower processes: their own FLWR_HOME, no update check or
    dependency installation, and the interpreter's folder first on PATH (the SuperLink starts
    `flower-superexec` and `flwr-simulation` by name). RAY_ADDRESS is `ray_address` or unset:
    the simulation engine's `ray.init` joins that cluster, else starts a Ray of its own."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PATH": path,
           "RAY_ADDRESS": ray_address}
    if not ray_address:
        del env["RAY_ADDRESS"]
    return env


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
        flower_executable("flower-superlink"), "--insecure", "--simulation",
        "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1", "--port", str(api_port),
        "--control-api-address", f"127.0.0.1:{control_port}",
        "--fleet-api-address", f"127.0.0.1:{fleet_port}",
        "--log-file", str(home / "superlink.log"),
    ]
    process = subprocess.Popen(command, env=env, cwd=app_dir, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
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
        raise RuntimeError(f"flower-superlink did not start within {STARTUP_SECONDS:.0f} s")
    except BaseException:  # a failed start, or SIGTERM / SIGINT meanwhile
        stop_process_group(process)
        raise


@contextmanager
def local_superlink(app_dir: Path, ray_address: str = "",
                    ) -> Iterator[tuple[subprocess.Popen, dict]]:
    """A private simulation SuperLink with its own FLWR_HOME and `asyncfl-local` connection
    (its simulations on the Ray cluster at `ray_address`, if given); yields the process and
    the environment for `flwr`; stops it by PID on exit."""
    home = Path(tempfile.mkdtemp(prefix="asyncfl-flwr-"))
    env = flower_env(home, ray_address)
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


def live_processes() -> dict[int, tuple[str, int, int]]:
    """PID -> (state, parent PID, process group) of every process in /proc."""
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    found = {}
    for entry in proc.iterdir():
        stat = process_stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None:
            found[int(entry.name)] = stat
    return found


def group_members(pgid: int) -> list[int]:
    """PIDs of the live processes in process group `pgid`.

    Zombies do not count: a killed child reparented to PID 1 stays a zombie until PID 1 reaps
    it, which some container inits never do. Without /proc, any member (zombie or not) counts.
    """
    if not Path("/proc").is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    return [pid for pid, (state, _, pgrp) in live_processes().items()
            if pgrp == pgid and state not in ("Z", "X")]


def descendant_groups(pid: int) -> list[int]:
    """The process groups of `pid` and of every live descendant, `pid`'s own first.

    Flower starts SuperExec in a session of its own (and SuperExec the ServerApp or the
    simulation), so the SuperLink's group alone does not hold everything it started."""
    processes = live_processes()
    children: dict[int, list[int]] = {}
    for child, (_, parent, _) in processes.items():
        children.setdefault(parent, []).append(child)
    groups, todo = [os.getpgid(pid)] if pid in processes else [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            if processes[child][2] not in groups and processes[child][0] not in ("Z", "X"):
                groups.append(processes[child][2])
    own = os.getpgrp()
    return [g for g in groups if g != own]


def wait_groups_gone(groups: list[int], seconds: float) -> bool:
    """Poll until no live process is left in any of `groups`; whether that happened in time."""
    deadline = time.monotonic() + seconds
    while any(group_members(g) for g in groups):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group led by `process` (by its PID) and the groups its
    descendants opened, SIGKILL what lingers, and wait until every process of those groups is
    gone (the leader reaped)."""
    groups = descendant_groups(process.pid) or [process.pid]
    for sig, wait in ((signal.SIGTERM, STOP_SECONDS), (signal.SIGKILL, 5.0)):
        for group in groups:
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                pass
        if wait_groups_gone(groups, wait):
            break
    try:
        process.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"process {process.pid} survived SIGKILL") from None


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


def run_flower(overrides: dict, app_dir: Path, cpus_per_client: int = 1,
               gpus_per_client: float = 0.0, ray_address: str = "") -> Path:
    """Validate, run `flwr run` on a private SuperLink, stop it; return the results folder.
    `gpus_per_client` is the share of a GPU Ray gives each ClientApp (0.25: four share one).
    `ray_address`: the simulation runs on that existing Ray cluster (its ClientApps on every
    node's CPUs), not on a Ray started for this machine's cores."""
    if validate_run_config(overrides)["num-clients"] == 0:
        overrides = {**overrides, "num-clients": SIMULATED_CLIENTS}
    overrides, config = resolve_run(overrides)
    federation = (f"num-supernodes={config['num-clients']} "
                  f"client-resources-num-cpus={cpus_per_client} "
                  f"client-resources-num-gpus={gpus_per_client:g}")
    if not ray_address:  # joining a cluster, ray.init must not be given a CPU count
        federation += f" init-args-num-cpus={os.cpu_count() or 1}"
    with local_superlink(app_dir, ray_address) as (_, env):
        command = [flower_executable("flwr"), "run", str(app_dir), CONNECTION, "--stream",
                   "--run-config", format_run_config(overrides), "--federation-config", federation]
        flwr = subprocess.Popen(command, env=env, start_new_session=True, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            follow_output(flwr.stdout, config["strategy"])
            code = flwr.wait()
        finally:
            stop_process_group(flwr)
    return written_results(config, f" (flwr run exited with code {code})")


def follow_output(lines: Iterable[str], label: str) -> None:
    """Pass `flwr run`'s output through, drawing the ServerApp's progress as a bar: its
    start line sets the total, progress and evaluation lines move it, the summary ends it.
    Progress lines are the bar's alone; every other line is printed."""
    with tqdm(desc=label, unit="version", file=sys.stderr, dynamic_ncols=True) as bar:
        for line in lines:
            progress = PROGRESS_LINE.search(line)
            if progress is not None:
                bar.total = int(progress.group(2))
                bar.update(int(progress.group(1)) - bar.n)
                continue
            bar.write(line.rstrip("\n"), file=sys.stdout)
            if started := STARTED_LINE.search(line):
                bar.reset(total=int(started.group(1)))
                bar.unit = started.group(2)
            elif done := (EVALUATED_LINE.search(line) or FINISHED_LINE.search(line)):
                bar.update(max(0, int(done.group(1)) - bar.n))


def same_time_as(out: Path) -> dict:
    """Settings that give a compared run the virtual time `out` took (and at most twice its
    versions): what each strategy reaches in the same time."""
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    return {"time-budget": summary["virtual_time"],
            "num-server-rounds": 2 * config["num-server-rounds"]}


def compare_runs(outs: list[Path], overrides: dict) -> Path:
    """comparison.png and comparison.md/.csv of finished runs, in a folder of their own."""
    names = "-".join(json.loads((out / "config.json").read_text())["strategy"] for out in outs)
    config = validate_run_config({**overrides, "run-name": f"compare-{names}"})
    return write_comparison(outs, claim_run_dir(config))


def write_comparison(outs: list[Path], dest: Path) -> Path:
    """comparison.png (`plot_comparison`: test accuracy against virtual time, each run marked
    where it first reaches the first run's `target-accuracy`) and comparison.md / .csv: final
    accuracy, virtual time, time to that target and the speed-up over the first run."""
    runs, configs = [], []
    for out in map(Path, outs):
        configs.append(json.loads((out / "config.json").read_text()))
        runs.append((configs[-1]["strategy"], out, read_csv(out / "evals.csv")))
    reference = configs[0]["target-accuracy"]
    reached = [time_to_target(evals, reference) for _, _, evals in runs]
    reference_time = reached[0]
    path = plot_comparison([(strategy, evals, when) for (strategy, _, evals), when
                            in zip(runs, reached, strict=True)], reference, dest)
    rows = []
    for (strategy, out, evals), when in zip(runs, reached, strict=True):
        rows.append({"strategy": strategy, "run": out.name,
                     "final_accuracy": round(evals[-1]["accuracy"], 4),
                     "virtual_time_s": round(evals[-1]["virtual_time"], 2),
                     "time_to_target_s": "" if when is None else round(when, 2),
                     "speedup": "" if None in (when, reference_time) or not when else
                     round(reference_time / when, 1)})
    write_table(Path(dest) / "comparison", rows, COMPARISON_COLUMNS)
    return path


class Stopped(Exception):
    """SIGTERM or SIGINT arrived: unwind, stopping what was started."""


def stop_on_signal(signum: int, frame: FrameType | None) -> None:
    """Turn the first SIGTERM / SIGINT into Stopped; ignore more while cleaning up."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default=".", help="the Flower app folder (default: .)")
    parser.add_argument("--run-config", default="", help="run-config overrides, as for flwr run")
    parser.add_argument("--cpus-per-client", type=int, default=1,
                        help="Ray CPUs per ClientApp (1 lets every core run a client)")
    parser.add_argument("--compare", default=None, metavar="STRATEGIES",
                        help="comma-separated strategies to run one after another on the same "
                             "clients, drawn together against virtual time (default: "
                             f"{DEFAULT_COMPARISON} when --run-config names no strategy; "
                             "'' for one run)")
    parser.add_argument("--gpus-per-client", type=float, default=0.0,
                        help="share of a GPU per ClientApp, e.g. 0.25 (with torch-device "
                             "= 'cuda' or 'auto' in --run-config); default 0: CPU only")
    parser.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS", ""),
                        help="run the simulation on this existing Ray cluster (host:port of "
                             "`ray start --head`; default: $RAY_ADDRESS, else a Ray of its own)")
    args = parser.parse_args(argv)
    if args.gpus_per_client < 0:
        parser.error(f"--gpus-per-client = {args.gpus_per_client} must be >= 0")
    app = Path(args.app).resolve()
    if not (app / "pyproject.toml").is_file():
        own = Path(__file__).resolve().parents[2]
        hint = (f" (asyncfl's own app is {own})" if (own / "pyproject.toml").is_file()
                else "")
        parser.error(f"--app {args.app}: {app} has no pyproject.toml, so it is not a Flower "
                     f"app; run from the app's folder or pass --app <folder>{hint}")
    previous = {sig: signal.signal(sig, stop_on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        overrides = parse_run_config(args.run_config)
        compare = args.compare
        if compare is None:
            compare = "" if "strategy" in overrides else DEFAULT_COMPARISON
        runs = [{**overrides, "strategy": s} for s in compare.split(",") if s] or [overrides]
        for run in runs:  # every run's settings checked before the first starts
            validate_run_config(run)
        outs = []
        for run in runs:
            if outs:  # the same virtual time as the first run, up to twice its versions
                run = {**run, **same_time_as(outs[0])}
            outs.append(run_flower(run, app, args.cpus_per_client,
                                   args.gpus_per_client, args.ray_address))
        for out in outs:
            print(f"asyncfl-flwr-run: results in {out}")
        if len(outs) > 1:
            print(f"asyncfl-flwr-run: comparison in {compare_runs(outs, overrides)}")
    except (ConfigError, RuntimeError) as err:
        print(f"asyncfl-flwr-run: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    except Stopped as stop:
        print(f"asyncfl-flwr-run: stopped by {stop}; every process it started is stopped",
              file=sys.stderr)
        return 128 + signal.Signals[str(stop)].value
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
