"""Reloading trained runs: ``jaxrae.load_runs`` gives back the models ``jaxrae train`` and ``jaxrae
compare`` keep, bitwise, in a fresh process; a damaged, foreign or ill-fitting model is one
CheckpointError line; a kill during the final save, then ``--resume``, keeps the same model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from _tiny_compare import TINY_COMPARE

import jaxrae
from jaxrae.compare import run_compare
from jaxrae.config import TrainConfig
from jaxrae.errors import CheckpointError
from jaxrae.evaluate import evaluate
from jaxrae.experiment import Experiment
from jaxrae.features import feature_network
from jaxrae.io import load_checkpoint, nonfinite_to_null, save_checkpoint
from jaxrae.train import MODEL_FILE, TRAIN_MODEL_DIR, load_runs, save_runs, train

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
TRAIN_ARGS = [
    "train",
    "--method",
    "rae",
    "--seeds",
    "2",
    "--steps",
    "20",
    "--chunk-size",
    "10",
    "--batch-size",
    "16",
    "--latent-dim",
    "4",
    "--quiet",
]

# Run in a fresh interpreter: train with `jaxrae train` (mode "train") or reload (mode "load"),
# then write every output of the Runs for the same keys and images to an .npz.
SCRIPT = r"""
import sys
import jax, numpy as np
import jaxrae
from jaxrae.cli import main

mode, out, result = sys.argv[1:4]
if mode == "train":
    assert main([*sys.argv[4:], "--out", out]) == 0
runs = jaxrae.load_runs(out)
data = jaxrae.load_data("digits")
test, fit_images = data.test_images[:64], data.train_images[:400]
fitted = runs.fit_ex_post(jax.random.key(2), fit_images, n_components=3)
arrays = {"codes": runs.encode(test), "reconstructions": runs.reconstruct(test),
          "prior": runs.sample_prior(jax.random.key(1), 8), "ex_post": runs.sample_ex_post(jax.random.key(3), fitted, 8),
          "loss": runs.losses, "diverged_at": runs.diverged_at}
