"""Front doors and hostile inputs: settings refused up front, runs that never share a folder,
num-clients = 0, the wrapper's command line (fast tests; the ones that start Flower are in
test_flower_simulation.py)."""

import io
import json
import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.common.config import parse_config_args
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

import asyncfl
import asyncfl.engine.nodes as nodes
import asyncfl.server_app as server_app
import asyncfl.tools.flower_launcher as flower_launcher
import asyncfl.tools.inline as inline
from asyncfl.client_app import run_config as client_run_config
from asyncfl.config import (
    DEFAULTS,
    FIXED_BY_STRATEGY,
    SEED_MAX,
    SETTINGS,
    TRACE_MAX_BYTES,
    ConfigError,
    check_local_files,
    config_warnings,
    validate_run_config,
    with_node_count,
)
from asyncfl.results import claim_run_dir, find_launched_run
from asyncfl.strategies import REGISTRY, STRATEGIES, DivergenceError
from asyncfl.tasks import load_task
from asyncfl.tools.flower_launcher import follow_output, main
from asyncfl.tools.run_config import parse_run_config
from asyncfl.tools.superlink import flower_executable
from tests.helpers import read_rows

FLOAT_KEYS = [s.key for s in SETTINGS if s.type is float]


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_setting_must_be_finite(key, value):
    with pytest.raises(ConfigError, match=f"'{key}' = .* is not a finite number; allowed"):
        validate_run_config({key: value})


def test_seed_must_fit_numpy_and_scikit_learn():
    assert validate_run_config({"seed": SEED_MAX})["seed"] == 2**32 - 1
    for seed in (2**32, 2**70):
        with pytest.raises(ConfigError, match=r"'seed' .* allowed: an integer in \[0, 42949672"):
            validate_run_config({"seed": seed})


def test_eval_interval_cannot_ask_for_an_evaluation_storm():
    assert validate_run_config({"eval-interval": 0.0})["eval-interval"] == 0.0
    assert validate_run_config({"eval-interval": 1e-3})["eval-interval"] == 1e-3
    with pytest.raises(ConfigError, match="'eval-interval' = 0.0001 .* 0, or a number >= 0.001"):
        validate_run_config({"eval-interval": 1e-4})
    validate_run_config({"eval-interval": 0.01, "time-budget": 1000.0})  # 100,000 evaluations
    with pytest.raises(ConfigError, match="more than 100,000 evaluations.*time-budget / 100,000"):
        validate_run_config({"eval-interval": 0.01, "time-budget": 1000.5})


@pytest.mark.parametrize(("task", "most"), [("digits", 1437), ("mnist", 60_000),
                                             ("mean", 1_000_000), ("synthetic", 100_000)])
def test_num_clients_is_bounded_by_the_tasks_data(task, most):
    assert validate_run_config({"task": task, "num-clients": most})["num-clients"] == most
    for n in (most + 1, 10**7):
        with pytest.raises(ConfigError, match=f"'num-clients' = {n} is too large.*0 to {most}"):
            validate_run_config({"task": task, "num-clients": n})


def test_digits_really_has_as_many_training_examples_as_config_allows_clients():
    task = load_task(validate_run_config({"num-clients": 1437, "batch-size": 0}))
    assert sorted(len(p) for p in task.partitions) == [1] * 1437


def test_running_mean_needs_the_mean_task_and_the_mean_task_takes_any_strategy():
    with pytest.raises(ConfigError, match="'strategy' = 'running-mean' .* use task = 'mean'"):
        validate_run_config({"strategy": "running-mean", "task": "digits"})
    for strategy in ("running-mean", "fedbuff", "fedasync", "fedavg"):
        validate_run_config({"strategy": strategy, "task": "mean"})


def test_fixed_train_settings_agree_with_the_strategies():
    fixed = {name: cls.fixed_train_config for name, cls in STRATEGIES.items()
             if cls.fixed_train_config}
    assert fixed == FIXED_BY_STRATEGY


