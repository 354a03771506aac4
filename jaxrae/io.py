"""Files a run writes: atomic writes, output directories, JSON round trips, checkpoints.

- Atomic writes: every write goes to a temporary file in the same directory, is flushed and
  fsynced, and then renamed over the target (``os.replace`` is atomic on POSIX), so a crash
  leaves either the old file or the new one, never half of one.
- Output directories: :func:`prepare_out_dir` claims one for a run: it refuses a directory that
  already holds results unless the caller resumes or overwrites it, marks it as jaxrae's
  (:data:`MARKER`) and locks it, so two processes never write into the same one.
- JSON: :func:`json_roundtrip` gives a value as it reads back from JSON (what a saved header is
  compared with), :func:`nonfinite_to_null` makes it strict JSON (nan/inf become null).
- Checkpoints: one msgpack blob (``flax.serialization``) holding a pytree, a JSON header and
  a SHA-256 of the header and of every array; reading a truncated, foreign or altered file, or
  restoring one whose leaves differ in path, shape or dtype from the run's, raises
  :class:`CheckpointError`. Resume checkpoints and the final models that
  :func:`jaxrae.train.save_runs` keeps are both this format.

Why not Orbax (``orbax-checkpoint``, which flax already installs): measured with
orbax-checkpoint 0.12.8 on CPU, for the 16 MB state of four ``ae`` runs (one shared machine, so
ratios, not times): :class:`orbax.checkpoint.StandardCheckpointer` saves in 1.4x and its
``CheckpointManager`` in 2.2x the time of :func:`save_checkpoint` (SHA-256 and fsync included),
restores in 2x the time of :func:`load_checkpoint`, and ``import orbax.checkpoint`` adds about
8 s to every CLI start. Orbax stores no checksum per array: one bit flipped in an array file of
an Orbax checkpoint restored without an error, with two values changed. Its gains, per-process
shards and async writes, matter for states that strain one host's memory or network; jaxrae's
states are autoencoders of megabytes per run, which :func:`jaxrae.train.train` gathers to every
process at each chunk (that gather's cost across hosts has not been measured).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np
from flax import serialization

from jaxrae.errors import CheckpointError, invalid, require

FORMAT = "jaxrae-checkpoint-v2"


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


#: The file jaxrae writes into every output directory it creates: it marks the directory as
#: jaxrae's (``--overwrite`` deletes only such directories) and is the lock a run holds on it.
MARKER = ".jaxrae-output"
_MARKER_TEXT = (
    "This directory was written by jaxrae. While a run holds an exclusive flock on this file, "
    "no other jaxrae process writes here; `--overwrite` deletes only directories that hold it.\n"
)


class OutDirClaim:
    """An output directory claimed by this process: an exclusive ``flock`` on its :data:`MARKER`.

    The lock lives as long as the open file: :meth:`release` (or leaving the ``with`` block, or
    the process ending, even by SIGKILL) lets the next run claim the directory.
    """

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Unlock the directory (closing the marker's descriptor drops the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # like a file object: a claim nobody holds any more unlocks its directory
        self.release()


def _open_marker(path: Path) -> int:
    """The marker's descriptor, created if missing (a separate function so tests can fail it)."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)


def _results_in(out: Path) -> list[Path]:
    """What ``out`` holds apart from the marker (nothing when it does not exist)."""
    try:
        return sorted(p for p in out.iterdir() if p.name != MARKER)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise invalid("--out", str(out), f"cannot list it: {e.strerror or e}") from None


def _check_out_dir(out: Path, resume: bool, overwrite: bool) -> list[Path]:
    """Every refusal :func:`prepare_out_dir` can make, without writing anything; returns what ``out`` holds."""
    require(not (resume and overwrite), "--overwrite", overwrite, "excludes --resume; choose one")
    require(not out.exists() or out.is_dir(), "--out", str(out), "it is a file, not a directory; choose a directory")
    held = _results_in(out)
    if not held:
        return held
    if overwrite:
        here = Path.cwd().resolve()
        target = out.resolve()
        require(
            target != here and target not in here.parents,
            "--out",
            str(out),
            "--overwrite would delete the working directory or a directory above it; choose a subdirectory",
        )
        require(
            (out / MARKER).is_file(),
            "--out",
            str(out),
            f"it holds files that jaxrae did not write (no {MARKER} marker), and --overwrite deletes only "
            "jaxrae's output directories; empty it yourself or choose another --out",
        )
    else:
        require(
            resume,
            "--out",
            str(out),
            "the directory already holds results; pass --resume to continue it or --overwrite to replace it",
        )
    return held