arrays.update({"fit/" + jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree.leaves_with_path(fitted)})
np.savez(result, **arrays)
"""


def _outputs(runs: jaxrae.Runs, data) -> dict[str, np.ndarray]:
    """What SCRIPT writes, computed here from a Runs in this process (same keys, same images)."""
    test, fit_images = data.test_images[:64], data.train_images[:400]
    fitted = runs.fit_ex_post(jax.random.key(2), fit_images, n_components=3)
    arrays = {
        "codes": runs.encode(test),
        "reconstructions": runs.reconstruct(test),
        "prior": runs.sample_prior(jax.random.key(1), 8),
        "ex_post": runs.sample_ex_post(jax.random.key(3), fitted, 8),
        "loss": runs.losses,
        "diverged_at": runs.diverged_at,
    }
    arrays.update({"fit/" + jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree.leaves_with_path(fitted)})
    return arrays


def _script(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )


def _read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.slow
def test_a_trained_run_reloads_bitwise_in_a_fresh_process(tmp_path, digits):
    out = tmp_path / "out"
    trained = _script(
        "train", out, tmp_path / "trained.npz", *TRAIN_ARGS
    )  # `jaxrae train`, then load_runs in that process
    assert trained.returncode == 0, trained.stderr
    reloaded = _script("load", out, tmp_path / "reloaded.npz")  # another process: load_runs only
    assert reloaded.returncode == 0, reloaded.stderr
    first, second = _read(tmp_path / "trained.npz"), _read(tmp_path / "reloaded.npz")
    assert any(k.startswith("fit/") for k in first)  # the ex-post GMM's fields are compared too
    chex.assert_trees_all_equal(first, second)  # same keys, every array bitwise
    # and equal to the Runs that trained, here in this process (one more train of the same runs)
    runs = train(
        TrainConfig(method="rae", steps=20, chunk_size=10, batch_size=16, latent_dim=4), digits, [0, 1], progress=False
    )
    chex.assert_trees_all_equal(_outputs(runs, digits), first)


def test_save_then_load_gives_back_the_runs(tmp_path, digits):
    config = TrainConfig(method="drae", steps=4, chunk_size=2, batch_size=16, latent_dim=4, n_classes=4)
    runs = train(config, digits, [0, 3], progress=False)
    save_runs(runs, tmp_path / "m")
    back = jaxrae.load_runs(tmp_path / "m")
    assert (back.config, back.runs, back.image_shape, back.data_name, back.data_fingerprint) == (
        runs.config,
        runs.runs,
        runs.image_shape,
        runs.data_name,
        digits.fingerprint,
    )
    chex.assert_trees_all_equal(back.variables, runs.variables)
    chex.assert_trees_all_equal(back.metrics, runs.metrics)
    assert back.state.opt_state is None  # the optimizer's moments stay in the resume checkpoint
    chex.assert_trees_all_equal(_outputs(back, digits), _outputs(runs, digits))  # discrete codes, categorical mixture


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, digits):
    runs = train(
        TrainConfig(method="ae", steps=4, chunk_size=2, batch_size=16, latent_dim=4), digits, [0, 1], progress=False
    )
    directory = tmp_path_factory.mktemp("model")
    return save_runs(runs, directory), runs


def _edited(saved_model, tmp_path, edit) -> Path:
    """A copy of the saved model with ``edit(tree, header)`` applied and its digests rewritten (a consistent file)."""
    tree, header = load_checkpoint(saved_model[0])
    edit(tree, header)
    path = tmp_path / "edited" / MODEL_FILE
    save_checkpoint(path, tree, header)
    return path.parent


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda t, h: h.update(model_format="jaxrae-model-v0"),
            "is not a jaxrae-model-v1 model (its format is 'jaxrae-model-v0'",
        ),
        (lambda t, h: h.pop("model_format"), "is not a jaxrae-model-v1 model (its format is None"),
        (
            lambda t, h: h["config"].update(latent_dim=5),
            "does not match this run: params/decoder/Dense_0/kernel has shape (2, 5, 256) in this run but (2, 4, 256)",
        ),
        (
            lambda t, h: h["config"].update(method="rae-gp-typo"),
            "has a header this jaxrae cannot rebuild a model from (ConfigError",
        ),
        (
            lambda t, h: h["config"].update(unknown_field=1),
            "has a header this jaxrae cannot rebuild a model from (ConfigError",
        ),
        (
            lambda t, h: t["state"]["params"]["encoder"].pop("Dense_0"),
            "params/encoder/Dense_0 is missing from the file",
        ),
        (
            lambda t, h: t["state"].update(step=t["state"]["step"].astype(np.int64)),
            "step has dtype int32 in this run but int64",
        ),
        (lambda t, h: h["runs"].append(h["runs"][0]), "step has shape (3,) in this run but (2,) in the file"),
        (
            lambda t, h: t["metrics"].update(loss=t["metrics"]["loss"][:1]),
            "its metrics are not (n_runs=2, steps) arrays",
        ),
    ],
    ids=[
        "other-format",
        "no-format",
        "other-latent-dim",
        "unknown-method",
        "unknown-field",
        "missing-leaf",
        "other-dtype",
        "more-runs",
        "short-metrics",
    ],
)
def test_a_model_that_does_not_fit_its_config_is_one_line(saved_model, tmp_path, edit, message):
    directory = _edited(saved_model, tmp_path, edit)
    with pytest.raises(CheckpointError) as e:
        load_runs(directory)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: raw[: len(raw) // 2], "is corrupt or truncated"),
        (lambda raw: b"", "is corrupt or truncated"),
        (
            lambda raw: raw.replace(b"jaxrae-checkpoint-v2", b"jaxrae-checkpoint-v9"),
            "is not a jaxrae-checkpoint-v2 file",
        ),
    ],
    ids=["truncated", "empty", "foreign"],
)
def test_a_damaged_model_file_is_one_line(saved_model, tmp_path, damage, message):
    path = tmp_path / MODEL_FILE
    path.write_bytes(damage(saved_model[0].read_bytes()))
    with pytest.raises(CheckpointError) as e:
        load_runs(tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_flipped_bit_in_a_weight_is_refused(saved_model, tmp_path):
    kernel = np.asarray(saved_model[1].state.params["decoder"]["Dense_1"]["kernel"])
    raw = bytearray(saved_model[0].read_bytes())
    raw[raw.find(kernel.tobytes()) + 40] ^= 0x01  # the lowest mantissa bit of one weight: still a valid float
    (tmp_path / MODEL_FILE).write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="state/params/decoder/Dense_1/kernel fails its SHA-256 check"):
        load_runs(tmp_path)


def test_where_load_runs_looks(saved_model, tmp_path):
    with pytest.raises(CheckpointError, match="holds no model"):
        load_runs(tmp_path)
    rows = tmp_path / "compare" / "models"
    (rows / "rae").mkdir(parents=True)
    (rows / "rae" / MODEL_FILE).write_bytes(saved_model[0].read_bytes())
    with pytest.raises(CheckpointError, match="is a compare directory; choose a row with row=: rae"):
        load_runs(tmp_path / "compare")
    with pytest.raises(CheckpointError, match="row='vae' has no model in .*: the saved rows are rae"):
        load_runs(tmp_path / "compare", row="vae")
    for where in ({"path": tmp_path / "compare", "row": "rae"}, {"path": rows / "rae"}):
        chex.assert_trees_all_equal(load_runs(**where).variables, saved_model[1].variables)
    (tmp_path / "train" / TRAIN_MODEL_DIR).mkdir(parents=True)
    (tmp_path / "train" / TRAIN_MODEL_DIR / MODEL_FILE).write_bytes(saved_model[0].read_bytes())
    chex.assert_trees_all_equal(load_runs(tmp_path / "train").variables, saved_model[1].variables)


@pytest.mark.slow
def test_a_compare_row_reloads_and_evaluates_to_its_recorded_numbers(tmp_path, digits):
    experiment = Experiment(
        **TINY_COMPARE,
        methods=("ae", "drae"),
        likelihood_k=8,
        config={"steps": 20, "chunk_size": 10, "batch_size": 32, "latent_dim": 4, "n_classes": 4},
    )
    out = tmp_path / "out"
    results = run_compare(experiment, out, progress=False, figures=False, log=lambda *_: None)
    data = jaxrae.load_data("digits", n_train=300, n_test=120)
    fnet = feature_network(data, steps=30)
    for label in ("ae", "drae"):
        runs = jaxrae.load_runs(out, row=label)
        metrics, images, _ = evaluate(
            runs,
            data,
            fnet,
            n_eval=40,
            n_components=3,
            likelihood_k=8,
            n_init=experiment.n_init,
            ex_post_refits=experiment.ex_post_refits,
        )
        assert nonfinite_to_null(metrics) == results["methods"][label]["metrics"]  # every per-seed number, exactly
        with np.load(out / "methods" / f"{label}.npz") as saved:
            chex.assert_trees_all_equal(
                {k: np.asarray(v, np.float32) for k, v in images.items()}, {k: saved[k] for k in saved.files}
            )


# A `jaxrae train` killed (SIGKILL) while it writes its final model: the temporary file is written,
# the rename never happens. The patched os.replace kills the process at exactly that point.
KILL_AT_FINAL_SAVE = r"""
import os, signal, sys
replace = os.replace
def replace_or_die(src, dst):
    if str(dst).endswith("model.msgpack"):
        os.kill(os.getpid(), signal.SIGKILL)
    replace(src, dst)
os.replace = replace_or_die
from jaxrae.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_during_the_final_save_then_resume_gives_the_same_model(tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    done = subprocess.run(
        [sys.executable, "-c", KILL_AT_FINAL_SAVE, *TRAIN_ARGS, "--out", str(killed)],
        check=False,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert done.returncode == -9, done.stderr  # killed, not finished
    with pytest.raises(CheckpointError, match="holds no model"):
        load_runs(killed)  # only the temporary file of the model is there
    resumed = subprocess.run(
        [sys.executable, "-m", "jaxrae.cli", *TRAIN_ARGS, "--out", str(killed), "--resume"],
        check=False,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    done = subprocess.run(
        [sys.executable, "-m", "jaxrae.cli", *TRAIN_ARGS, "--out", str(straight)],
        check=False,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    (tree_a, header_a), (tree_b, header_b) = (
        load_checkpoint(d / TRAIN_MODEL_DIR / MODEL_FILE) for d in (killed, straight)
    )
    chex.assert_trees_all_equal(tree_a, tree_b)  # every parameter, statistic and metric, bitwise
    timings = ("wall_time_s", "compile_time_s")
    assert {k: v for k, v in header_a.items() if k not in timings} == {
        k: v for k, v in header_b.items() if k not in timings
    }
