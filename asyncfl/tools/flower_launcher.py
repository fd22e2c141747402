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
5. exits 0 only if the ServerApp wrote this run's summary.json with status "finished" (`flwr run`
   itself exits 0 when the ServerApp fails).

`flwr run`'s output goes to the run's flwr.log; the terminal gets a start-up line, the
ServerApp's progress as a bar, warnings, errors and where the results are. With no
`strategy` in `--run-config` (the main job) it runs FedAvg, then FedBuff, on the same clients
and draws both against virtual time (`--compare` picks others; `--compare ""`: one run).

Usage: `asyncfl-flwr-run --run-config "strategy='fedavg' num-clients=10"`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import TextIO

from tqdm import tqdm

from asyncfl.config import SIMULATED_CLIENTS, ConfigError, validate_run_config
from asyncfl.plots import plot_comparison, read_csv, setup
from asyncfl.results import (
    claim_run_dir,
    dominance_note,
    participation,
    time_to_target,
    write_table,
)
from asyncfl.tools.processes import freeze_before_exit, stop_process_group
from asyncfl.tools.run_config import (
    format_run_config,
    parse_run_config,
    resolve_run,
    written_results,
)
from asyncfl.tools.superlink import CONNECTION, flower_executable, local_superlink

DEFAULT_COMPARISON = "fedavg,fedbuff"  # the main job: synchronous against asynchronous
COMPARISON_COLUMNS = ("strategy", "run", "final_accuracy", "virtual_time_s", "target_accuracy",
                      "time_to_target_s", "speedup", "time_to_first_final_s",
                      "speedup_to_first_final", "updates", "top_client", "top_client_share",
                      "gini_updates", "dominated")
#: the ServerApp's log lines that move the bar: the start (how many versions or rounds), the
#: periodic progress line, each evaluation and the closing summary
STARTED_LINE = re.compile(r"Starting \w+ for (\d+) (round|version)s")
PROGRESS_LINE = re.compile(r"progress: version (\d+)/(\d+)")
EVALUATED_LINE = re.compile(r"\bversion (\d+) \| (?:virtual|wall) ")
FINISHED_LINE = re.compile(r" finished in [\d.]+ s[^:]*: (\d+) (?:round|version)s")


#: a line of Flower's log: its level after the ANSI colour codes and, for a line a Ray
#: actor printed, the actor's "(ClientAppActor pid=...)" prefix
LOG_LEVEL = re.compile(r"^(?:\x1b\[[\d;]*m)*(?:\(\w+ pid=\d+\)(?:\x1b\[[\d;]*m)* )?"
                       r"(?:\x1b\[[\d;]*m)*(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")
#: lines that are harmless here, kept in the log file only: Flower's note on its default
#: federation size (it is printed whatever the size; the launcher sets it), Ray's tip about a
#: future default (the launcher keeps Ray's present behaviour), the dependency note and the
#: ClientApp actors' goodbye when the simulation ends
HARMLESS = re.compile(r"default simulated SuperNodes changed from 10 to 2|FutureWarning: Tip: "
                      r"In future versions of Ray|Skipping `flwr` dependency|"
                      r"Manually terminating ClientAppActor")
#: what each phase of a start-up says, keyed by the line that begins it
PHASES = ((re.compile(r"Starting Flower Simulation"), "starting Ray and the SuperNodes"),
          (re.compile(r"asyncfl: \S+ on \S+, \d+ clients"), "the first model"))
SHOWN_INFO = re.compile(r"asyncfl: results written to| finished in [\d.]+ s")