def prepare_out_dir(out: str | os.PathLike, resume: bool, overwrite: bool) -> OutDirClaim:
    """Claim ``out`` for one run: create it, lock it, and (``overwrite``) empty it; returns the claim.

    Refuses, with a ConfigError and before writing anything, a directory that holds results
    unless ``resume`` (keep them; the caller continues them) or ``overwrite`` (delete them). The
    claim is atomic: an exclusive, non-blocking ``flock`` on ``out/.jaxrae-output`` (:data:`MARKER`),
    held until :meth:`OutDirClaim.release`, so a second process on the same directory gets a
    ConfigError instead of writing into the first one's results. The checks are repeated under
    the lock, since another process may have written between the first look and the lock.
    ``overwrite`` deletes only a directory that holds the marker, never the working directory or
    one above it, and deletes last: callers validate everything else first. The messages name
    the command-line flags (``--out``, ``--resume``, ``--overwrite``).

    Use it as ``with prepare_out_dir(out, resume, overwrite): ...``.
    """
    out = Path(out)
    _check_out_dir(out, resume, overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = _open_marker(out / MARKER)
    except OSError as e:
        raise invalid("--out", str(out), f"cannot write to it: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise invalid(
                "--out",
                str(out),
                "another jaxrae process is writing to it; wait until it finishes, or choose another --out",
            ) from None
        except OSError as e:
            raise invalid("--out", str(out), f"cannot lock {MARKER} in it: {e.strerror or e}") from None
        held = _check_out_dir(out, resume, overwrite)
        if overwrite:
            for path in held:
                try:
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                except OSError as e:
                    raise invalid("--out", str(out), f"cannot delete {path.name} in it: {e.strerror or e}") from None
        if os.fstat(fd).st_size == 0:
            os.write(fd, _MARKER_TEXT.encode())
            os.fsync(fd)
        require(os.access(out, os.W_OK | os.X_OK), "--out", str(out), "cannot write to it: permission denied")
    except BaseException:
        os.close(fd)
        raise
    return OutDirClaim(out, fd)


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


def restore_into(target: Any, state_dict: Any, path: str | os.PathLike, redo: str | None = None) -> Any:
    """``state_dict`` (a part of what :func:`load_checkpoint` read) restored into ``target``'s structure.

    ``target`` is the freshly initialised pytree of this run; every leaf of ``state_dict`` must
    sit at the same path with the same shape and dtype (:func:`flax.serialization.from_state_dict`
    checks only the keys, and a float64 or reshaped array would otherwise reach the compiled step).
    Raises CheckpointError naming the first leaf that differs (which leaf, this run's vs the file's),
    ending with ``redo``, what to do (default: delete the file or overwrite).
    """
    redo = redo or "delete it or rerun with --overwrite"
    fault = _first_mismatch(serialization.to_state_dict(target), state_dict, "")
    if fault is not None:
        raise CheckpointError(f"checkpoint {path} does not match this run: {fault}; {redo}")
    try:
        return serialization.from_state_dict(target, state_dict)
    except Exception as e:  # a leaf type flax cannot restore; every key, shape and dtype matched above
        raise CheckpointError(f"checkpoint {path} does not match this run ({e}); {redo}") from None


def save_checkpoint(path: str | os.PathLike, tree: Any, header: dict) -> None:
    """Atomically write ``tree`` (a pytree of arrays) with a JSON-ready ``header``, each with its SHA-256.

    The file is one msgpack map (:func:`flax.serialization.msgpack_serialize`)::

        {"format": FORMAT, "header": <JSON text>, "tree": <nested dicts of arrays>,
         "sha256": {"header": <hex>, "tree": <the same nesting, one hex digest per array>}}

    where an array's digest is :func:`array_digest` (dtype, shape and bytes). :func:`load_checkpoint`
    recomputes every digest, so any changed byte of an array, its shape, its dtype or the header is
    refused, whether or not it still decodes to valid numbers (a flipped mantissa bit, a negated
    Adam second moment).
    """
    state = _to_numpy(serialization.to_state_dict(tree))
    header_text = json.dumps(header, default=_json_default)
    digests = {"header": _text_digest(header_text), "tree": _digest_tree(state)}
    blob = serialization.msgpack_serialize({"format": FORMAT, "header": header_text, "tree": state, "sha256": digests})
    atomic_write_bytes(path, blob)


def load_checkpoint(path: str | os.PathLike, redo: str | None = None) -> tuple[Any, dict]:
    """Read and verify a checkpoint; returns (tree as nested dicts of NumPy arrays, header).

    The caller restores the parts whose structure it knows with :func:`restore_into` (the
    training state) and reads the rest as is (a metric history).

    Raises CheckpointError (one line: the file, the fault, what to do) when the file is missing,
    truncated, not a jaxrae checkpoint, of the older format without checksums
    (``jaxrae-checkpoint-v1``: it cannot be verified, so it is refused rather than trusted), or
    when the header or any array differs from the SHA-256 written with it. ``redo`` ends the
    message with what to do (default: delete the file, its runs restart from step 0, or overwrite).
    """
    path = Path(path)
    redo = redo or "delete it (its runs restart from step 0) or rerun with --overwrite"
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    try:
        blob = serialization.msgpack_restore(raw)
    except Exception as e:  # msgpack raises several unrelated types on corrupt input
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}); {redo}") from None
    found = blob.get("format") if isinstance(blob, dict) else None
    if found in _UNVERIFIABLE_FORMATS:
        raise CheckpointError(
            f"checkpoint {path} has the older format {found}, which carries no checksums and cannot be verified; {redo}"
        )
    if found != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file; {redo}")
    digests = blob.get("sha256")
    header_text, tree = blob.get("header"), blob.get("tree")
    if not (
        isinstance(digests, dict)
        and isinstance(digests.get("tree"), dict)
        and isinstance(header_text, str)
        and isinstance(tree, dict)
    ):
        raise CheckpointError(f"checkpoint {path} lacks its header, tree or checksums; {redo}")
    if digests.get("header") != _text_digest(header_text):
        raise CheckpointError(f"checkpoint {path} is corrupt: its header fails its SHA-256 check; {redo}")
    fault = _first_digest_fault(tree, digests.get("tree"), "")
    if fault is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: {fault}; {redo}")
    try:
        header = json.loads(header_text)
    except ValueError as e:  # save writes json.dumps output: only a file whose digests were recomputed gets here
        raise CheckpointError(f"checkpoint {path} has no valid header ({type(e).__name__}); {redo}") from None
    return tree, header


