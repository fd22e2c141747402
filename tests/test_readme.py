from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    test_command = readme.split("**Run the tests:**")[1].split("```bash\n")[1].split("\n")[0]
    assert test_command in (ROOT / ".ci/run").read_text()
    run_command = readme.split("```bash\n")[1].split("\n")[0]
    assert run_command.endswith("asyncfl-flwr-run")


def test_readme_config_table_is_current():
    from asyncfl.config import markdown_table

    assert markdown_table() in (ROOT / "README.md").read_text(), (
        "README's run-config table is stale: regenerate it with python -m asyncfl.config README.md")
