"""The tuned mode of compare ([tune]): each row's weights chosen on the validation split, never on test.

Kept small: digits, 300 training images (60 of them validation), 5 tuning steps, two candidates and
two tuning seeds, one reported seed. One comparison (module fixture) is checked from several sides;
the tests that retrain reuse its configs, so the compiled programs are shared.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from jaxrae import cli, compare, report
from jaxrae import metrics as M
from jaxrae.compare import choose_candidate, run_compare, tune_row
from jaxrae.data import load_data
from jaxrae.errors import CheckpointError, ConfigError
from jaxrae.experiment import TUNE_SEED_BASE, Experiment, load_experiment
from jaxrae.features import feature_network
from jaxrae.train import train

TUNE = {"validation": 0.2, "beta": [0.1, 10.0], "steps": 5, "seeds": 2, "criterion": "rec_error"}
TINY = dict(
    data="digits",
    methods=("ae", "rae"),
    seeds=(0,),
    n_train=300,
    n_test=60,
    n_eval=20,
    feature_steps=20,
    n_components=3,
    likelihood_k=None,
    config={"steps": 10, "chunk_size": 10, "batch_size": 32, "latent_dim": 4},
    tune=TUNE,
)


def tiny(**changes) -> Experiment:
    return Experiment(**{**TINY, **changes})


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("tuned") / "out"
    results = run_compare(tiny(), out, progress=False, figures=False, feature_cache_dir=cache_dir, log=lambda m: None)
    return out, results


@pytest.fixture(scope="module")
def data():
    return load_data("digits", n_train=300, n_test=60, validation=0.2)


def test_tuned_results_record_candidates_scores_and_choice(tuned, data):
    out, results = tuned
    assert results["tuning"]["criterion"] == "rec_error" and results["tuning"]["n_val"] == data.n_val == 60
    assert results["n_train"] == 240 and results["experiment"]["tune"]["beta"] == [0.1, 10.0]
    rae = results["methods"]["rae"]
    record = rae["tuning"]
    assert record["weights"] == ["beta"] and record["seeds"] == [TUNE_SEED_BASE, TUNE_SEED_BASE + 1]
    own = record["own"]["beta"]
    assert [c["multipliers"]["beta"] for c in record["candidates"]] == [0.1, 10.0]
    assert [c["beta"] for c in record["candidates"]] == [own * 0.1, own * 10.0]
    scores = [c["score"] for c in record["candidates"]]
    assert all(len(c["per_seed"]) == 2 and c["score"] == np.mean(c["per_seed"]) for c in record["candidates"])
    best = int(np.argmin(scores))
    assert record["chosen_index"] == best and record["chosen"] == {"beta": record["candidates"][best]["beta"]}
    assert rae["config"]["beta"] == record["chosen"]["beta"]  # the reported row trained at the choice
    assert results["experiment"]["overrides"] == {}  # the experiment as written, rows at their own weights
    # ae reads no beta: nothing tuned, its own weights kept
    assert results["methods"]["ae"]["tuning"]["weights"] == [] and results["methods"]["ae"]["config"]["beta"] == 0.0
    saved = json.loads((out / "tuning" / "rae.json").read_text())
    assert saved["chosen"] == record["chosen"] and saved["candidates"] == record["candidates"]
    assert "mode: tuned on validation (criterion rec_error, lower better" in (out / "table.md").read_text()


def test_validation_scores_equal_an_independent_computation(tuned, data):
    """Each candidate trained on its own (seeds alone), its reconstruction error on the validation images."""
    record = tuned[1]["methods"]["rae"]["tuning"]
    config = tiny().method_config("rae").replace(steps=5)
    val = data.validation_images
    for candidate in record["candidates"]:
        runs = train(config.replace(beta=candidate["beta"]), data, record["seeds"], progress=False)
        recon = runs.reconstruct(val)
        expected = [M.reconstruction_error(val, recon[r]) for r in range(runs.n_runs)]
        np.testing.assert_allclose(candidate["per_seed"], expected, rtol=1e-4)


def test_tuning_never_reads_the_test_images(tuned, data, tmp_path, cache_dir, monkeypatch):
    """Garbage test images give the very same scores, and the evaluation is handed the validation split."""
    fnet = feature_network(data, cache_dir=cache_dir, steps=20)
    seen = []
    real_evaluate = compare.evaluate

    def spy(runs, view, *args, **kwargs):
        seen.append(view)
        assert view.test_images_u8 is garbage.validation_images_u8 and view.n_test == data.n_val
        return real_evaluate(runs, view, *args, **kwargs)

    garbage = dataclasses.replace(data, test_images_u8=np.full_like(data.test_images_u8, 255))
    monkeypatch.setattr(compare, "evaluate", spy)
    record = tune_row("rae", tiny(), garbage, fnet, tmp_path, progress=False)
    assert len(seen) == 1
    reference = tuned[1]["methods"]["rae"]["tuning"]
    assert record["candidates"] == reference["candidates"] and record["chosen"] == reference["chosen"]


def test_resume_reuses_the_tuning_records(tuned, tmp_path, cache_dir, monkeypatch):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(tuned[0], out)
    (out / "methods" / "rae.json").unlink()  # the row retrains (from its checkpoint), its tuning must not

    def no_sweep(*args, sweep=None, **kwargs):
        assert sweep is None, "the tuning sweep ran again"
        return real_train(*args, **kwargs)

    real_train = compare.train
    monkeypatch.setattr(compare, "train", no_sweep)
    results = run_compare(
        tiny(), out, resume=True, progress=False, figures=False, feature_cache_dir=cache_dir, log=lambda m: None
    )
    assert results["methods"]["rae"]["tuning"] == tuned[1]["methods"]["rae"]["tuning"]
    # other tuning settings on resume: a one-line CheckpointError naming the tuning record
    with pytest.raises(CheckpointError, match="tuning/rae.json was computed with other settings"):
        run_compare(
            tiny(tune={**TUNE, "beta": [0.5, 2.0]}),
            out,
            resume=True,
            progress=False,
            figures=False,
            feature_cache_dir=cache_dir,
        )


@pytest.mark.parametrize(
    ("scores", "distances", "better", "expected"),
    [
        ([3.0, 1.0, 2.0], [1, 1, 0], "lower", 1),
        ([3.0, 1.0, 2.0], [1, 1, 0], "higher", 0),
        ([1.0, 1.0, 1.0], [2.3, 0.0, 2.3], "lower", 1),  # tie: nearest the row's own weights
        ([1.0, 1.0], [2.3, 2.3], "lower", 0),  # full tie: the first in grid order
        ([None, 5.0, math.nan], [0, 1, 2], "lower", 1),  # no score (diverged) ranks last
        ([None, None], [2.3, 0.0], "lower", 1),  # none scored: the row's own weights
    ],
)
def test_choose_candidate(scores, distances, better, expected):
    assert choose_candidate(scores, distances, better) == expected


def test_fixed_mode_says_so():
    assert report.mode_line({"methods": {}}).startswith("mode: fixed weights")


def test_too_small_a_validation_split_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="tune.validation"):
        run_compare(tiny(tune={**TUNE, "validation": 0.01}), out, progress=False)
    assert not out.exists()


def _write(tmp_path, body: str):
    path = tmp_path / "exp.toml"
    path.write_text('data = "digits"\nmethods = ["ae", "rae-l2"]\n' + body)
    return path


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("[tune]\nbeta = []\n", "tune.beta"),
        ("[tune]\nbeta = [0.0, 1.0]\n", "tune.beta"),
        ('[tune]\nbeta = "1,2"\n', "tune.beta"),
        ("[tune]\nbeta = [1.0, 1.0]\n", "tune.beta"),
        ("[tune]\nvalidation = 0.1\n", "at least one grid"),
        ("[tune]\nbeta = [1.0]\nvalidation = 1.5\n", "tune.validation"),
        ('[tune]\nbeta = [1.0]\ncriterion = "nll_iwae"\n', "tune.criterion"),
        ("[tune]\nbeta = [1.0]\nsteps = 0\n", "tune.steps"),
        ("[tune]\nbeta = [1.0]\nseeds = [1, 1]\n", "tune.seeds"),
        ("[tune]\nbeta = [1.0]\ngrid = 3\n", "unknown keys"),
        ("tune = 3\n", "tune"),
    ],
)
def test_bad_tune_blocks_are_config_errors(tmp_path, body, needle):
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as error:
        load_experiment(path)
    assert str(path) in str(error.value) and needle in str(error.value), str(error.value)


def test_a_grid_no_row_reads_is_refused(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('data = "digits"\nmethods = ["ae", "rae"]\n[tune]\nlam = [0.1, 10.0]\n')
    with pytest.raises(ConfigError, match="tune.lam.*no row's method reads lam"):
        load_experiment(path)


def test_cli_prints_a_bad_tune_block_as_one_line(tmp_path, capsys):
    path = _write(tmp_path, '[tune]\nbeta = [1.0]\ncriterion = "nope"\n')
    assert cli.main(["compare", "--config", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tune.criterion" in err and not (tmp_path / "out").exists()


def test_the_example_tuned_experiment_loads():
    from pathlib import Path

    experiment = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "table1_digits_tuned.toml")
    assert experiment.tune is not None and experiment.validation_fraction == 0.1
