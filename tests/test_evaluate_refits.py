"""Evaluation noise: R independent ex-post fits and sample draws per trained model.

- refit 0 of an evaluation with R refits draws with the keys of an evaluation without refits, so
  its values are those numbers to float rounding (only batch shapes differ: float32 decodes, EM
  and features, relative error ~1e-7 per value here; a precision or recall may move by one
  sample, 1 / n_eval); the deterministic metrics do not move at all;
- the per-seed value is the mean of the R values, the recorded SD their sample SD (ddof 1), and
  independent draws give different values;
- refits add no Python loop over refits: one density fit, one sample draw and one feature
  network call for the generated images, however many refits;
- report.evaluation_sd pools the SDs over ok seeds and table.md shows it as "eval SD".
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxrae import density, report
from jaxrae import evaluate as E
from jaxrae.config import TrainConfig
from jaxrae.data import load_data
from jaxrae.features import feature_network
from jaxrae.train import train

N_EVAL = 40
SEEDS = (0, 3)
DETERMINISTIC = ("rec_error", "fd_rec", "fd_interp", "perplexity", "distinct_codes")
# float32 pipelines whose batch shapes change with R: a few ulp per value, far below this
RTOL, ATOL = 1e-4, 1e-4


@pytest.fixture(scope="module")
def setting():
    data = load_data("digits", n_train=300, n_test=120)
    fnet = feature_network(data, steps=30)
    rows = {}
    for method in ("ae", "drae"):
        config = TrainConfig.from_dict(
            {"method": method, "steps": 20, "chunk_size": 10, "batch_size": 32, "latent_dim": 4, "n_classes": 4}
        )
        rows[method] = train(config, data, SEEDS, progress=False)
    return data, fnet, rows


def run_eval(setting, method, refits, n_init=1):
    data, fnet, rows = setting
    return E.evaluate(
        rows[method], data, fnet, n_eval=N_EVAL, n_components=3, likelihood_k=4, n_init=n_init, ex_post_refits=refits
    )


@pytest.mark.parametrize("method", ["ae", "drae"])
def test_refit_zero_is_the_evaluation_without_refits(setting, method):
    single, single_images, single_notes = run_eval(setting, method, 1)
    many, many_images, notes = run_eval(setting, method, 3)
    refits = notes["refits"]
    assert refits["n"] == 3 and refits["n_init"] == 1
    assert single_notes["refits"]["n"] == 1 and all(
        math.isnan(v) for sds in single_notes["refits"]["sd"].values() for v in sds
    )
    assert set(refits["values"]) == {k for k in E.REFIT_METRICS if k in many}
    for key in DETERMINISTIC:
        if key in single:
            assert many[key] == single[key], key
    for key, per_seed in refits["values"].items():
        values = np.asarray(per_seed)  # (seeds, refits)
        assert values.shape == (len(SEEDS), 3)
        tol = 1.0 / N_EVAL if key in ("precision", "recall") else None
        if tol is None:
            np.testing.assert_allclose(values[:, 0], single[key], rtol=RTOL, atol=ATOL, err_msg=key)
        else:
            assert np.all(np.abs(values[:, 0] - np.asarray(single[key])) <= tol + 1e-12), key
        np.testing.assert_array_equal(np.asarray(many[key]), values.mean(axis=1))
        np.testing.assert_array_equal(np.asarray(refits["sd"][key]), values.std(axis=1, ddof=1))
    for key in ("fd_prior", "fd_ex_post", "code_loglik", "nll_ex_post"):
        # independent fits and draws differ (a seed whose codes collapsed to one may not)
        assert np.any(np.asarray(refits["sd"][key]) > 0), key
    for name in ("originals", "reconstructions", "prior", "ex_post", "interpolations"):  # figures: refit 0
        np.testing.assert_allclose(many_images[name], single_images[name], rtol=RTOL, atol=ATOL)


def test_refits_are_batched_not_looped(setting, monkeypatch):
    calls = {"fit": 0, "features": 0}
    fit = density.fit_gmm
    features = type(setting[1]).features

    def counting_fit(*args, **kwargs):
        calls["fit"] += 1
        return fit(*args, **kwargs)

    def counting_features(self, images):
        calls["features"] += 1
        return features(self, images)

    monkeypatch.setattr(density, "fit_gmm", counting_fit)
    monkeypatch.setattr(type(setting[1]), "features", counting_features)
    values, _, notes = run_eval(setting, "ae", 3, n_init=2)
    assert calls == {"fit": 1, "features": 2}  # test images, then every generated set at once
    assert notes["refits"]["n_init"] == 2 and len(values["fd_ex_post"]) == len(SEEDS)


def test_bad_refit_settings_are_config_errors(setting):
    from jaxrae.errors import ConfigError

    for kwargs in ({"refits": 0}, {"refits": 1, "n_init": 0}):
        with pytest.raises(ConfigError):
            run_eval(setting, "ae", **kwargs)


def test_report_pools_the_refit_sd_and_shows_it():
    method = {
        "seeds": [0, 1, 2],
        "ok": [True, True, False],
        "discrete": False,
        "metrics": {"fd_ex_post": [10.0, 12.0, 50.0], "rec_error": [1.0, 1.1, 1.2]},
        "notes": {"refits": {"n": 3, "n_init": 4, "sd": {"fd_ex_post": [0.3, 0.4, 9.0]}}},
    }
    assert report.evaluation_sd(method, "fd_ex_post") == pytest.approx(math.sqrt((0.3**2 + 0.4**2) / 2))
    assert report.evaluation_sd(method, "rec_error") is None
    results = {"methods": {"rae": method}, "baseline": None, "experiment": {}}
    rows = report.summary_table(results)
    markdown = report.render_markdown(results, rows)
    assert "eval SD" in markdown and report.EVAL_SD_NOTE in markdown
    assert "eval_sd" in report.render_csv(rows).splitlines()[0]
    older = {"methods": {"rae": {k: v for k, v in method.items() if k != "notes"}}, "baseline": None}
    assert "eval SD" not in report.render_markdown(older) and "eval_sd" not in report.render_csv(
        report.summary_table(older)
    )


def test_library_defaults_are_several_starts_and_refits(monkeypatch):
    # The suite lowers experiment.DEFAULT_* for speed (tests/conftest.py); the library's are these.
    from jaxrae import evaluate as evaluation
    from jaxrae import experiment

    assert evaluation.N_INIT >= 4 and evaluation.EX_POST_REFITS >= 3
    monkeypatch.setattr(experiment, "DEFAULT_N_INIT", evaluation.N_INIT)
    monkeypatch.setattr(experiment, "DEFAULT_EX_POST_REFITS", evaluation.EX_POST_REFITS)
    built = experiment.Experiment(methods=["ae"])
    assert (built.n_init, built.ex_post_refits) == (evaluation.N_INIT, evaluation.EX_POST_REFITS)
    assert experiment.Experiment(methods=["ae"], n_init=2).n_init == 2
