"""Ctrl-C during a long run: training asks ``should_stop`` after every chunk, once that chunk's
checkpoint is written, and stops there; the CLI turns the first Ctrl-C into that request (a
second one aborts at once), exits 130 with a resumable directory, and ``--resume`` ends where an
uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import chex
import numpy as np
import pytest

from jaxrae import cli
from jaxrae import io as jio
from jaxrae.compare import run_compare
from jaxrae.config import TrainConfig
from jaxrae.data import load_data
from jaxrae.experiment import Experiment
from jaxrae.train import load_runs, train

#: 3 chunks of 4 steps: the unit tests stop after the 2nd and after the 3rd (last) one.
CONFIG = TrainConfig(method="ae", steps=12, chunk_size=4, batch_size=16, latent_dim=2)
SEEDS = [0, 1]


def answers(*values):
    """A should_stop that gives ``values`` in turn and records how often it was asked."""
    calls = []

    def should_stop():
        calls.append(None)
        return values[len(calls) - 1]

    return should_stop, calls


@pytest.fixture(scope="module")
def straight(digits):
    return train(CONFIG, digits, SEEDS, progress=False)


def test_should_stop_ends_training_after_that_chunk_and_the_checkpoint_resumes_bitwise(digits, straight, tmp_path):
    path = tmp_path / "ckpt.msgpack"
    should_stop, calls = answers(False, True)
    with pytest.raises(KeyboardInterrupt, match="step 8 of 12"):
        train(CONFIG, digits, SEEDS, checkpoint_path=path, progress=False, should_stop=should_stop)
    assert len(calls) == 2  # asked after chunks 1 and 2, not again
    saved, _ = jio.load_checkpoint(path)
    assert saved["state"]["step"].tolist() == [8, 8]  # the chunk where it turned True is saved
    assert saved["history"]["loss"].shape == (2, 8)

    resumed = train(CONFIG, digits, SEEDS, checkpoint_path=path, progress=False)
    chex.assert_trees_all_equal((resumed.state, resumed.metrics), (straight.state, straight.metrics))


def test_should_stop_after_the_last_chunk_still_stops_with_the_finished_checkpoint(digits, straight, tmp_path):
    path = tmp_path / "ckpt.msgpack"
    should_stop, calls = answers(False, False, True)
    with pytest.raises(KeyboardInterrupt, match="step 12 of 12"):
        train(CONFIG, digits, SEEDS, checkpoint_path=path, progress=False, should_stop=should_stop)
    assert len(calls) == 3
    # the resume trains nothing more and gives the uninterrupted run; should_stop is not asked
    should_stop, calls = answers()
    resumed = train(CONFIG, digits, SEEDS, checkpoint_path=path, progress=False, should_stop=should_stop)
    assert calls == []
    chex.assert_trees_all_equal((resumed.state, resumed.metrics), (straight.state, straight.metrics))


def test_first_ctrl_c_asks_to_stop_and_a_second_aborts_at_once(capsys):
    request = cli._InterruptRequest()
    assert not request
    request(signal.SIGINT, None)  # no exception: the command stops at its next chunk boundary
    assert request
    assert capsys.readouterr().err == cli.STOPPING_MESSAGE  # capsys has no file descriptor: the fallback
    with pytest.raises(KeyboardInterrupt):
        request(signal.SIGINT, None)


# ---------------------------------------------------------------------------------------------
# A comparison: should_stop reaches the row's training, and an evaluation under way is finished.


def test_compare_stops_inside_a_row_and_after_an_evaluation_then_resumes(digits, tmp_path):
    experiment = Experiment(
        methods=("ae",),
        seeds=(0,),
        n_train=100,
        n_test=40,
        n_eval=20,
        feature_steps=2,
        n_components=2,
        likelihood_k=None,  # no test likelihoods: one program fewer to compile
        config={"steps": 20, "chunk_size": 10, "batch_size": 16, "latent_dim": 2},
    )
    out = tmp_path / "out"
    quiet = dict(progress=False, log=lambda *_: None, figures=False, tensorboard=False)
    # 1. asked before the row (no), after its first chunk (yes): stopped inside the row
    should_stop, calls = answers(False, True)
    with pytest.raises(KeyboardInterrupt):
        run_compare(experiment, out, should_stop=should_stop, **quiet)
    assert len(calls) == 2
    saved, _ = jio.load_checkpoint(out / "checkpoints" / "ae.msgpack")
    assert saved["state"]["step"].tolist() == [10]
    assert not (out / "methods" / "ae.json").exists()
    # 2. the request comes while the row is evaluated: the evaluation ends and is kept, nothing after it runs
    should_stop, calls = answers(False, False, True)  # before the row, after its last chunk, after the row
    with pytest.raises(KeyboardInterrupt):
        run_compare(experiment, out, resume=True, should_stop=should_stop, **quiet)
    assert len(calls) == 3
    assert (out / "methods" / "ae.json").exists() and not (out / "results.json").exists()
    # 3. the resume reports the finished row; its model is the uninterrupted run's, bit for bit
    run_compare(experiment, out, resume=True, **quiet)
    assert (out / "results.json").exists()
    straight = train(experiment.method_config("ae"), load_data("digits", n_train=100, n_test=40), [0], progress=False)
    model = load_runs(out, row="ae")
    chex.assert_trees_all_equal((model.state.params, model.metrics), (straight.state.params, straight.metrics))


# ---------------------------------------------------------------------------------------------
# The command, interrupted by a real SIGINT while it trains.

TRAIN_CONFIG = TrainConfig(method="ae", steps=200, chunk_size=10, batch_size=16, latent_dim=2)
TRAIN = [
    "train",
    "--method",
    "ae",
    "--seeds",
    "1",
    "--steps",
    str(TRAIN_CONFIG.steps),
    "--chunk-size",
    str(TRAIN_CONFIG.chunk_size),
    "--batch-size",
    str(TRAIN_CONFIG.batch_size),
    "--latent-dim",
    str(TRAIN_CONFIG.latent_dim),
    "--quiet",
    "--no-tensorboard",
]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def test_ctrl_c_while_training_stops_at_a_chunk_boundary_exits_130_and_resumes_bitwise(digits, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "jaxrae.cli", *TRAIN, "--out", str(out)]
    checkpoint = out / "checkpoint.msgpack"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.exists():  # the first chunk is saved: the run is inside its training
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err  # not -11 (SIGSEGV), not 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [
        cli.STOPPING_MESSAGE.strip(),
        "jaxrae: interrupted; rerun the same command with --resume to continue",
    ], err
    # stopped at a chunk boundary (the next one after the signal) with that chunk saved
    saved, _ = jio.load_checkpoint(checkpoint)
    step = int(saved["state"]["step"][0])
    assert 10 <= step <= TRAIN_CONFIG.steps and step % TRAIN_CONFIG.chunk_size == 0
    assert saved["history"]["loss"].shape == (1, step)
    assert not (out / "history.json").exists()

    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True, env=ENV, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    history = json.loads((out / "history.json").read_text())
    straight = train(TRAIN_CONFIG, digits, [0], progress=False)
    np.testing.assert_array_equal(np.asarray(history["metrics"]["loss"], np.float32), straight.losses)
