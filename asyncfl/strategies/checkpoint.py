"""Checkpoint files: a JSON header line, then a pickled payload it vouches for.

The header names the format and its version and carries the payload's length and SHA-256,
so a file from an incompatible version, a truncated or a corrupted file is refused before
anything is unpickled, never half-loaded. Files are written atomically (a temporary file in
the same folder, then a rename). Checkpoints are the run's own files: like any pickle, do not
load one from a source you do not trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

FORMAT = "asyncfl-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, or from another version."""


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically."""
    body = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    header = {"format": FORMAT, "version": FORMAT_VERSION, "length": len(body),
              "sha256": hashlib.sha256(body).hexdigest()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".checkpoint-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n" + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The payload of a checkpoint written by `save_checkpoint`, or CheckpointError."""
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path} to resume from")
    data = path.read_bytes()
    line, _, body = data.partition(b"\n")
    try:
        header = json.loads(line)
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not an asyncfl checkpoint (bad header)") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an asyncfl checkpoint")
    if header.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by checkpoint format {header.get('version')}; this asyncfl "
            f"reads format {FORMAT_VERSION} only: resume it with the version that wrote it")
    if len(body) != header.get("length") or hashlib.sha256(body).hexdigest() != header.get(
            "sha256"):
        raise CheckpointError(f"{path} is corrupt or truncated (checksum mismatch)")
    return pickle.loads(body)


class Checkpointer:
    """Every `every` versions, the runner's whole state goes to `path` (with `meta`, what the
    caller wants kept beside it, e.g. its config); `resume` is a loaded payload to continue
    from (see `load_checkpoint`)."""

    def __init__(self, path: str | Path, every: int = 0, resume: dict[str, Any] | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        if every < 0:
            raise ValueError(f"checkpoint every must be >= 0 (0: never), got {every}")
        self.path = Path(path)
        self.every = every
        self.resume = resume
        self.meta = meta or {}

    def due(self, version: int) -> bool:
        return self.every > 0 and version % self.every == 0

    def save(self, payload: dict[str, Any]) -> None:
        save_checkpoint(self.path, {**payload, "meta": self.meta})

    def resumed(self, strategy: str) -> dict[str, Any] | None:
        """The payload to continue from, if any, checked to be of this strategy."""
        if self.resume is not None and self.resume["strategy"] != strategy:
            raise CheckpointError(f"the checkpoint is of {self.resume['strategy']}, not "
                                  f"{strategy}")
        return self.resume
