"""The README's two commands, and the docs' config table and plug-in snippet (the docs site's
build and every other snippet: tests/test_docs.py)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    test_command = readme.split("**Run the tests:**")[1].split("```bash\n")[1].split("\n")[0]
    assert test_command in (ROOT / ".ci/run").read_text()
    run_command = readme.split("```bash\n")[1].split("\n")[0]
    assert run_command.endswith("asyncfl-flwr-run")


def test_config_table_is_current():
    from asyncfl.config import markdown_table

    assert markdown_table() in (DOCS / "configuration.md").read_text(), (
        "docs/configuration.md's run-config table is stale: regenerate it with "
        "python -m asyncfl.config docs/configuration.md")


def test_the_config_table_regenerates_in_place(tmp_path):
    """`python -m asyncfl.config PAGE` rewrites the table after the marker and nothing else."""
    from asyncfl.config import update_table

    page = tmp_path / "configuration.md"
    text = (DOCS / "configuration.md").read_text()
    marker = text.index("\n", text.index("<!-- config-table")) + 1
    stale = text[:marker] + "| key |\n|---|\n| `old` |" + text[text.index("\n\n", marker):]
    page.write_text(stale)
    update_table(str(page))
    assert page.read_text() == text


def test_the_plug_in_snippet_runs_as_written():
    """The ServerApp of docs/plugin.md that swaps Flower's FedAvg for FedBuff, run on the
    inline runtime with a plain Flower ClientApp (fewer versions, same code)."""
    from flwr.app import Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from asyncfl.tools.inline import InlineGrid

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:  # a Flower ClientApp: weights back
        metrics = MetricRecord({"num-examples": 10})
        return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": metrics}),
                       reply_to=msg)

    page = (DOCS / "plugin.md").read_text()
    intro = "Swap Flower's strategy for one of ours in your own ServerApp"
    code = page.split(intro, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("num_rounds=100", "num_rounds=3")
    namespace: dict = {}
    exec(code, namespace)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    namespace["main"](InlineGrid(client, {}, 4), context)
