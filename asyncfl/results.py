"""The results folder of a run: events.csv, evals.csv, config.json, summary.json, model, PNG."""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from asyncfl.config import ConfigError
from asyncfl.tracking import write_trackers

EVAL_BASE_COLUMNS = ("version", "virtual_time", "wall_time")
#: summary.json's status: the run went to its end, or stopped with an error (`reason`)
FINISHED, STOPPED = "finished", "stopped"


_UMASK = os.umask(0)
os.umask(_UMASK)  # (read back at once: the mode a plain open() would give a new file)


class ResultsError(OSError):
    """A results file could not be written (disk full, permissions): the message names the
    file and the setting that chose the folder."""


@contextmanager
def atomic_file(path: Path, mode: str = "w", newline: str | None = None) -> Iterator[IO]:
    """A file that appears at `path` complete or not at all: written to a temporary file
    with a unique name in the same folder, flushed to disk, then renamed over `path`. Any
    OSError is a ResultsError naming `path` and the output-dir setting."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            with suppress(OSError):
                os.unlink(tmp)
        if isinstance(error, OSError) and not isinstance(error, ResultsError):
            raise results_error(path, error) from error
        raise


def results_error(path: Path, error: OSError) -> ResultsError:
    """The error for a results file that could not be written, naming it and the setting."""
    return ResultsError(f"cannot write {path} ({error.strerror or error}): free space or "
                        f"choose another run-config 'output-dir'; a run folder without a "
                        f"complete summary.json counts as unfinished")


#: a list of at least this many ints is written by `strict_json` itself (json's indented
#: encoder is Python code, about a microsecond an item: a million clients' update counts)
LONG_INT_LIST = 1000


def strict_json(value: Any) -> str:
    """JSON that every parser reads: a NaN or infinite number is written as null. Long lists
    of ints are written as json writes them, in C: each stands in for a unique string while
    json writes the rest, and is put in its place at that line's indentation."""
    long_lists: dict[str, list] = {}
    mark = f"asyncfl-long-list-{os.getpid()}-{id(long_lists)}-"

    def finite(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            if len(v) >= LONG_INT_LIST and set(map(type, v)) == {int}:
                token = f"{mark}{len(long_lists)}"
                long_lists[token] = v
                return token
            return [finite(x) for x in v]
        return v
    text = json.dumps(finite(value), indent=2, sort_keys=True, allow_nan=False)
    for token, ints in long_lists.items():
        at = text.index(f'"{token}"')
        line = text.rindex("\n", 0, at) + 1
        outer = " " * (len(text[line:at]) - len(text[line:at].lstrip(" ")))
        inner = f",\n{outer}  "
        text = (f"{text[:at]}[\n{outer}  {inner.join(map(int.__repr__, ints))}\n{outer}]"
                f"{text[at + len(token) + 2:]}")
    return text


def write_json(path: Path, value: Any) -> None:
    """`value` as strict JSON (`strict_json`), written atomically."""
    with atomic_file(path) as f:
        f.write(strict_json(value))


def finished_summary(folder: Path) -> dict[str, Any] | None:
    """The summary of a run that went to its end, or None: no summary.json, one that does
    not parse, or one whose status is not 'finished' (a stopped run)."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("status") == FINISHED else None
CLIENT_COLUMNS = ("client", "node_id", "step_time", "num_examples", "updates", "latency",
                  "bandwidth_down", "bandwidth_up")


def default_run_name(config: Mapping[str, Any]) -> str:
    """strategy-task-timestamp (claim_run_dir makes it unique in the output folder)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{config['strategy']}-{config['task']}-{stamp}"


def run_dir(config: Mapping[str, Any]) -> Path:
    """The run's results folder (run-name must be set)."""
    return Path(config["output-dir"]) / str(config["run-name"])


#: most suffixes (-2, -3, ...) tried for a taken run name
MAX_SUFFIX = 1000


def check_writable(folder: Path, key: str) -> None:
    """ConfigError naming `key` unless a file can be created in `folder` (tried, not guessed
    from permission bits, which do not bind root or tell a read-only file system)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
    except OSError as error:
        raise ConfigError(f"run-config '{key}': cannot write in {folder} ({error.strerror}); "
                          "allowed: a writable folder") from None
    os.close(fd)
    os.unlink(probe)


def check_output_dir(config: Mapping[str, Any]) -> Path:
    """The output folder, created if missing and checked writable, or ConfigError."""
    root = Path(config["output-dir"])
    if root.exists() and not root.is_dir():
        raise ConfigError(f"run-config 'output-dir' = {str(root)!r} is not a folder; "
                          "allowed: a writable folder path")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"run-config 'output-dir' = {str(root)!r} cannot be created "
                          f"({error.strerror}); allowed: a writable folder path") from None
    check_writable(root, "output-dir")
    return root


def claim_run_dir(config: dict[str, Any]) -> Path:
    """Create this run's results folder before any work, and set config['run-name'] to it.

    The folder is made with an exclusive mkdir, so two runs never share one: a taken name
    (or a default name two runs chose in the same second) gets -2, -3, ... With `resume` the
    named folder (holding the checkpoint) is reused as it is."""
    root = check_output_dir(config)
    if config["resume"]:  # a missing folder is reported as a missing checkpoint
        out = run_dir(config)
        if out.is_dir():
            check_writable(out, "run-name")
        return out
    base = config["run-name"] or default_run_name(config)
    for n in range(1, MAX_SUFFIX + 1):
        name = base if n == 1 else f"{base}-{n}"
        try:
            (root / name).mkdir()
        except FileExistsError:
            continue
        except OSError as error:
            raise ConfigError(f"run-config 'run-name' = {name!r}: cannot create {root / name} "
                              f"({error.strerror})") from None
        config["run-name"] = name
        return root / name
    raise ConfigError(f"run-config 'run-name': {base} and {MAX_SUFFIX - 1} suffixed names are "
                      f"taken in {root}; choose another run-name or output-dir")


def find_launched_run(config: Mapping[str, Any]) -> Path | None:
    """The results folder a run launched with `launch-id` wrote (its config.json names the
    launch), among run-name and its suffixed variants; None if it wrote none."""
    root, name = Path(config["output-dir"]), str(config["run-name"])
    candidates = [root / name, *sorted(root.glob(f"{glob.escape(name)}-*"))]
    for folder in candidates:
        if folder != root / name and not folder.name[len(name) + 1:].isdigit():
            continue
        try:
            written = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if written.get("launch-id") == config["launch-id"] and finished_summary(folder):
            return folder
    return None


def write_rows(path: Path, rows: Iterable[Mapping[str, Any]] | Mapping[str, Iterable[Any]],
               columns: Sequence[str]) -> None:
    """A CSV with fixed columns, written atomically; floats written with repr so they read
    back exactly, None as an empty cell. `rows`: row mappings, or a mapping of columns
    (each an iterable of its values, in row order: a million rows without a dict each)."""
    with atomic_file(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        if isinstance(rows, Mapping):
            values = [list(rows[c]) for c in columns]
            if len({len(v) for v in values}) > 1:
                raise ValueError("write_rows: columns of different lengths")
            cells = [_cell_format(v) for v in values]
            if not values or any(c is None for c in cells):
                writer.writerows(zip(*values, strict=True))
                return
            for start in range(0, len(values[0]), CSV_CHUNK):  # (a chunk's text at a time)
                chunk = [map(cell, v[start:start + CSV_CHUNK])
                         for cell, v in zip(cells, values, strict=True)]
                rows_text = map(",".join, zip(*chunk, strict=True))
                f.write("\r\n".join(rows_text) + "\r\n")  # (csv.writer's line end)
        else:
            writer.writerows([row.get(c) for c in columns] for row in rows)


#: rows of a CSV written by columns that are formatted and written at once
CSV_CHUNK = 50_000


def _cell_format(values: list) -> Callable[[Any], str] | None:
    """How csv.writer writes the cells of a column that holds only ints, only floats or only
    None: repr of a float, str of an int, '' for None (a value that repeats is formatted once);
    None for any other column (then csv.writer writes the file)."""
    kinds = set(map(type, values))
    if kinds == {type(None)}:
        return "".format  # ('' whatever it is given)
    if not kinds <= {int} and kinds != {float}:
        return None
    write = float.__repr__ if kinds == {float} else int.__repr__
    if len(set(values[:1000])) > 100:  # (mostly distinct values: no use looking them up)
        return write
    distinct = set(values)
    if len(distinct) * 4 > len(values):
        return write
    if write is float.__repr__ and 0.0 in distinct:  # (-0.0 == 0.0: one of them is in the set)
        array = np.array(values)
        if (np.signbit(array) & (array == 0.0)).any():
            return write
    return {v: write(v) for v in distinct}.__getitem__


def time_to_target(evals: Sequence[Mapping[str, Any]], target: float) -> float | None:
    """Virtual (or wall, with a wall clock) time at which accuracy first reached target."""
    for row in evals:
        if row.get("accuracy", -math.inf) >= target:
            return float(row["virtual_time"])
    return None


#: a client that makes more than this share of a run's updates (and more than twice an
#: equal share, so that with 2 or 3 clients an even run is not flagged) dominates it
DOMINANT_SHARE = 1 / 3


def participation(updates: Sequence[int]) -> dict[str, Any]:
    """Who made a run's updates: per client (index = client), the top client, its share and
    the Gini coefficient of the counts (0: all equal; (n - 1) / n: one client made all).
    A comparison of strategies measures strategies only while no client dominates (makes
    more than DOMINANT_SHARE of the updates and more than twice 1 / n)."""
    counts = (updates.tolist() if isinstance(updates, np.ndarray) and updates.dtype.kind in "iu"
              else [int(u) for u in updates])
    total = sum(counts)
    if not total:
        return {"updates_per_client": counts, "top_client": None, "top_share": None,
                "gini": None, "dominated": False}
    n = len(counts)
    if n * n * max(counts) < 2**62:  # (the sum below fits int64: numpy gives the same int)
        array = np.array(counts, dtype=np.int64)
        top = int(np.argmax(array))  # (the first of the largest, as max() gives)
        ranked = np.sort(array)
        weighted = int(np.dot(2 * np.arange(1, n + 1, dtype=np.int64) - n - 1, ranked))
    else:
        top = max(range(n), key=counts.__getitem__)
        ranked = sorted(counts)
        weighted = sum((2 * i - n - 1) * x for i, x in enumerate(ranked, start=1))
    gini = weighted / (n * total)
    share = counts[top] / total
    return {"updates_per_client": counts, "top_client": top, "top_share": share,
            "gini": gini, "dominated": share > max(DOMINANT_SHARE, 2 / n)}


def dominance_note(label: str, report: Mapping[str, Any]) -> str | None:
    """The sentence that says one client dominates `label`'s run, or None when none does."""
    if not report["dominated"]:
        return None
    counts = report["updates_per_client"]
    return (f"{label}: client {report['top_client']} made {counts[report['top_client']]} of "
            f"its {sum(counts)} updates ({report['top_share']:.1%}, more than a third): a "
            "comparison of this run measures that client's speed as much as the strategy")


def write_results(
    out: Path,
    config: Mapping[str, Any],
    *,
    events: Sequence[Mapping[str, Any]],
    event_columns: Sequence[str],
    evals: Sequence[Mapping[str, Any]],
    clients: Iterable[Mapping[str, Any]] | Mapping[str, Iterable[Any]],
    final_arrays: Mapping[str, np.ndarray] | None,
    summary: dict[str, Any],
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    finalize: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Write every file of the results folder and return the folder. Each file is written
    atomically and summary.json last, so a folder whose writing failed (a full disk) has
    no summary.json and counts as unfinished. `final_arrays` None (a stopped run): no
    final_model.npz. The run-config `tracker`s get the same evaluations and summary here,
    once, at the end (tracking.write_trackers), before summary.json."""
    write_rows(out / "events.csv", events, event_columns)
    metric_keys = sorted({k for row in evals for k in row} - set(EVAL_BASE_COLUMNS))
    write_rows(out / "evals.csv", evals, (*EVAL_BASE_COLUMNS, *metric_keys))
    write_json(out / "config.json", dict(config))
    write_rows(out / "clients.csv", clients, CLIENT_COLUMNS)
    for name, rows in (tables or {}).items():
        write_rows(out / f"{name}.csv", rows, list(rows[0]) if rows else [])
    if final_arrays is not None:
        with atomic_file(out / "final_model.npz", "wb") as f:
            np.savez(f, **final_arrays)
    if evals:
        last = evals[-1]
        summary.update({k: last[k] for k in metric_keys if k in last})
        summary["final_version"] = last["version"]
    summary["time_to_target_accuracy"] = time_to_target(evals, float(config["target-accuracy"]))
    from asyncfl.plots import plot_run, plot_timeline

    for name, plot in (("accuracy.png", plot_run), ("timeline.png", plot_timeline)):
        try:
            plot(out, summary)
        except OSError as error:
            with suppress(OSError):
                (out / name).unlink()  # a figure cut short
            raise results_error(out / name, error) from error
    if finalize is not None:
        finalize(summary)
    try:
        write_trackers(out, config, evals, summary)
    except OSError as error:
        raise results_error(out, error) from error
    write_json(out / "summary.json", summary)
    return out


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as a Markdown table; floats with 4 significant digits."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(stem: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """`stem`.md and `stem`.csv with the same rows; returns the Markdown."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_rows(stem.with_suffix(".csv"), rows, columns)
    text = markdown_table(rows, columns)
    with atomic_file(stem.with_suffix(".md")) as f:
        f.write(text)
    return text
