"""Checkpoint files: a JSON header line, then the run state as JSON and its arrays as .npz.

The header names the format and its version and carries the body's part lengths and SHA-256,
so a file from an incompatible version, a truncated or a corrupted file is refused before
any of it is decoded, never half-loaded. The state is plain JSON in which a few tagged
objects stand for what JSON lacks (tuples, sets, int-keyed dicts, bytes, Flower records, and the
run's own state classes, which register themselves with `state_class`); arrays live in the
.npz, read with `allow_pickle=False`. Decoding builds only those types, so a crafted checkpoint
cannot run code. Files are written atomically (a temporary file in the same folder, then a
rename); the temporary files of a killed run are removed when the next run on that folder
starts.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tempfile
from collections import Counter, deque
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

FORMAT = "asyncfl-checkpoint"
FORMAT_VERSION = 2
TEMP_PREFIX = ".checkpoint-"
TAG = "__t__"
RECORDS = {cls.__name__: cls for cls in (ArrayRecord, ConfigRecord, MetricRecord, RecordDict)}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, or from another version."""


#: the run-state classes a checkpoint may hold, by name: each registers itself (`state_class`)
STATE_CLASSES: dict[str, type] = {}


def state_class(cls: type) -> type:
    """Class decorator: instances of `cls` may be saved in a checkpoint (as their fields) and
    rebuilt from one. Only registered classes are ever built from a file."""
    if STATE_CLASSES.setdefault(cls.__name__, cls) is not cls:
        raise ValueError(f"two checkpoint state classes are named {cls.__name__!r}")
    return cls


class _Encoder:
    """Turns a payload into JSON-ready values, setting its arrays aside for the .npz."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.classes = {cls: name for name, cls in STATE_CLASSES.items()}

    def array(self, value: np.ndarray) -> str:
        name = f"a{len(self.arrays)}"
        self.arrays[name] = value
        return name

    def encode(self, x: Any) -> Any:
        kind = type(x)
        if x is None or kind in (bool, int, float, str):
            return x
        if kind is list:
            return [self.encode(v) for v in x]
        if kind is dict and all(type(k) is str for k in x) and TAG not in x:
            return {k: self.encode(v) for k, v in x.items()}
        if kind in (dict, Counter):
            return {TAG: kind.__name__, "items": [[self.encode(k), self.encode(v)]
                                                  for k, v in x.items()]}
        if kind in (tuple, deque, set):
            return {TAG: kind.__name__, "items": [self.encode(v) for v in x]}
        if kind is bytes:
            return {TAG: "bytes", "b64": base64.b64encode(x).decode()}
        if isinstance(x, (np.ndarray, np.generic)):
            return {TAG: "ndarray" if kind is np.ndarray else "scalar",
                    "ref": self.array(np.asarray(x))}
        if kind is Array:
            return {TAG: "Array", "dtype": x.dtype, "shape": list(x.shape), "stype": x.stype,
                    "ref": self.array(np.frombuffer(x.data, dtype=np.uint8))}
        if kind in RECORDS.values():
            return {TAG: kind.__name__, "items": [[k, self.encode(v)] for k, v in x.items()]}
        if kind in self.classes:
            return {TAG: "object", "class": self.classes[kind],
                    "fields": {k: self.encode(v) for k, v in vars(x).items()}}
        raise TypeError(f"a checkpoint cannot hold a {kind.__module__}.{kind.__qualname__}")


class _Decoder:
    """The inverse of `_Encoder`: builds only the types it knows, refusing any other tag."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.classes = STATE_CLASSES

    def decode(self, x: Any) -> Any:
        if isinstance(x, list):
            return [self.decode(v) for v in x]
        if not isinstance(x, dict):
            return x
        if TAG not in x:
            return {k: self.decode(v) for k, v in x.items()}
        tag = x[TAG]
        if tag in ("dict", "Counter"):
            pairs = dict((self.decode(k), self.decode(v)) for k, v in x["items"])
            return pairs if tag == "dict" else Counter(pairs)  # (Counter(pairs) would count)
        if tag in ("tuple", "deque", "set"):
            cls = {"tuple": tuple, "deque": deque, "set": set}[tag]
            return cls(self.decode(v) for v in x["items"])
        if tag == "bytes":
            return base64.b64decode(x["b64"], validate=True)
        if tag == "ndarray":
            return self.arrays[x["ref"]]
        if tag == "scalar":
            return self.arrays[x["ref"]][()]
        if tag == "Array":
            return Array(dtype=x["dtype"], shape=tuple(x["shape"]), stype=x["stype"],
                         data=self.arrays[x["ref"]].tobytes())
        if tag in RECORDS:
            record = RECORDS[tag]()
            for key, value in x["items"]:
                record[key] = self.decode(value)
            return record
        if tag == "object" and x["class"] in self.classes:
            cls = self.classes[x["class"]]
            obj = cls.__new__(cls)  # as unpickling does: fields set, no __init__ run
            obj.__dict__.update({k: self.decode(v) for k, v in x["fields"].items()})
            return obj
        raise CheckpointError(f"a checkpoint names an unknown type {tag!r}"
                              + (f" ({x.get('class')!r})" if tag == "object" else ""))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically; an OSError (a full disk) names the file."""
    encoder = _Encoder()
    state = json.dumps(encoder.encode(payload)).encode()
    buffer = io.BytesIO()
    np.savez(buffer, **encoder.arrays)
    body = state + buffer.getvalue()
    header = {"format": FORMAT, "version": FORMAT_VERSION, "state_length": len(state),
              "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n" + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise OSError(error.errno, f"cannot write the checkpoint {path} ({error.strerror}): "
                          "free space, or choose another output-dir or checkpoint-every"
                          ) from error
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
    split = header.get("state_length")
    try:
        state = json.loads(body[:split])
        with np.load(io.BytesIO(body[split:]), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        return _Decoder(arrays).decode(state)
    except CheckpointError:
        raise
    except Exception as err:  # any malformed part of a file we did not write ourselves
        raise CheckpointError(f"{path} does not decode as an asyncfl checkpoint: {err}") from err


class Checkpointer:
    """Every `every` versions, the runner's whole state goes to `path` (with `meta`, what the
    caller wants kept beside it, e.g. its config); `resume` is a loaded payload to continue
    from (see `load_checkpoint`). Temporary files a killed run left in the folder go."""

    def __init__(self, path: str | Path, every: int = 0, resume: dict[str, Any] | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        if every < 0:
            raise ValueError(f"checkpoint every must be >= 0 (0: never), got {every}")
        self.path = Path(path)
        self.every = every
        self.resume = resume
        self.meta = meta or {}
        if self.path.parent.is_dir():
            for stale in self.path.parent.glob(TEMP_PREFIX + "*"):
                stale.unlink(missing_ok=True)

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
