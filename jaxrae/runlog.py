"""Live logs of many runs: TensorBoard event files (no TensorFlow needed) and, when asked, Weights & Biases.

One directory per run (seed and swept values) under a row's log directory, so
``tensorboard --logdir runs/x/tensorboard`` shows every seed of every row as its own curve:

    <log_dir>/seed0/events.out.tfevents.<time>.<host>.<pid>.<n>
    <log_dir>/seed1-lr0.001/...

The event files are written here directly, about 60 lines instead of a dependency: TensorBoard
reads TFRecord files, each record ``uint64 length, uint32 masked_crc32c(length), data,
uint32 masked_crc32c(data)`` (little endian; masked crc = ((c >> 15 | c << 17) + 0xa282ead8)
mod 2^32, with CRC-32C, Castagnoli's polynomial), whose data is an ``Event`` protocol buffer
(tensorflow/core/util/event.proto: wall_time = 1, step = 2, file_version = 3, summary = 5;
summary.proto: Summary.value = 1, Value.tag = 1, Value.simple_value = 2). The ``tensorboard``
package can read them but is large (grpcio, werkzeug) and only needed to view them; tensorboardX
would add protobuf. The tests read these files back with ``tensorboard``'s own event reader.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from jaxrae.errors import invalid

# ------------------------------------------------------------------ TFRecord framing + Event protos


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli polynomial, reflected
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli et al. 1993; RFC 3720, Appendix B.4), the checksum of TFRecord files."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked checksum: ((c >> 15 | c << 17) + 0xa282ead8) mod 2^32 with c = crc32c(data)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: length, its masked crc, the data, the data's masked crc (little endian)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def event_bytes(
    wall_time: float, step: int, *, scalars: Mapping[str, float] | None = None, file_version: str | None = None
) -> bytes:
    """A serialized ``Event`` with either scalar summaries (tag -> simple_value) or a file version."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(int(step) & (2**64 - 1))
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(
            _length_delimited(1, _length_delimited(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value))
            for tag, value in scalars.items()
        )
        out += _length_delimited(5, values)
    return out


_FILE_COUNTER = itertools.count()


class EventFileWriter:
    """Appends scalar events to a new TensorBoard event file in ``log_dir`` (created if needed)."""

    def __init__(self, log_dir: str | Path):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # A resumed run writes a second file next to the first; TensorBoard reads both in name order.
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILE_COUNTER)}"
        self.path = self.log_dir / name
        self._file = open(self.path, "wb")
        self._file.write(tfrecord(event_bytes(time.time(), 0, file_version="brain.Event:2")))
        self._file.flush()

    def add_scalars(self, step: int, scalars: Mapping[str, float], wall_time: float | None = None) -> None:
        """One event holding every ``tag: value`` at ``step``."""
        event = event_bytes(
            time.time() if wall_time is None else wall_time, step, scalars={k: float(v) for k, v in scalars.items()}
        )
        self._file.write(tfrecord(event))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


# ------------------------------------------------------------------------------- many runs at once


def run_names(runs: Sequence[Mapping[str, Any]], swept: Sequence[str] = ()) -> list[str]:
    """A directory name per run: ``seed<s>``, then ``-<name><value>`` for each swept hyperparameter."""
    names = []
    for run in runs:
        name = f"seed{run['seed']}" + "".join(f"-{k}{run[k]:g}" for k in swept)
        names.append(re.sub(r"[^A-Za-z0-9_.+=-]+", "_", name))
    return names


def require_wandb():
    """The ``wandb`` module, or a one-line ConfigError saying how to install it."""
    try:
        import wandb
    except ImportError:
        raise invalid(
            "wandb", True, "Weights & Biases is not installed; pip install wandb (or leave --wandb off)"
        ) from None
    return wandb


def chunk_means(values: np.ndarray) -> np.ndarray:
    """Mean over a chunk's steps (axis 1) of the finite values per run; nan where none is finite."""
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    count = finite.sum(axis=1)
    total = np.where(finite, values, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), math.nan)


class RunLogger:
    """Scalar series for each of many runs: one TensorBoard directory per run under ``log_dir``,
    and one Weights & Biases run each when ``wandb`` (grouped by ``group``, with ``config``).

    ``open(names)`` starts the writers (``train`` calls it with :func:`run_names`);
    ``log(step, {tag: per-run values})`` adds one point per run and tag; ``close()`` ends them.
    ``log_dir=None`` writes no event files. Asking for wandb without it installed is a ConfigError
    at construction, before anything trains.
    """

    def __init__(
        self,
        log_dir: str | Path | None = None,
        *,
        wandb: bool = False,
        group: str = "jaxrae",
        config: Mapping[str, Any] | None = None,
    ):
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.wandb = require_wandb() if wandb else None
        self.group = group
        self.config = dict(config or {})
        self.names: list[str] | None = None
        self._writers: list[EventFileWriter] = []
        self._wandb_runs: list[Any] = []

    def open(self, names: Sequence[str]) -> None:
        """Start one writer per run name (again with the same names: nothing to do)."""
        names = list(names)
        if self.names is not None:
            if names != self.names:
                raise ValueError(f"this logger is open for runs {self.names}, not {names}")
            return
        self.names = names
        if self.log_dir is not None:
            self._writers = [EventFileWriter(self.log_dir / name) for name in names]
        if self.wandb is not None:
            project = os.environ.get("WANDB_PROJECT", "jaxrae")
            self._wandb_runs = [
                self.wandb.init(
                    project=project,
                    group=self.group,
                    name=f"{self.group}/{name}",
                    reinit="create_new",
                    config={**self.config, "run": name},
                )
                for name in names
            ]

    def log(self, step: int, scalars: Mapping[str, Sequence[float]]) -> None:
        """Point ``step`` of every series ``tag``, one value per run (in the order of ``open``)."""
        if self.names is None:
            raise ValueError("RunLogger.log before open(names)")
        for i in range(len(self.names)):
            values = {tag: float(np.asarray(v)[i]) for tag, v in scalars.items()}
            if self._writers:
                self._writers[i].add_scalars(step, values)
            if self._wandb_runs:
                self._wandb_runs[i].log(values, step=int(step))
        for writer in self._writers:
            writer.flush()

    def close(self) -> None:
        for writer in self._writers:
            writer.close()
        for run in self._wandb_runs:
            run.finish()
        self._writers, self._wandb_runs, self.names = [], [], None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
