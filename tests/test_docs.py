"""The docs site (mkdocs.yml, docs/): it builds with warnings as errors and without the network,
every ```python block of docs/ and README.md runs in a test (here, or in the test named for it),
and every command of a ```bash block exists, with run-config keys that are real settings."""

import ast
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from asyncfl.config import SETTINGS_BY_KEY, ConfigError, validate_run_config
from asyncfl.strategies import STRATEGIES
from asyncfl.tools.run_config import TOKEN, parse_run_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([*DOCS.rglob("*.md"), ROOT / "README.md"])
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)

#: python blocks that a test of this file runs, by (page, first line) -> that test
RUN_HERE = {
    ("docs/own-data.md", 'asyncfl.simulate(task="images", dataset="/data/pets", '
                         'num_clients=10)  # the same, inline'):
        "test_the_own_data_snippet_trains_on_an_image_folder",
    ("docs/own-data.md", "# mymodels.py, in the app folder (next to pyproject.toml)"):
        "test_the_own_model_snippet_trains_as_module_callable",
    ("docs/configuration.md", "import asyncfl"): "test_the_configuration_snippet_runs",
}
#: python blocks that a test elsewhere reads from its page and runs: "file::test"
COVERED_ELSEWHERE = {
    ("docs/plugin.md", "from flwr.app import ArrayRecord, ConfigRecord, Context"):
        "tests/test_readme.py::test_the_plug_in_snippet_runs_as_written",
    ("docs/client-app.md", "import math"):
        "tests/test_client_helper.py::test_the_docs_client_app_trains_with_apsb_and_esync",
    ("docs/client-app.md", "strategy = APSB(concurrency=10)  # or ESync(), ASGD(), ...: steps "
                           "from train_config's lr"):
        "tests/test_client_helper.py::test_the_docs_client_app_trains_with_apsb_and_esync",
}
#: commands of ```bash blocks that are neither asyncfl's nor a file of this repository
KNOWN_TOOLS = {"pip", "flwr", "flower-superlink", "flower-supernode", "ray", "kill", "mkdocs",
               "pgrep", ".", "tensorboard", "mlflow"}
#: options whose value is run-config text (`key=value ...`)
RUN_CONFIG_OPTIONS = {"--run-config", "--grid"}


def blocks(language: str) -> list[tuple[str, str]]:
    """(page relative to the repository, code) of every fenced block in that language."""
    return [(page.relative_to(ROOT).as_posix(), code) for page in PAGES
            for lang, code in FENCE.findall(page.read_text()) if lang == language]


def block(page: str, first_line: str) -> str:
    found = [code for name, code in blocks("python")
             if name == page and code.split("\n")[0] == first_line]
    assert len(found) == 1, (page, first_line, len(found))
    return found[0]


# --- the site --------------------------------------------------------------------------------

NO_NETWORK = '''
import socket

def _refused(*args, **kwargs):
    raise OSError("tests/test_docs.py: the docs build may not use the network")

socket.socket.connect = _refused
socket.socket.connect_ex = _refused
socket.create_connection = _refused
socket.getaddrinfo = _refused
'''