#: Formats jaxrae wrote before checkpoints carried checksums: named in the refusal, never read.
_UNVERIFIABLE_FORMATS = ("jaxrae-checkpoint-v1",)


def array_digest(array: np.ndarray) -> str:
    """SHA-256 (hex) of an array's dtype, shape and C-order bytes: ``sha256(dtype.str | shape | bytes)``.

    The dtype string carries the byte order (``'<f4'``), so equal digests mean the same values
    of the same type and shape; a float32 array and its float64 copy, or a (2, 3) array and its
    (3, 2) reshape, differ.
    """
    array = np.asarray(array)
    h = hashlib.sha256(f"{array.dtype.str}|{array.shape}|".encode())
    h.update(np.ascontiguousarray(array).data)  # the buffer itself: no copy of a large array
    return h.hexdigest()


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _digest_tree(tree):
    """``tree`` (nested dicts of NumPy arrays) with every array replaced by its :func:`array_digest`."""
    if isinstance(tree, dict):
        return {k: _digest_tree(v) for k, v in tree.items()}
    return array_digest(tree)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key


def _first_digest_fault(tree, digests, prefix: str) -> str | None:
    """The first leaf of ``tree`` whose SHA-256 differs from ``digests`` (same nesting), as a phrase; None if all agree."""
    where = prefix or "the tree"
    if isinstance(digests, dict) or isinstance(tree, dict):
        if not (isinstance(digests, dict) and isinstance(tree, dict)):
            return f"{where} is {_kind(digests)} in its checksums but {_kind(tree)} in its tree"
        for key in sorted(set(tree) | set(digests), key=str):
            if key not in digests:
                return f"{_join(prefix, key)} has no checksum (a leaf that was not written with the file)"
            if key not in tree:
                return f"{_join(prefix, key)} has a checksum but is missing from the tree"
            fault = _first_digest_fault(tree[key], digests[key], _join(prefix, key))
            if fault is not None:
                return fault
        return None
    if not isinstance(tree, (np.ndarray, np.generic)) or digests != array_digest(tree):
        return f"{where} fails its SHA-256 check (its bytes changed after it was written)"
    return None


def _kind(node) -> str:
    return "a subtree" if isinstance(node, dict) else "an array"


def _first_mismatch(expected, found, prefix: str) -> str | None:
    """The first difference between two state dicts (this run's, the file's) as a phrase naming the leaf; None if none.

    Compared: the keys at every level (a leaf missing from the file, or one this run does not
    have), and each array's shape and dtype.
    """
    where = prefix or "the state"
    if found is None and expected is not None:
        return f"{where} is missing from the file"
    if isinstance(expected, dict) or isinstance(found, dict):
        if not (isinstance(expected, dict) and isinstance(found, dict)):
            return f"{where} is {_kind(expected)} in this run but {_kind(found)} in the file"
        missing = [k for k in expected if k not in found]
        if missing:
            return f"{_join(prefix, missing[0])} is missing from the file"
        extra = [k for k in found if k not in expected]
        if extra:
            return f"{_join(prefix, extra[0])} is in the file but not in this run"
        for key in expected:
            fault = _first_mismatch(expected[key], found[key], _join(prefix, key))
            if fault is not None:
                return fault
        return None
    if expected is None:
        return None if found is None else f"{where} is empty in this run but an array in the file"
    # jax.Array and np.ndarray leaves give shape and dtype without a copy; other scalars via NumPy
    want_shape, want_dtype = tuple(np.shape(expected)), getattr(expected, "dtype", None)
    want_dtype = np.asarray(expected).dtype if want_dtype is None else np.dtype(want_dtype)
    got_shape, got_dtype = tuple(np.shape(found)), np.asarray(found).dtype
    if want_shape != got_shape:
        return f"{where} has shape {want_shape} in this run but {got_shape} in the file"
    if want_dtype != got_dtype:
        return f"{where} has dtype {want_dtype} in this run but {got_dtype} in the file"
    return None


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