def test_a_setting_the_strategy_overrides_is_reported():
    notes = config_warnings(validate_run_config({"strategy": "ssgd", "local-steps": 7}))
    assert notes == ["run-config 'local-steps' = 7 has no effect: strategy = ssgd fixes "
                     "local-steps = 1"]
    notes = config_warnings(validate_run_config({"strategy": "fedsgd", "local-steps": 3,
                                                 "batch-size": 32}))
    assert [n.split(" = ")[0] for n in notes] == ["run-config 'local-steps'",
                                                  "run-config 'batch-size'"]
    # defaults and the fixed value itself say nothing; other strategies use local-steps
    assert config_warnings(validate_run_config({"strategy": "asgd"})) == []
    assert config_warnings(validate_run_config({"strategy": "asgd", "local-steps": 1})) == []
    assert config_warnings(validate_run_config({"strategy": "fedbuff", "local-steps": 7})) == []


@pytest.mark.parametrize("name", ["   ", "a/b", "a\\b", "a\0b", "x" * 101, ".", ".."])
def test_run_names_that_are_not_one_folder_name_are_refused(name):
    with pytest.raises(ConfigError, match="'run-name' .* allowed: a folder name of at most 100"):
        validate_run_config({"run-name": name})


def test_a_run_name_of_100_characters_is_fine():
    assert validate_run_config({"run-name": "x" * 100})["run-name"] == "x" * 100


def test_trace_files_are_checked_before_they_are_read(tmp_path):
    def check(path):
        check_local_files(validate_run_config({"delay-dist": "trace", "delay-trace": path}))

    with pytest.raises(ConfigError, match="'delay-trace' = '/dev/zero' is not a regular file"):
        check("/dev/zero")
    with pytest.raises(ConfigError, match="is not a regular file"):
        check(str(tmp_path))
    with pytest.raises(ConfigError, match="cannot read it"):
        check(str(tmp_path / "missing.csv"))
    huge = tmp_path / "huge.csv"
    with huge.open("wb") as f:
        f.truncate(TRACE_MAX_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(ConfigError, match=f"has {TRACE_MAX_BYTES + 1:,} bytes; allowed: .*64 MiB"):
        check(str(huge))
    fine = tmp_path / "fine.csv"
    fine.write_text("client,step_time\n0,1.0\n")
    check(str(fine))


def test_a_trace_is_only_checked_when_it_is_used():
    check_local_files(validate_run_config({"delay-trace": "/dev/zero"}))  # delay-dist: exponential


def test_num_clients_zero_at_a_node_is_its_num_partitions():
    config = validate_run_config({})
    assert config["num-clients"] == 0
    assert with_node_count(config, {"partition-id": 1, "num-partitions": 2})["num-clients"] == 2
    explicit = validate_run_config({"num-clients": 5})
    assert with_node_count(explicit, {"num-partitions": 2}) is explicit
    with pytest.raises(ConfigError, match="num-clients' = 0 needs the node's num-partitions"):
        with_node_count(config, {"partition-id": 0})
    with pytest.raises(ValueError, match="resolve num-clients = 0"):
        load_task(config)


def test_the_client_app_partitions_for_the_nodes_it_is_told_about():
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 1, "num-partitions": 3},
                      state=RecordDict(), run_config=dict(DEFAULTS))
    config = client_run_config(context)
    assert config["num-clients"] == 3
    assert [len(p) for p in load_task(config).partitions] == [479, 479, 479]  # 1437 digits


class FakeClock:
    """time.monotonic and time.sleep for the node wait: time passes only when it sleeps."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class SimulatedGrid(InMemoryGrid):
    """Flower's simulation Grid as the ServerApp sees it: a fixed set of nodes."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


