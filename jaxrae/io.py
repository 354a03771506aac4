"""Files a run writes: atomic writes, output directories, JSON round trips, checkpoints.

- Atomic writes: every write goes to a temporary file in the same directory, is flushed and
  fsynced, and then renamed over the target (``os.replace`` is atomic on POSIX), so a crash
  leaves either the old file or the new one, never half of one.
- Output directories: :func:`prepare_out_dir` refuses to write into a directory that already
  holds results unless the caller resumes or overwrites it.
- JSON: :func:`json_roundtrip` gives a value as it reads back from JSON (what a saved header is
  compared with), :func:`nonfinite_to_null` makes it strict JSON (nan/inf become null).
- Checkpoints: one msgpack blob (``flax.serialization``) holding a pytree and a JSON header;
  reading a truncated or foreign file raises :class:`CheckpointError`.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flax import serialization

from jaxrae.errors import CheckpointError, require

FORMAT = "jaxrae-checkpoint-v1"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; results are meant to be shared like any file the user writes.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically; NumPy scalars/arrays and paths are converted."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as a compressed ``.npz`` (``np.savez_compressed``) to ``path`` atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Create ``out``; refuse a directory that holds results unless ``resume`` or ``overwrite``.

    ``overwrite`` deletes what ``out`` holds first; ``resume`` keeps it (the caller continues it).
    The messages name the command-line flags (``--resume``, ``--overwrite``) that set these.
    """
    require(not (resume and overwrite), "--overwrite", overwrite, "excludes --resume; choose one")
    if out.exists() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        else:
            require(resume, "--out", str(out), "the directory already holds results; pass --resume to continue it "
                    "or --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)


def _json_default(obj):
    """What :func:`json.dumps` writes for the non-JSON types a result holds (NumPy values, paths)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def json_roundtrip(obj: Any) -> Any:
    """``obj`` as it reads back from JSON: tuples become lists, NumPy values Python numbers, paths strings.

    A saved header is compared with ``json_roundtrip(header)`` of the current run, so that a
    tuple in the config does not make an identical run look foreign.
    """
    return json.loads(json.dumps(obj, default=_json_default))


def nonfinite_to_null(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, tuples) with every nan/inf float replaced by None (JSON null).

    Results files stay strict JSON, which jq and other parsers accept (Python's ``json`` would
    write the non-standard ``NaN``); :mod:`jaxrae.report` reads null back as nan.
    """
    if isinstance(obj, dict):
        return {k: nonfinite_to_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nonfinite_to_null(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        return None
    return obj


def restore_into(target: Any, state_dict: Any, path: str | os.PathLike) -> Any:
    """``state_dict`` (a part of what :func:`load_checkpoint` read) restored into ``target``'s structure.

    Raises CheckpointError when the saved tree has another structure than ``target``.
    """
    try:
        return serialization.from_state_dict(target, state_dict)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} does not match this run's structure ({e}); rerun with --overwrite") from None


def save_checkpoint(path: str | os.PathLike, tree: Any, header: dict) -> None:
    """Atomically write ``tree`` (a pytree of arrays) with a JSON-ready ``header``."""
    state = serialization.to_state_dict(tree)
    state = _to_numpy(state)
    blob = serialization.msgpack_serialize({"format": FORMAT, "header": json.dumps(header, default=_json_default), "tree": state})
    atomic_write_bytes(path, blob)


def load_checkpoint(path: str | os.PathLike) -> tuple[Any, dict]:
    """Read a checkpoint; returns (tree as nested dicts of NumPy arrays, header).

    The caller restores the parts whose structure it knows with :func:`restore_into` (the
    training state) and reads the rest as is (a metric history).

    Raises CheckpointError (naming the file and the fault) when the file is missing, truncated
    or not a jaxrae checkpoint.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    try:
        blob = serialization.msgpack_restore(raw)
    except Exception as e:  # msgpack raises several unrelated types on corrupt input
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}); delete it or rerun with --overwrite") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file; delete it or rerun with --overwrite")
    try:
        return blob["tree"], json.loads(blob["header"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has no valid header or tree ({type(e).__name__}); delete it or rerun with --overwrite") from None


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
