"""Resuming a comparison whose evaluation settings alone changed re-evaluates the saved models
instead of retraining them; a change to anything the training depends on is still refused."""

from __future__ import annotations

import json
import shutil

import pytest
from _tiny_compare import TINY_COMPARE

from jaxrae import compare
from jaxrae.compare import run_compare
from jaxrae.errors import CheckpointError
from jaxrae.experiment import Experiment

TINY = dict(
    methods=("ae", "drae"),
    **TINY_COMPARE,
    likelihood_k=None,
    config={"steps": 10, "chunk_size": 10, "batch_size": 32, "latent_dim": 4, "n_classes": 4},
)
ROWS = ("ae", "drae")


def tiny(**changes) -> Experiment:
    config = {**TINY["config"], **changes.pop("config", {})}
    return Experiment(**{**TINY, **changes, "config": config})


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def quiet(cache_dir, messages=None):
    log = (lambda *_: None) if messages is None else messages.append
    return dict(progress=False, feature_cache_dir=cache_dir, log=log, figures=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir):
    """A finished comparison with n_components=3."""
    out = tmp_path_factory.mktemp("first") / "out"
    run_compare(tiny(), out, **quiet(cache_dir))
    return out


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, cache_dir):
    """The same comparison run from scratch with n_components=2: the numbers a re-evaluation must give."""
    out = tmp_path_factory.mktemp("fresh") / "out"
    return run_compare(tiny(n_components=2), out, **quiet(cache_dir))


@pytest.fixture
def copy(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


@pytest.fixture
def no_training(monkeypatch):
    def train(*args, **kwargs):
        raise AssertionError("a row was retrained")

    monkeypatch.setattr(compare, "train", train)


def record(out, label):
    return json.loads((out / "methods" / f"{label}.json").read_text())


def test_new_evaluation_settings_reevaluate_the_saved_models_without_training(copy, fresh, cache_dir, no_training):
    before = {label: record(copy, label) for label in ROWS}
    messages = []
    results = run_compare(tiny(n_components=2), copy, resume=True, **quiet(cache_dir, messages))
    for label in ROWS:
        assert f"{label}: evaluation settings changed (n_components); re-evaluating the saved model" in messages
        after = record(copy, label)
        # the numbers of a fresh run evaluated with n_components=2, on the same (bitwise) models
        assert after["metrics"] == fresh["methods"][label]["metrics"]
        assert after["metrics"] != before[label]["metrics"]
        assert results["methods"][label]["metrics"] == after["metrics"]
        assert after["header"]["eval"]["n_components"] == 2
        # the training's part of the record is the original's: loss curve, times, per-seed status
        assert after["loss_curve"] == before[label]["loss_curve"]
        for key in ("ok", "diverged_at", "final_loss", "runs", "config"):
            assert after[key] == before[label][key], key
        assert {k: after["times"][k] for k in ("train_s", "compile_s")} == {
            k: before[label]["times"][k] for k in ("train_s", "compile_s")
        }
        assert after["times"]["eval_s"] > 0
    assert results["eval"]["n_components"] == 2
    # resumed again with the same settings: loaded as they are, nothing evaluated again
    saved = {label: (copy / "methods" / f"{label}.json").read_bytes() for label in ROWS}
    messages.clear()
    run_compare(tiny(n_components=2), copy, resume=True, **quiet(cache_dir, messages))
    assert all("finished earlier" in m for m in messages if m.startswith(ROWS)), messages
    assert {label: (copy / "methods" / f"{label}.json").read_bytes() for label in ROWS} == saved


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(config={"lr": 1e-3}), "config.lr"),  # training alone
        (dict(n_components=2, config={"lr": 1e-3}), "config.lr"),  # training and evaluation
        (dict(seeds=(0, 2)), "seeds"),
    ],
)
def test_a_change_the_training_depends_on_is_still_refused(copy, cache_dir, no_training, changes, field):
    saved = {label: record(copy, label) for label in ROWS}
    with pytest.raises(CheckpointError, match=f"other settings \\(differs in: .*{field}"):
        run_compare(tiny(**changes), copy, resume=True, **quiet(cache_dir))
    assert {label: record(copy, label) for label in ROWS} == saved


def test_a_missing_damaged_or_foreign_model_is_refused_before_anything_runs(copy, cache_dir, no_training):
    model = copy / "models" / "ae" / "model.msgpack"
    other = copy / "models" / "drae" / "model.msgpack"
    saved = record(copy, "drae")
    good = model.read_bytes()
    model.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="ae/model.msgpack is corrupt or truncated"):
        run_compare(tiny(n_components=2), copy, resume=True, **quiet(cache_dir))
    model.unlink()
    with pytest.raises(CheckpointError, match="model.msgpack is missing"):
        run_compare(tiny(n_components=2), copy, resume=True, **quiet(cache_dir))
    model.write_bytes(other.read_bytes())  # drae's model in ae's place: trained with another config
    with pytest.raises(CheckpointError, match="was not trained with the settings of"):
        run_compare(tiny(n_components=2), copy, resume=True, **quiet(cache_dir))
    assert record(copy, "drae") == saved  # refused before the other row was re-evaluated
