"""A run killed with SIGKILL mid-training resumes from its checkpoint to the same parameters."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxrae.io import atomic_write_bytes, load_checkpoint


def _train_args(out):
    return [sys.executable, "-m", "jaxrae.cli", "train", "--method", "vae", "--data", "digits", "--seeds", "2",
            "--steps", "200", "--batch-size", "32", "--chunk-size", "10", "--out", str(out), "--quiet"]


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

    a, b = _final_state(killed), _final_state(straight)
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


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
    from jaxrae.errors import CheckpointError

    path = tmp_path / "c.msgpack"
    path.write_bytes(b"\x85\xa6format")  # a msgpack map cut short
    with pytest.raises(CheckpointError, match="--overwrite"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
