import csv
from pathlib import Path


def read_rows(path: Path, drop: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """A CSV's rows as strings, without the columns in `drop`."""
    with Path(path).open() as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]
