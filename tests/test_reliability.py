"""Files that survive crashes: a run killed with SIGKILL resumes from its checkpoint to the same
parameters; atomic writes, output directories, JSON round trips and checkpoints of jaxrae.io."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import numpy as np
import pytest

from jaxrae.errors import CheckpointError, ConfigError
from jaxrae.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npz,
    json_roundtrip,
    load_checkpoint,
    nonfinite_to_null,
    prepare_out_dir,
    restore_into,
    save_checkpoint,
)


def _train_args(out):
    return [
        sys.executable,
        "-m",
        "jaxrae.cli",
        "train",
        "--method",
        "vae",
        "--data",
        "digits",
        "--seeds",
        "2",
        "--steps",
        "200",
        "--batch-size",
        "32",
        "--chunk-size",
        "10",
        "--out",
        str(out),
        "--quiet",
    ]


def _final_state(out):
    tree, _ = load_checkpoint(out / "checkpoint.msgpack")
    return tree["state"]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    proc = subprocess.Popen(_train_args(killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = killed / "checkpoint.msgpack"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial_steps = int(np.asarray(_final_state(killed)["step"])[0])
    assert 0 < partial_steps < 200

    resumed = subprocess.run(_train_args(killed) + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    done = subprocess.run(_train_args(straight), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    chex.assert_trees_all_equal(_final_state(killed), _final_state(straight))  # structure and every leaf, bitwise


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    atomic_write_bytes(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any file the user writes


def test_partial_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "c.msgpack"
    path.write_bytes(b"\x85\xa6format")  # a msgpack map cut short
    with pytest.raises(CheckpointError, match="--overwrite"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_json_roundtrip_is_what_json_reads_back(tmp_path):
    value = {"t": (1, (2, 3)), "f": np.float32(0.5), "i": np.int64(7), "a": np.arange(3), "p": Path("x/y")}
    back = json_roundtrip(value)
    assert back == {"t": [1, [2, 3]], "f": 0.5, "i": 7, "a": [0, 1, 2], "p": "x/y"}
    assert type(back["i"]) is int and type(back["f"]) is float
    atomic_write_json(tmp_path / "v.json", value)
    assert json.loads((tmp_path / "v.json").read_text()) == back  # the same conversion as a written file
    with pytest.raises(TypeError, match="not JSON-serialisable: object"):
        json_roundtrip({"x": object()})


def test_nonfinite_to_null_gives_strict_json():
    value = {"a": [1.0, math.nan, np.float32(np.inf)], "b": (np.float64(-np.inf), 2, "nan"), "c": {"d": math.nan}}
    safe = nonfinite_to_null(value)
    assert safe == {"a": [1.0, None, None], "b": [None, 2, "nan"], "c": {"d": None}}
    json.dumps(safe, allow_nan=False)  # raises ValueError if any nan/inf were left


def test_atomic_write_npz_round_trips_arrays(tmp_path):
    arrays = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.array([True, False])}
    atomic_write_npz(tmp_path / "a.npz", arrays)
    with np.load(tmp_path / "a.npz") as z:
        chex.assert_trees_all_equal({k: z[k] for k in z.files}, arrays)
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]


def test_prepare_out_dir_refuses_results_unless_resumed_or_overwritten(tmp_path):
    out = tmp_path / "out"
    prepare_out_dir(out, resume=False, overwrite=False)  # created
    assert out.is_dir()
    (out / "results.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"--out=.* is invalid: .*--resume.*--overwrite"):
        prepare_out_dir(out, resume=False, overwrite=False)
    prepare_out_dir(out, resume=True, overwrite=False)
    assert (out / "results.json").exists()  # resume keeps what is there
    with pytest.raises(ConfigError, match="--overwrite=True is invalid: excludes --resume"):
        prepare_out_dir(out, resume=True, overwrite=True)
    prepare_out_dir(out, resume=False, overwrite=True)
    assert out.is_dir() and [p.name for p in out.iterdir()] == [".jaxrae-output"]  # only the marker (and lock) remains


def test_checkpoint_round_trip_and_structure_mismatch(tmp_path):
    path = tmp_path / "c.msgpack"
    tree = {"w": np.arange(4.0).reshape(2, 2), "step": np.int32(3)}
    save_checkpoint(path, {"state": tree}, {"config": {"dims": (2, 2)}, "seed": np.int64(1)})
    saved, header = load_checkpoint(path)
    assert header == {"config": {"dims": [2, 2]}, "seed": 1}  # the header reads back as JSON
    chex.assert_trees_all_equal(restore_into(tree, saved["state"], path), tree)
    with pytest.raises(CheckpointError, match="does not match"):
        restore_into({**tree, "extra": np.zeros(2)}, saved["state"], path)  # a leaf the file lacks
