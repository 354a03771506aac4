"""The `jaxrae` command through a subprocess: listing, training, and one-line errors (exit 2)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxrae import methods

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def jaxrae(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "jaxrae.cli", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600
    )


def test_methods_lists_every_preset():
    out = jaxrae("methods")
    assert out.returncode == 0, out.stderr
    for name in methods.names():
        assert f"\n{name} " in "\n" + out.stdout
    # Each line says at which pixel count its weights are stated (rescaled on other image sizes).
    lines = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:] if line.split()}
    for name in methods.names():
        stated = methods.get(name).weight_pixels
        assert lines[name][7] == ("-" if stated is None else str(stated)), lines[name]
    assert "P / P0" in out.stdout.splitlines()[-1]


def test_train_writes_results_and_refuses_to_overwrite(tmp_path):
    out_dir = tmp_path / "run"
    args = [
        "train",
        "--method",
        "rae-l2",
        "--data",
        "digits",
        "--seeds",
        "2",
        "--steps",
        "20",
        "--batch-size",
        "32",
        "--chunk-size",
        "10",
        "--lam",
        "1e-6",
        "--out",
        str(out_dir),
        "--quiet",
    ]
    done = jaxrae(*args)
    assert done.returncode == 0, done.stderr
    assert "test reconstruction error" in done.stdout
    config = json.loads((out_dir / "config.json").read_text())
    assert config["config"]["lam"] == 1e-6 and config["seeds"] == [0, 1]
    history = json.loads((out_dir / "history.json").read_text())
    assert len(history["metrics"]["loss"]) == 2 and len(history["metrics"]["loss"][0]) == 20
    assert history["environment"]["versions"]["jax"]
    assert (out_dir / "checkpoint.msgpack").stat().st_size > 0

    again = jaxrae(*args)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "--resume" in again.stderr
    resumed = jaxrae(*args, "--resume")  # finished: nothing left to train, same results
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out_dir / "history.json").read_text())["metrics"]["loss"] == history["metrics"]["loss"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--method", "nope", "--out", "{tmp}/a"], "method='nope'"),
        (["train", "--latent-dim", "0", "--out", "{tmp}/b"], "latent_dim=0"),
        (["train", "--beta", "-1", "--out", "{tmp}/c"], "beta=-1"),
        (["train", "--batch-size", "100000", "--steps", "1", "--out", "{tmp}/d"], "batch_size=100000"),
        (["train", "--data", "idx:/no/such/dir", "--steps", "1", "--out", "{tmp}/e"], "/no/such/dir"),
        (["train", "--data", "nonsense", "--steps", "1", "--out", "{tmp}/f"], "nonsense"),
        (["train", "--method", "drae", "--tau", "0", "--out", "{tmp}/g"], "tau"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, needle):
    done = jaxrae(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith("jaxrae: error:") and needle in line


def test_corrupt_idx_file_is_one_line_error(tmp_path):
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (tmp_path / name).write_bytes(b"\x00\x00\x07\x03" + b"\x00" * 20)  # wrong dtype code 0x07
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"\x00\x00\x08\x01" + np.array([3], ">i4").tobytes() + b"\x01\x02\x03")
    done = jaxrae("train", "--data", f"idx:{tmp_path}", "--steps", "1", "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "train-images-idx3-ubyte" in done.stderr