def test_the_site_builds_strictly_without_the_network(tmp_path):
    """`mkdocs build --strict` (every mkdocs and mkdocstrings warning is an error) with every
    socket connection and name lookup refused in the build's process."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    assert mkdocs.exists(), "mkdocs is missing: pip install -e '.[test]' (or '.[docs]')"
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(guard), str(ROOT)])}
    site = tmp_path / "site"
    done = subprocess.run([str(mkdocs), "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(site)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    strategies = (site / "api" / "strategies" / "index.html").read_text()
    assert all(cls.__name__ in strategies for cls in STRATEGIES.values())
    assert "markdown_table" in (site / "api" / "config" / "index.html").read_text()
    assert (site / "main_job.png").exists() and (site / "configuration" / "index.html").exists()


def test_the_network_guard_refuses_connections(tmp_path):
    """The guard the build runs under does refuse (so a build that passed did not connect)."""
    (tmp_path / "sitecustomize.py").write_text(NO_NETWORK)
    done = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection("
                           "('127.0.0.1', 9))"], env={**os.environ, "PYTHONPATH": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "may not use the network" in done.stderr


def test_every_strategy_has_an_api_entry_and_a_row_in_the_table():
    api = (DOCS / "api" / "strategies.md").read_text()
    modules = {p.stem for p in (ROOT / "asyncfl" / "strategies").glob("*.py")} - {"__init__"}
    assert {m for m in modules if f"::: asyncfl.strategies.{m}\n" not in api} == set()
    table = (DOCS / "overview.md").read_text()
    assert {name for name in STRATEGIES if f"| `{name}` |" not in table} == set()


def test_the_readme_is_short_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert readme.count("\n") < 150
    linked = set(re.findall(r"\]\(([^)#]+)\)", readme))
    pages = {p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md")} | {"docs/api/index.md"}
    assert pages - linked == set()
    assert {link for link in linked if "://" not in link and not (ROOT / link).exists()} == set()


# --- python blocks ---------------------------------------------------------------------------

def test_every_python_block_is_run_by_a_test():
    """A new ```python block fails here until a test runs it and is named above."""
    found = {(page, code.split("\n")[0]) for page, code in blocks("python")}
    assert found - RUN_HERE.keys() - COVERED_ELSEWHERE.keys() == set(), (
        "a python block that no test runs: run it in a test and name it in RUN_HERE or "
        "COVERED_ELSEWHERE")
    assert (RUN_HERE.keys() | COVERED_ELSEWHERE.keys()) - found == set(), "a block is gone"
    here = {node.name for node in ast.parse(Path(__file__).read_text()).body
            if isinstance(node, ast.FunctionDef)}
    assert set(RUN_HERE.values()) <= here
    for (page, _), test in COVERED_ELSEWHERE.items():
        file, name = test.split("::")
        source = (ROOT / file).read_text()
        assert f"def {name}(" in source and Path(page).name in source, (test, page)


def test_the_own_data_snippet_trains_on_an_image_folder(tmp_path, monkeypatch):
    """An image folder of 3 classes for '/data/pets', one version, results in tmp."""
    import datasets

    from asyncfl import tasks
    from asyncfl.tasks import images
    from tests.test_images import image_folder

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    for cached in (images.load_splits, images.image_data, tasks._build):
        cached.cache_clear()
    monkeypatch.chdir(tmp_path)
    pets = image_folder(tmp_path / "pets")
    code = block(*next(k for k, v in RUN_HERE.items() if v.endswith("image_folder")))
    code = code.replace('"/data/pets"', repr(str(pets))).replace(
        "num_clients=10)", "num_clients=10, num_server_rounds=1, local_steps=1)")
    namespace: dict = {"asyncfl": __import__("asyncfl")}
    try:
        exec(code, namespace)
    finally:
        for cached in (images.load_splits, images.image_data, tasks._build):
            cached.cache_clear()
    assert list((tmp_path / "outputs").glob("*/summary.json"))


def test_the_own_model_snippet_trains_as_module_callable(tmp_path, monkeypatch):
    """The block saved as mymodels.py gives one logit per class and trains as
    `model='mymodels:wide_mlp'` (digits, one version)."""
    import torch

    import asyncfl

    code = block("docs/own-data.md", "# mymodels.py, in the app folder (next to pyproject.toml)")
    namespace: dict = {}
    exec(code, namespace)
    assert namespace["wide_mlp"]((1, 8, 8), 10)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    (tmp_path / "mymodels.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = asyncfl.simulate(model="mymodels:wide_mlp", num_clients=4, num_server_rounds=1,
                              local_steps=1, output_dir=str(tmp_path / "outputs"))
    assert result.final_arrays()["1.weight"].shape == (256, 64)


def test_the_configuration_snippet_runs(tmp_path, monkeypatch, capsys):
    """As written (FedSGD, 50 clients, C = 0.2, 10 rounds), results under ./outputs."""
    monkeypatch.chdir(tmp_path)
    exec(block("docs/configuration.md", "import asyncfl"), {})
    folder, accuracy = capsys.readouterr().out.split()[-2:]
    assert (tmp_path / folder / "summary.json").exists() and 0.0 <= float(accuracy) <= 1.0
    assert Path(folder).resolve().parent == (tmp_path / "outputs").resolve()


# --- bash blocks -----------------------------------------------------------------------------

def commands() -> list[tuple[str, list[str]]]:
    """(page, words) of every command in the ```bash blocks: continuation lines joined,
    comments dropped, split at &&, ||, ;, | and $( ... ), leading VAR=value dropped."""
    found = []
    for page, code in blocks("bash"):
        for line in code.replace("\\\n", " ").split("\n"):
            words = shlex.split(line.replace("$(", " ; "), comments=True)
            command: list[str] = []
            for word in [*words, ";"]:
                if word in {"&&", "||", ";", "|"} or word.endswith(";"):
                    if word.endswith(";") and word != ";":
                        command.append(word[:-1])
                    if command:
                        found.append((page, command))
                    command = []
                elif command or not re.fullmatch(r"[A-Z_]+=\S*", word):
                    command.append(word)
    return found


def scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_bash_command_exists():
    missing = []
    for page, (program, *args) in commands():
        if program.startswith("asyncfl-"):
            target = scripts().get(program)
            module, _, function = (target or ":").partition(":")
            spec = importlib.util.find_spec(module) if module else None
            if spec is None or f"def {function}(" not in Path(spec.origin).read_text():
                missing.append((page, program))
        elif program in {"python", "python3"}:
            if args[:1] == ["-m"]:
                if importlib.util.find_spec(args[1]) is None:
                    missing.append((page, f"python -m {args[1]}"))
            elif not (ROOT / args[0]).is_file():
                missing.append((page, f"python {args[0]}"))
        elif "/" in program:
            if not (ROOT / program).is_file():
                missing.append((page, program))
        elif program not in KNOWN_TOOLS:
            missing.append((page, f"{program} (an external tool? add it to KNOWN_TOOLS)"))
    assert missing == []


def run_configs() -> list[tuple[str, str, str]]:
    """(page, option, text) of every run config the bash blocks give: a --run-config or
    --grid value, and deploy/run_local.sh's second argument (its --run-config)."""
    found = []
    for page, words in commands():
        found += [(page, option, value) for option, value in zip(words, words[1:], strict=False)
                  if option in RUN_CONFIG_OPTIONS]
        if words[0] == "deploy/run_local.sh" and len(words) > 2:
            found.append((page, "--run-config", words[2]))
    return found


def test_every_run_config_key_in_a_bash_block_is_a_setting():
    configs = run_configs()
    assert len(configs) >= 10  # the blocks hold many; none may go unchecked by a parse error
    unknown = [(page, key) for page, _, text in configs for key, _ in TOKEN.findall(text)
               if key not in SETTINGS_BY_KEY]
    assert unknown == []


def test_every_literal_run_config_in_a_bash_block_is_valid():
    """--run-config values without placeholders (<N>, ...): of the right type and range."""
    checked = 0
    for page, option, text in run_configs():
        if option != "--run-config" or "<" in text or "..." in text:
            continue
        try:
            validate_run_config(parse_run_config(text))
        except ConfigError as error:
            pytest.fail(f"{page}: {text!r}: {error}")
        checked += 1
    assert checked >= 5