class JoiningGrid:
    """A deployment's Grid: `joins[t]` nodes are connected from time t on."""

    def __init__(self, clock, joins):
        self.clock, self.joins = clock, joins

    def get_node_ids(self):
        count = max((n for t, n in self.joins.items() if self.clock.now >= t), default=0)
        return list(range(100, 100 + count))


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(nodes.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(nodes.time, "sleep", fake.sleep)
    return fake


def test_too_few_simulated_nodes_fail_at_once_naming_the_flag(clock):
    with pytest.raises(RuntimeError) as err:
        nodes.wait_for_nodes(SimulatedGrid([11, 12]), 10, 2, wait=120.0)
    assert str(err.value).startswith(
        "num-clients = 10 but the simulated federation has 2 SuperNodes;")
    assert '--federation-config "num-supernodes=10"' in str(err.value)
    assert clock.now < nodes.SIMULATION_SETTLE_SECONDS + 0.5  # not the 120 s wait


def test_num_clients_zero_in_simulation_takes_every_node(clock):
    assert nodes.wait_for_nodes(SimulatedGrid([12, 11, 13]), 0, 1) == [11, 12, 13]
    assert nodes.wait_for_nodes(SimulatedGrid([12, 11, 13]), 2, 5) == [11, 12]


def test_a_deployment_waits_for_min_available_nodes_then_takes_every_node(clock):
    grid = JoiningGrid(clock, {0.0: 1, 5.0: 3})
    assert nodes.wait_for_nodes(grid, 0, 2, wait=120.0) == [100, 101, 102]
    assert 5.0 <= clock.now < 5.5
    with pytest.raises(RuntimeError, match="min-available-nodes = 4 but only 3 nodes connected "
                                           "after 120 s"):
        nodes.wait_for_nodes(grid, 0, 4, wait=120.0)


def test_simulate_with_num_clients_zero_runs_ten_clients(out):
    result = asyncfl.simulate(strategy="running-mean", task="mean", num_server_rounds=3, **out)
    assert result.config["num-clients"] == 10
    assert len((result.output_dir / "clients.csv").read_text().splitlines()) == 11


def test_a_taken_run_name_gets_a_fresh_folder_and_simulate_returns_its_own_run(out, monkeypatch):
    kw = dict(strategy="running-mean", task="mean", num_clients=3, **out)
    first = asyncfl.simulate(num_server_rounds=4, run_name="same", **kw)
    second = asyncfl.simulate(num_server_rounds=5, run_name="same", **kw)
    assert (first.output_dir.name, second.output_dir.name) == ("same", "same-2")
    assert (first.summary["updates"], second.summary["updates"]) == (4, 5)
    # two default names in the same second
    monkeypatch.setattr(inline, "default_run_name", lambda config: "stamp")
    third = asyncfl.simulate(num_server_rounds=6, **kw)
    fourth = asyncfl.simulate(num_server_rounds=7, **kw)
    assert (third.output_dir.name, fourth.output_dir.name) == ("stamp", "stamp-2")
    assert (third.summary["updates"], fourth.summary["updates"]) == (6, 7)
    assert third.config["run-name"] == "stamp"


def test_simulate_never_reads_another_runs_folder(out, tmp_path):
    # a run with the same name that claimed "x" and finished before this one looked
    other = tmp_path / "outputs" / "x"
    other.mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"launch-id": "someone-else"}))
    (other / "summary.json").write_text(json.dumps({"updates": -1, "status": "finished"}))
    result = asyncfl.simulate(strategy="running-mean", task="mean", num_clients=3,
                              num_server_rounds=4, run_name="x", **out)
    assert result.output_dir.name == "x-2" and result.summary["updates"] == 4
    assert find_launched_run({"output-dir": str(tmp_path / "outputs"), "run-name": "x",
                              "launch-id": "someone-else"}) == other


def test_resume_reuses_the_named_folder(tmp_path):
    config = validate_run_config({"output-dir": str(tmp_path), "run-name": "r", "resume": True})
    (tmp_path / "r").mkdir()
    claimed = dict(config)
    assert claim_run_dir(claimed) == tmp_path / "r" and claimed["run-name"] == "r"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


class UntouchableGrid:
    def __getattr__(self, name):
        raise AssertionError(f"the Grid was used ({name}) before the output folder was checked")