def run_flower(overrides: dict, app_dir: Path, cpus_per_client: int = 1,
               gpus_per_client: float = 0.0, ray_address: str = "") -> Path:
    """Validate, run `flwr run` on a private SuperLink, stop it; return the results folder.
    `gpus_per_client` is the share of a GPU Ray gives each ClientApp (0.25: four share one).
    `ray_address`: the simulation runs on that existing Ray cluster (its ClientApps on every
    node's CPUs), not on a Ray started for this machine's cores. Flower's whole output goes
    to the results folder's flwr.log (to output-dir/<run-name>.flwr.log if the run wrote no
    results); the terminal gets a start-up line, the bar, warnings and errors."""
    if validate_run_config(overrides)["num-clients"] == 0:
        overrides = {**overrides, "num-clients": SIMULATED_CLIENTS}
    overrides, config = resolve_run(overrides)
    federation = (f"num-supernodes={config['num-clients']} "
                  f"client-resources-num-cpus={cpus_per_client} "
                  f"client-resources-num-gpus={gpus_per_client:g}")
    if not ray_address:  # joining a cluster, ray.init must not be given a CPU count
        federation += f" init-args-num-cpus={os.cpu_count() or 1}"
    log_path = Path(config["output-dir"]) / f"{config['run-name']}.flwr.log"
    print(f"asyncfl-flwr-run: {config['strategy']}: starting Flower's simulation engine (Ray, "
          f"{config['num-clients']} SuperNodes), then the first model; Flower's log: "
          f"{log_path} (at the end: flwr.log in the results folder)", flush=True)
    with local_superlink(app_dir, ray_address) as (_, env), log_path.open("w") as log_file:
        command = [flower_executable("flwr"), "run", str(app_dir), CONNECTION, "--stream",
                   "--run-config", format_run_config(overrides), "--federation-config", federation]
        flwr = subprocess.Popen(command, env=env, start_new_session=True, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            follow_output(flwr.stdout, config["strategy"], log_file)
            code = flwr.wait()
        finally:
            stop_process_group(flwr)
    out = written_results(config, f" (flwr run exited with code {code}; see {log_path})")
    log_path.replace(out / "flwr.log")
    return out


def follow_output(lines: Iterable[str], label: str, log_file: TextIO) -> None:
    """Write `flwr run`'s output to `log_file`, drawing the ServerApp's progress as a bar: its
    start line sets the total, progress and evaluation lines move it, the summary ends it; the
    bar's label says which start-up phase runs. The terminal gets only warnings and errors
    (with their continuation lines, such as a traceback) that are not HARMLESS, and the lines
    that say where the results are and how the run ended."""
    shown = False
    with tqdm(desc=f"{label}: starting", unit="version", file=sys.stderr,
              dynamic_ncols=True) as bar:
        for line in lines:
            log_file.write(line)
            if progress := PROGRESS_LINE.search(line):
                bar.total = int(progress.group(2))
                bar.update(int(progress.group(1)) - bar.n)
                continue
            level = LOG_LEVEL.match(line)
            if HARMLESS.search(line):  # it and its continuation lines
                shown = False
            elif level is not None:
                shown = (level.group(1) in ("WARNING", "ERROR", "CRITICAL")
                         or SHOWN_INFO.search(line) is not None)
            if shown:
                bar.write(line.rstrip("\n"), file=sys.stdout)
            for begins, phase in PHASES:
                if begins.search(line):
                    bar.set_description(f"{label}: {phase}")
            if started := STARTED_LINE.search(line):
                bar.set_description(label)
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
    where it first reaches the first run's `target-accuracy`, and updates per client) and
    comparison.md / .csv: final accuracy, virtual time, the target, time to it, the speed-up
    over the first run, and participation (top client's share, Gini); comparison.md names
    the target and says which run, if any, one client dominates."""
    runs = []
    for out in map(Path, outs):
        config = json.loads((out / "config.json").read_text())
        summary = json.loads((out / "summary.json").read_text())
        clients = read_csv(out / "clients.csv")
        runs.append({"label": config["strategy"], "out": out, "config": config,
                     "summary": summary, "evals": read_csv(out / "evals.csv"),
                     "participation": participation([c["updates"] for c in clients])})
    target = runs[0]["config"]["target-accuracy"]
    for run in runs:
        run["reached"] = time_to_target(run["evals"], target)
    first = runs[0]["reached"]
    headline = final_accuracy_headline(runs)
    notes = [note for run in runs if (note := dominance_note(run["label"], run["participation"]))]
    title = (f"{' vs '.join(r['label'] for r in runs)} on {setup(runs[0]['config'])}"
             + "".join(f"\n{line}" for line in headline)
             + "".join(f"\nWARNING: {note}" for note in notes))
    path = plot_comparison(runs, target, title, dest)
    rows = []
    for run in runs:
        when, report = run["reached"], run["participation"]
        rows.append({
            "strategy": run["label"], "run": run["out"].name,
            "final_accuracy": round(run["evals"][-1]["accuracy"], 4),
            "virtual_time_s": round(run["summary"]["virtual_time"], 2),
            "target_accuracy": target,
            "time_to_target_s": "" if when is None else round(when, 2),
            "speedup": ratio(first, when),
            "time_to_first_final_s": "" if run["to_final"] is None
            else round(run["to_final"], 2),
            "speedup_to_first_final": ratio(runs[0]["to_final"], run["to_final"]),
            "updates": sum(report["updates_per_client"]),
            "top_client": report["top_client"],
            "top_client_share": None if report["top_share"] is None
            else round(report["top_share"], 3),
            "gini_updates": None if report["gini"] is None else round(report["gini"], 3),
            "dominated": "yes" if report["dominated"] else "no"})
    table = write_table(Path(dest) / "comparison", rows, COMPARISON_COLUMNS)
    head = (f"Target accuracy: {target:g} (`target-accuracy` of the first run, "
            f"{runs[0]['label']}). time_to_target_s: the virtual time at which a run's test "
            f"accuracy first reaches it; speedup: {runs[0]['label']}'s time to it / the run's. "
            "top_client_share: the share of the run's updates made by its busiest client; "
            "time_to_first_final_s / speedup_to_first_final: the same for "
            f"{runs[0]['label']}'s final accuracy "
            f"({runs[0]['evals'][-1]['accuracy']:.4g}). "
            "gini_updates: the Gini coefficient of the updates per client (0: all equal).\n")
    tail = "".join(f"\n**Warning:** {note}.\n" for note in notes) or (
        "\nNo client made more than a third of any run's updates.\n")
    said = "".join(f"\n**{line}.**\n" for line in headline)
    (Path(dest) / "comparison.md").write_text(f"{head}{said}\n{table}{tail}")
    for line in headline:
        print(f"asyncfl-flwr-run: {line}")
    return path


def ratio(reference: float | None, when: float | None) -> float | str:
    """reference / when rounded, or '' where either never happened."""
    return "" if reference is None or not when else round(reference / when, 1)


def final_accuracy_headline(runs: list[dict]) -> list[str]:
    """Per run after the first: when it reached the first run's final accuracy, how much
    sooner than the first run did, and where it ended (also sets each run's `to_final`)."""
    final = runs[0]["evals"][-1]["accuracy"]
    for run in runs:
        run["to_final"] = time_to_target(run["evals"], final)
    lines = []
    for run in runs[1:]:
        ends = f"ends at {run['evals'][-1]['accuracy']:.3f}"
        speedup = ratio(runs[0]["to_final"], run["to_final"])
        lines.append(f"{run['label']} reaches {runs[0]['label']}'s final accuracy {final:.3f} "
                     + ("never" if speedup == "" else f"{speedup}x sooner") + f" and {ends}")
    return lines


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
        if argv is None:  # the command itself (not a call from Python): its process ends here
            freeze_before_exit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
