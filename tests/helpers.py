import csv
from pathlib import Path


def read_rows(path: Path, drop: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """A CSV's rows as strings, without the columns in `drop`."""
    with Path(path).open() as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def table_rows(text: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table printed in `text`, as strings by column."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert lines[1].replace("|", "").replace("-", "") == ""
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
            for line in lines[2:]]


class Crash(Exception):
    """What a CrashingGrid raises: the server dies mid-run."""


def crashing_grid(after: int) -> type:
    """An InlineGrid class that fails hard on its pull number `after` + 1, as a server that
    dies mid-run."""
    from asyncfl.tools.inline import InlineGrid

    class CrashingGrid(InlineGrid):
        pulls = 0

        def pull_messages(self, message_ids):
            CrashingGrid.pulls += 1
            if CrashingGrid.pulls > after:
                raise Crash
            return super().pull_messages(message_ids)

    return CrashingGrid