@pytest.mark.parametrize("kind", ["file", "under-a-file", "proc"])
def test_an_output_dir_that_cannot_hold_results_is_refused_before_any_work(tmp_path, kind):
    (tmp_path / "file").write_text("")
    path = {"file": tmp_path / "file", "under-a-file": tmp_path / "file" / "out",
            "proc": "/proc/asyncfl-outputs"}[kind]
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                      run_config={**DEFAULTS, "output-dir": str(path)})
    with pytest.raises(ConfigError, match=r"run-config 'output-dir' = .* allowed: a writable"):
        server_app.main(UntouchableGrid(), context)
    with pytest.raises(ConfigError, match="'output-dir'"):
        asyncfl.simulate(task="mean", strategy="running-mean", output_dir=str(path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_dir_is_refused(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="'output-dir': cannot write in"):
            asyncfl.simulate(task="mean", strategy="running-mean", output_dir=str(tmp_path))
    finally:
        tmp_path.chmod(0o700)


def test_run_config_text_is_read_as_flwr_reads_it():
    text = "strategy='fedbuff' num-clients=10 lr=0.05 resume=false run-name=\"a b\""
    assert parse_run_config(text) == parse_config_args([text])
    assert parse_run_config("  ") == {}


@pytest.mark.parametrize(("text", "token"), [("lr =0.1", "lr"), ("lr= 0.1", "lr="),
                                             ("num-clients=2 junk", "junk"),
                                             ("lr=0.1 =3", "=3")])
def test_a_malformed_run_config_token_is_an_error_naming_it(text, token, capsys):
    with pytest.raises(ConfigError, match=f"cannot read '{token}'"):
        parse_run_config(text)
    assert main(["--run-config", text]) == 2
    assert f"cannot read '{token}'" in capsys.readouterr().err


def test_a_value_toml_cannot_read_is_an_error():
    with pytest.raises(ConfigError, match="lr==0.1 is not a TOML value"):
        parse_run_config("lr==0.1")


def test_the_wrapper_refuses_bad_settings_before_starting_anything(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    cases = {"lr=inf": "'lr' = inf is not a finite number",
             f"seed={2**70}": "'seed'",
             "num-clients=10000000": "'num-clients' = 10000000 is too large",
             "delay-dist='trace' delay-trace='/dev/zero'": "'/dev/zero' is not a regular file",
             f"output-dir='{tmp_path / 'file'}'": "'output-dir'"}
    for text, message in cases.items():
        assert main(["--run-config", text]) == 2
        assert message in capsys.readouterr().err


def test_flower_executables_are_found_next_to_the_interpreter(monkeypatch):
    import sys
    from pathlib import Path

    monkeypatch.setenv("PATH", "/nonexistent")
    for name in ("flwr", "flower-superlink", "flower-supernode"):
        assert flower_executable(name) == str(Path(sys.executable).parent / name)
    with pytest.raises(RuntimeError, match="no-such-flower-tool not found next to"):
        flower_executable("no-such-flower-tool")


@pytest.mark.parametrize(("settings", "gamma"), [
    ({"strategy": "fedbuff", "buffer-size": 10, "num-clients": 20}, 0.5),
    ({"strategy": "fedbuff", "buffer-size": 10, "num-clients": 6}, 1.0),
    ({"strategy": "fedbuff", "buffer-size": 2, "num-clients": 20, "concurrency": 8}, 0.25),
    ({"strategy": "alsgd", "num-clients": 6, "local-steps": 8}, 1 / 6),
    ({"strategy": "asgd", "num-clients": 20}, 1 / 20),
    ({"strategy": "apsb", "num-clients": 20, "concurrency": 4, "local-steps": 8}, 1 / 4),
    ({"strategy": "esync", "num-clients": 20}, 1.0),
    ({"strategy": "alsgd", "num-clients": 20, "server-lr": 1.0, "local-steps": 8}, 1.0),
])
def test_the_default_server_step_is_one_over_the_staleness(settings, gamma):
    """server-lr = 0 (default): min(1, B/M), B updates per server step, M in flight: the
    step of the rule each strategy builds for a run (in units of the clients' move)."""
    config = validate_run_config(settings)
    registered = REGISTRY[config["strategy"]]
    strategy = registered.cls(**registered.settings(config))
    lr = config["lr"]
    run = SimpleNamespace(num_clients=config["num-clients"], client_lr=lr)
    rule = strategy.new_rule(run)
    step = (rule.optimizer.lr if hasattr(rule, "optimizer")
            else rule.server_lr / (lr if config["strategy"] != "esync" else 1.0))
    assert step == pytest.approx(gamma)


class ReplyCountingGrid(inline.InlineGrid):
    """Counts the replies and those holding a NaN or Inf."""

    replies = not_finite = 0

    def pull_messages(self, message_ids):
        replies = list(super().pull_messages(message_ids))
        for reply in replies:
            ReplyCountingGrid.replies += 1
            arrays = [a.numpy() for r in reply.content.array_records.values() for a in r.values()]
            ReplyCountingGrid.not_finite += not all(np.isfinite(a).all() for a in arrays)
        return replies


@pytest.mark.parametrize(("strategy", "names"), [
    ("fedbuff", "server_lr (run config: server-lr)"),
    ("alsgd", "server_lr (run config: server-lr"),
    ("apsb", "server_lr (run config: server-lr"),
    ("esync", "server_lr (run config: server-lr)"),
])
def test_a_diverging_server_stops_naming_its_setting_and_blames_no_client(out, strategy, names):
    ReplyCountingGrid.replies = ReplyCountingGrid.not_finite = 0
    with pytest.raises(DivergenceError, match=re.escape(f"lower {names}")) as err:
        asyncfl.simulate(grid_class=ReplyCountingGrid, strategy=strategy, num_clients=4,
                         num_server_rounds=20, local_steps=2, server_lr=1e4, max_faults=1,
                         **out)
    assert "every update applied was checked finite" in str(err.value)
    # the run stopped before any client got a model it could only return NaN from: no
    # honest client was rejected (or, with max-faults = 1, dropped) for the server's step
    assert ReplyCountingGrid.replies > 0 and ReplyCountingGrid.not_finite == 0


def test_the_main_job_compares_fedavg_and_fedbuff_on_the_same_clients(tmp_path, monkeypatch,
                                                                     capsys):
    """No strategy named: FedAvg, then FedBuff with the same settings for the virtual time
    FedAvg took (here inline in place of `flwr run`), and a figure and table of both."""
    launched = []

    def inline_run(overrides, app_dir, cpus, gpus, ray_address=None):
        launched.append(overrides)
        kw = {k.replace("-", "_"): v for k, v in overrides.items()}
        return asyncfl.simulate(**kw).output_dir

    monkeypatch.setattr(flower_launcher, "run_flower", inline_run)
    settings = (f"num-clients=6 num-server-rounds=4 local-steps=5 target-accuracy=0.15 "
                f"output-dir='{tmp_path}'")
    assert main(["--run-config", settings]) == 0
    assert [run.pop("strategy") for run in launched] == ["fedavg", "fedbuff"]
    same_time = {"time-budget": launched[1].pop("time-budget"),
                 "num-server-rounds": launched[1].pop("num-server-rounds")}
    launched[0].pop("num-server-rounds")
    assert launched[0] == launched[1]
    folder = tmp_path / "compare-fedavg-fedbuff"
    assert (folder / "comparison.png").stat().st_size > 0
    rows = read_rows(folder / "comparison.csv")
    assert [r["strategy"] for r in rows] == ["fedavg", "fedbuff"]
    fedavg, fedbuff = (json.loads((tmp_path / r["run"] / "summary.json").read_text())
                       for r in rows)
    assert float(rows[0]["final_accuracy"]) == round(fedavg["accuracy"], 4)
    assert float(rows[1]["virtual_time_s"]) == round(fedbuff["virtual_time"], 2)
    assert same_time == {"time-budget": fedavg["virtual_time"], "num-server-rounds": 8}
    assert fedbuff["virtual_time"] <= fedavg["virtual_time"]
    assert float(rows[0]["speedup"]) == 1.0
    assert float(rows[0]["time_to_target_s"]) == round(fedavg["time_to_target_accuracy"], 2)
    assert f"comparison in {folder}" in capsys.readouterr().out
    # a named strategy is one run, as is --compare ''
    launched.clear()
    assert main(["--run-config", settings + " strategy='esync'"]) == 0
    assert main(["--compare", "", "--run-config", settings]) == 0
    assert [run.get("strategy") for run in launched] == ["esync", None]  # None: the default


def test_flwr_output_goes_to_the_log_and_progress_lines_become_a_bar(capsys):
    lines = ["\x1b[92mINFO \x1b[0m:      Starting Flower Simulation\n",
             "\x1b[93mWARNING \x1b[0m:   Since flwr 1.32, default simulated SuperNodes changed "
             "from 10 to 2.\n",
             "/ray/_private/worker.py:2051: FutureWarning: Tip: In future versions of Ray, ...\n",
             "  warnings.warn(\n",
             "INFO :      asyncfl: fedbuff on digits, 10 clients, results in outputs/x\n",
             "INFO :      Starting FedBuff for 10 versions\n",
             "INFO :      progress: version 3/10 | virtual 2.00 s | 30 updates | ...\n",
             "WARNING :   skipped reply of client 2 at version 4: not finite\n",
             "INFO :      progress: version 7/10 | virtual 4.00 s | 70 updates | ...\n",
             "INFO :      Final results:\n", "INFO :      \t{ 1: {'train-loss': 0.3},\n",
             "ERROR :     ServerApp raised an exception\n", "Traceback (most recent call last):\n",
             "\x1b[36m(ClientAppActor pid=26013)\x1b[0m \x1b[92mINFO \x1b[0m:      loading\n",
             "\x1b[36m(ClientAppActor pid=26013)\x1b[0m \x1b[91mERROR \x1b[0m:     ClientApp "
             "raised\n",
             "\x1b[36m(ClientAppActor pid=26014)\x1b[0m \x1b[93mWARNING \x1b[0m:   Manually "
             "terminating ClientAppActor\n",
             "INFO :      asyncfl: results written to /x/outputs/y\n"]
    log = io.StringIO()
    follow_output(lines, "fedbuff", log)
    captured = capsys.readouterr()
    assert log.getvalue() == "".join(lines)  # every line in the log file
    assert captured.out.splitlines() == [
        "WARNING :   skipped reply of client 2 at version 4: not finite",
        "ERROR :     ServerApp raised an exception", "Traceback (most recent call last):",
        lines[-3].rstrip(), "INFO :      asyncfl: results written to /x/outputs/y"]
    assert "fedbuff" in captured.err and "7/10" in captured.err
    assert "starting Ray and the SuperNodes" in captured.err and "the first model" in captured.err


def test_flowers_real_output_of_the_main_job_leaves_two_lines_on_the_terminal(capsys):
    """tests/data holds what `flwr run` printed for the main job's FedBuff run (408 lines,
    most of them Flower's per-round result dicts): the terminal keeps how it ended and where
    its results are; the log file keeps every line."""
    recorded = (Path(__file__).parent / "data" / "main_job_fedbuff_flwr.log").read_text()
    log = io.StringIO()
    follow_output(recorded.splitlines(keepends=True), "fedbuff", log)
    assert log.getvalue() == recorded
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 2
    assert "FedBuff finished in" in shown[0] and "asyncfl: results written to" in shown[1]


def test_a_short_run_without_progress_lines_still_fills_the_bar(capsys):
    """A run shorter than the progress interval logs no progress line: the start line sets
    the total, evaluations move the bar and the summary completes it."""
    lines = ["INFO :      Starting FedAvg for 10 rounds\n",
             "INFO :      version 4 | virtual 670.32 s | wall 2.90 s | loss=0.35 accuracy=0.90\n",
             "INFO :      FedAvg finished in 4.72 s, 1675.79 s of virtual time: 10 rounds, "
             "100 updates applied, 0 replies skipped\n"]
    follow_output(lines, "fedavg", io.StringIO())
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [lines[-1].rstrip()]  # how the run ended
    assert "10/10" in captured.err and "4/10" in captured.err and "round" in captured.err


def test_an_app_folder_without_pyproject_is_refused_naming_asyncfls_own(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--app", str(tmp_path), "--run-config", "strategy='fedavg'"])
    assert stopped.value.code == 2
    shown = capsys.readouterr().err
    assert f"{tmp_path} has no pyproject.toml" in shown
    assert f"asyncfl's own app is {Path(__file__).resolve().parents[1]}" in shown


@pytest.mark.parametrize("strategy", ["fedbuff", "fedavg"])
def test_a_stop_file_ends_the_run_gracefully(tmp_path, strategy):
    """The file appears after the 6th reply (from outside, as `touch` would): the run ends
    after the update or round in progress and writes finished results."""
    import asyncfl
    from asyncfl.tools.inline import InlineGrid

    stop = tmp_path / "STOP"

    class TouchingGrid(InlineGrid):
        replies = 0

        def pull_messages(self, message_ids):
            replies = list(super().pull_messages(message_ids))
            TouchingGrid.replies += len(replies)
            if TouchingGrid.replies >= 6:
                stop.touch()
            return replies

    result = asyncfl.simulate(grid_class=TouchingGrid, strategy=strategy, num_clients=3,
                              num_server_rounds=1000, buffer_size=2, local_steps=1,
                              stop_file=str(stop), output_dir=str(tmp_path / "out"))
    assert result.summary["status"] == "finished"
    assert 1 <= result.summary["final_version"] <= 4
