"""The convergence criterion (jaxrae.evaluate.loss_convergence) on synthetic loss curves, its
experiment setting, and a comparison that records and shows it per row and seed."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from _tiny_compare import TINY_COMPARE

from jaxrae import report
from jaxrae.compare import run_compare
from jaxrae.errors import ConfigError
from jaxrae.evaluate import CONVERGENCE, MIN_HALF_WINDOW, loss_convergence
from jaxrae.experiment import Experiment

STEPS = 2000
T = np.arange(STEPS)


def _verdict(losses, **settings):
    out = loss_convergence(losses, **settings)
    return out["converged"][0], out["status"][0], out["change"][0], out["noise"][0]


def test_flat_loss_has_converged():
    converged, status, change, noise = _verdict(np.full(STEPS, 3.0))
    assert converged and status == "converged" and change == 0.0 and noise == 0.0


def test_still_falling_loss_has_not():
    # exp decay with a time constant of the run's length: the last 5% is ~5% below the 5% before
    loss = 1.0 + 10.0 * np.exp(-T / STEPS)
    converged, status, change, _ = _verdict(loss)
    assert not converged and status == "falling" and 0.03 < change < 0.06


def test_change_is_the_relative_difference_of_the_two_half_windows():
    rng = np.random.default_rng(0)
    loss = 5.0 - 1e-3 * T + rng.normal(0, 0.1, STEPS)
    h = int(0.1 * STEPS / 2)
    a, b = loss[-2 * h : -h].mean(), loss[-h:].mean()
    out = loss_convergence(loss[None])
    assert out["change"][0] == pytest.approx((a - b) / max(abs(a), abs(b)), rel=1e-12)
    se = math.sqrt(loss[-2 * h : -h].var(ddof=1) / h + loss[-h:].var(ddof=1) / h) / max(abs(a), abs(b))
    assert out["noise"][0] == pytest.approx(se, rel=1e-12)
    # the same change, judged with and without the allowance for noise
    assert abs(out["change"][0]) > 0.01 + CONVERGENCE["z"] * se
    wide = loss_convergence(loss, tol=abs(out["change"][0]) - CONVERGENCE["z"] * se + 1e-9)
    assert wide["converged"] == [True]


def test_noisy_flat_loss_has_converged_for_every_seed():
    """Minibatch noise of 30% per step (WAE-like) on a flat loss: no seed is called unconverged by chance,
    while a plain 1% rule without the noise allowance would flag some."""
    rng = np.random.default_rng(1)
    losses = 2.0 + rng.normal(0, 0.6, (20, STEPS))
    out = loss_convergence(losses)
    assert all(out["converged"])
    assert not all(loss_convergence(losses, z=0.0)["converged"])  # the allowance is what saves them


def test_noisy_but_falling_loss_is_caught():
    rng = np.random.default_rng(2)
    losses = 1.0 + 10.0 * np.exp(-T / STEPS) + rng.normal(0, 0.05, (5, STEPS))
    assert loss_convergence(losses)["status"] == ["falling"] * 5


def test_rising_loss_has_not_converged():
    converged, status, change, _ = _verdict(1.0 + 1e-3 * T)
    assert not converged and status == "rising" and change < -0.01


def test_negative_losses():
    # a loss falling towards -1 from below zero (e.g. an objective with a negative log term)
    falling = -1.0 - 10.0 * (1 - np.exp(-T / STEPS))
    converged, status, change, _ = _verdict(falling)
    assert not converged and status == "falling" and change > 0.01
    flat = np.full(STEPS, -4.0)
    assert _verdict(flat)[:2] == (True, "converged")


def test_diverged_runs_never_converge():
    loss = np.full(STEPS, 1.0)
    loss[100] = np.nan  # the step that diverged; the frozen run's later losses are flat
    assert _verdict(loss)[:2] == (False, "diverged")
    inf = np.full(STEPS, 1.0)
    inf[-1] = np.inf
    assert _verdict(inf)[:2] == (False, "diverged")
    # a run frozen for a non-finite gradient has finite losses only; ok=False says it diverged
    out = loss_convergence(np.ones((2, STEPS)), ok=[True, False])
    assert out["status"] == ["converged", "diverged"] and out["change"] == [0.0, None]


def test_too_short_runs_are_not_judged_converged():
    n = 2 * MIN_HALF_WINDOW / 0.1  # the fewest steps the default window can judge
    assert _verdict(np.ones(int(n) - 1))[:2] == (False, "too short")
    assert _verdict(np.ones(int(n)))[:2] == (True, "converged")
    assert _verdict(np.ones(3), window=1.0)[:2] == (False, "too short")


def test_bad_settings_are_config_errors():
    for settings in ({"window": 0.0}, {"window": 1.5}, {"tol": -0.1}, {"z": float("nan")}):
        with pytest.raises(ConfigError):
            loss_convergence(np.ones(STEPS), **settings)


def test_experiment_setting_defaults_validation_and_record():
    assert Experiment(methods=("ae",)).convergence == CONVERGENCE
    exp = Experiment.from_dict({"methods": "ae", "convergence": {"window": 0.2}})
    assert exp.convergence == {**CONVERGENCE, "window": 0.2}
    assert exp.to_dict()["convergence"] == exp.convergence
    assert Experiment.from_dict(json.loads(json.dumps(exp.to_dict()))) == exp
    for bad in ({"windw": 0.1}, {"window": 0}, {"tol": -1}, {"z": True}, {"tol": "1%"}, 0.1):
        with pytest.raises(ConfigError, match="convergence"):
            Experiment(methods=("ae",), convergence=bad)


def test_convergence_text():
    settings = {"window": 0.1, "tol": 0.01, "z": 1.645}
    good = {"converged": [True] * 5, "status": ["converged"] * 5, "change": [0.0] * 5, "settings": settings}
    assert report.convergence_text(good) == "converged 5/5"
    assert report.convergence_cell(good) == "5/5"
    mixed = {
        "converged": [True, True, False, False, False],
        "status": ["converged", "converged", "falling", "falling", "diverged"],
        "change": [0.001, 0.0, 0.031, 0.025, None],
        "settings": settings,
    }
    assert report.convergence_text(mixed) == (
        "NOT converged 2/5 (2 seeds: loss still falling 2.5%-3.1% over the last 10% of steps; 1 seed: diverged)"
    )
    assert report.convergence_cell(mixed) == "2/5 !"
    assert report.convergence_cell(None) == "-" and report.convergence_text(None) == "convergence not recorded"


# ------------------------------------------------------------------------------ in a comparison

TINY = dict(
    **TINY_COMPARE,
    likelihood_k=None,
    config={"steps": 20, "chunk_size": 10, "batch_size": 32, "latent_dim": 4, "n_classes": 4},
)
#: 20 steps judged whole: two halves of 10 steps (the fewest the criterion reads)
WHOLE_RUN = {"window": 1.0, "tol": 0.01, "z": 1.645}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("converge") / "out"
    lines = []
    experiment = Experiment(**TINY, methods=("ae", "drae"), convergence=WHOLE_RUN)
    results = run_compare(experiment, out, progress=False, log=lines.append, figures=False)
    return out, results, lines


def test_compare_records_prints_and_tabulates_convergence(compared):
    out, results, lines = compared
    assert results["experiment"]["convergence"] == WHOLE_RUN
    table = (out / "table.md").read_text()
    assert "converged = seeds whose training loss had settled: the mean loss of the last 50% of the steps" in table
    assert "| method | ok | converged |" in table
    for label in ("ae", "drae"):
        record = json.loads((out / "methods" / f"{label}.json").read_text())
        conv = record["convergence"]
        assert conv["settings"] == WHOLE_RUN and conv["source"] == "per-step losses"
        # 20 steps <= MAX_LOSS_POINTS: the recorded curve is the per-step losses the verdict read
        assert len(conv["converged"]) == 2 and len(record["loss_curve"]["loss"][0]) == 20
        expected = loss_convergence(np.array(record["loss_curve"]["loss"], np.float64), record["ok"], **WHOLE_RUN)
        assert {k: conv[k] for k in expected} == expected
        assert results["methods"][label]["convergence"] == conv
        text = report.convergence_text(conv)
        assert any(line.startswith(f"{label}: ") and text in line for line in lines)
        assert f"| {label} | 2/2 | {report.convergence_cell(conv)} |" in table
        if not all(conv["converged"]):
            assert f"- {label}: {text}" in table  # under Warnings
    # 20 steps of a fresh autoencoder: the loss is still falling fast
    assert results["methods"]["ae"]["convergence"]["status"] == ["falling", "falling"]
    assert "NOT converged 0/2 (2 seeds: loss still falling" in table


def test_resume_judges_an_older_record_from_its_loss_curve(compared, tmp_path):
    out, results, _ = compared
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    path = copy / "methods" / "ae.json"
    record = json.loads(path.read_text())
    del record["convergence"]  # as written by a jaxrae before the criterion
    path.write_text(json.dumps(record))
    # another criterion does not retrain: finished rows are judged again from their loss curves
    experiment = Experiment(**TINY, methods=("ae", "drae"), convergence={**WHOLE_RUN, "tol": 0.5})
    again = run_compare(experiment, copy, resume=True, progress=False, log=lambda *_: None, figures=False)
    for label in ("ae", "drae"):
        conv = again["methods"][label]["convergence"]
        assert conv["settings"]["tol"] == 0.5 and conv["source"] == "loss curve of 20 block means"
        assert conv["change"] == pytest.approx(results["methods"][label]["convergence"]["change"])


def test_compare_records_and_states_the_resolved_weights(compared):
    """The weights each row trained with on 8x8 digits (64 pixels): drae's 0.01, stated for 784-pixel
    images, is scaled by 64/784; results.json and the table's header say so per row."""
    out, results, _ = compared
    assert results["image_shape"] == [8, 8, 1]
    drae = results["methods"]["drae"]
    assert drae["config"]["beta"] == 0.01 * (64 / 784) and drae["weights"]["beta"] == drae["config"]["beta"]
    assert drae["weights"]["stated_pixels"] == {"beta": 784, "lam": 784} and drae["weights"]["pixels"] == 64
    assert results["methods"]["ae"]["weights"]["stated_pixels"] == {"beta": None, "lam": None}
    record = json.loads((out / "methods" / "drae.json").read_text())
    assert record["header"]["config"]["beta"] == drae["config"]["beta"]  # resume compares resolved weights
    table = (out / "table.md").read_text()
    assert (
        "weights beta/lambda as trained, on 64 values per image (8x8x1); ^ = a weight stated for images of 784 pixels, scaled by 64/784"
        in table
    )
    assert f"ae 0/0, drae {report.fmt(drae['config']['beta'])}^/0." in table
