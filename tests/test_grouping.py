"""Rows that differ only in swept hyperparameters train as one program (jaxrae.compare.training_groups).

Three variants of rae on a tiny slice of digits differ only in beta: one at rae's weight, one at
twice it, one at a weight so large that its first gradient overflows (every seed diverges at
step 0 and stays frozen while its neighbours in the program go on). The comparison runs once
with the rows grouped and once with ``group_sweepable = false``; each row must get the same
numbers either way (to float rounding: the grouped program has 6 runs, each row alone 2), and
the grouped run must resume after an interruption inside its training and between its rows'
evaluations to bitwise the uninterrupted grouped results.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from _tiny_compare import TINY_COMPARE

from jaxrae import cli
from jaxrae.compare import (
    CompareInterrupted,
    group_checkpoint,
    group_sweep,
    row_config,
    run_compare,
    training_groups,
)
from jaxrae.experiment import Experiment, load_experiment
from jaxrae.train import load_runs

STEPS = 20
BASE = dict(
    **TINY_COMPARE,
    likelihood_k=None,
    config={"steps": STEPS, "chunk_size": 10, "batch_size": 32, "latent_dim": 4},
)
#: rae's beta on 8x8 digits is 0.0098 * 64 / 784 = 8e-4 (100 times that: a visibly different row); 1e30 * 0.5||z||^2 gives gradients whose
#: squared norm overflows float32 at step 0 (a non-finite step: the run freezes, diverged_at = 0).
ROWS = {
    "rae-b1": {"method": "rae", "beta": 8e-4},
    "rae-b2": {"method": "rae", "beta": 0.08},
    "rae-huge": {"method": "rae", "beta": 1e30},
}
LABELS = list(ROWS)


def experiment(**changes) -> Experiment:
    return Experiment(**{**BASE, "methods": (), "variants": ROWS, **changes})


QUIET = dict(progress=False, log=lambda *_: None, figures=False)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def grouped(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("grouped") / "out"
    return out, run_compare(experiment(), out, feature_cache_dir=cache_dir, **QUIET)


@pytest.fixture(scope="module")
def separate(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("separate") / "out"
    return out, run_compare(experiment(group_sweepable=False), out, feature_cache_dir=cache_dir, **QUIET)


# --------------------------------------------------------------------------------------------
# Which rows go together (no training)


def test_estimator_grid_becomes_four_programs(digits):
    grid = load_experiment("experiments/estimators.toml")
    groups = training_groups(grid, list(grid.rows), digits)
    assert groups == [
        ["st"],
        ["st-gumbel-tau0.5", "st-gumbel-tau1", "st-gumbel-tau2"],
        ["gumbel-rao-tau0.5", "gumbel-rao-tau1", "gumbel-rao-tau2"],
        ["reinmax-tau0.5", "reinmax-tau1", "reinmax-tau2"],
    ]
    configs = [row_config(grid, label, digits) for label in groups[1]]
    assert group_sweep(configs) == {"tau": [0.5, 1.0, 2.0]}
    off = dataclasses.replace(grid, group_sweepable=False)
    assert training_groups(off, list(grid.rows), digits) == [[label] for label in grid.rows]


def test_only_products_of_swept_values_go_together(digits):
    rows = {
        "a": {"method": "rae-l2", "beta": 1.0, "lam": 1.0},
        "b": {"method": "rae-l2", "beta": 2.0, "lam": 1.0},
        "f": {"method": "rae-l2", "beta": 2.0, "lam": 2.0},  # with a and b: 3 of the 4 points of {1,2} x {1,2}
        "c": {"method": "rae-l2", "beta": 1.0, "lam": 1.0},  # a's point again: never in a's program
        "d": {"method": "rae-l2", "beta": 1.0, "lam": 1.0, "latent_dim": 3},  # another network
        "e": {"method": "rae-gp", "beta": 2.0, "lam": 2.0},  # another decoder regularizer
    }
    exp = experiment(variants=rows)
    # not a product: split along beta, so a and b (lam 1) share a sweep over beta, f is alone
    assert training_groups(exp, list(rows), digits) == [["a", "b"], ["f"], ["c"], ["d"], ["e"]]
    # a full 2 x 2 grid of (beta, lam) is one sweep
    points = [(1.0, 1.0), (1.0, 2.0), (2.0, 1.0), (2.0, 2.0)]
    square = {f"r{i}": {"method": "rae-l2", "beta": b, "lam": lam} for i, (b, lam) in enumerate(points)}
    exp = experiment(variants=square)
    assert training_groups(exp, list(square), digits) == [list(square)]
    configs = [row_config(exp, label, digits) for label in square]
    assert group_sweep(configs) == {"beta": [1.0, 2.0], "lam": [1.0, 2.0]}


def test_no_group_flag_and_toml_field(tmp_path):
    args = cli.build_parser().parse_args(["compare", "--methods", "ae", "--no-group"])
    assert cli.experiment_from_args(args).group_sweepable is False
    args = cli.build_parser().parse_args(["compare", "--methods", "ae"])
    assert cli.experiment_from_args(args).group_sweepable is True
    path = tmp_path / "e.toml"
    path.write_text('methods = ["ae"]\ngroup_sweepable = false\n')
    exp = load_experiment(path)
    assert exp.group_sweepable is False and Experiment.from_dict(exp.to_dict()) == exp
    path.write_text('methods = ["ae"]\ngroup_sweepable = "no"\n')
    with pytest.raises(Exception, match="group_sweepable"):
        load_experiment(path)


# --------------------------------------------------------------------------------------------
# Grouped and separate training give each row the same numbers


def _rounding_rtol(step_count: int) -> np.ndarray:
    """Relative tolerance per step between a run trained in a 6-run program and in a 2-run one.

    The two programs compute every run with the same operations on a run axis of another length,
    and XLA may then sum a matmul's products in another order. Summing n float32 products in any
    order errs by at most gamma_n ~ n u of sum |a_i b_i| (Higham 2002, Sec. 3.1; u = 2^-24), so
    the loss of one step differs by at most about u * (sum of the reductions' lengths: each MLP
    layer's fan-in, the pixels, the batch) relative, with condition numbers near 1 (squares and
    sums of one sign). Each step adds a difference of that size to the parameters and, while
    lr * t << 1, the differences add up: (t + 1) times the step-0 bound at step t (the argument
    and the bound of tests/test_train.py::_rounding_tolerance, for this config).
    """
    pixels = 64
    fan_ins = [pixels, 512, 256, BASE["config"]["latent_dim"], 256, 512]  # the MLP's reductions
    step0 = np.finfo(np.float32).eps / 2 * (sum(fan_ins) + pixels + BASE["config"]["batch_size"])
    return step0 * (1 + np.arange(step_count))


@pytest.mark.slow  # two comparisons of three rows (about a minute on a loaded 2-core CPU)
def test_each_row_equals_training_it_alone(grouped, separate):
    (g_out, g), (s_out, s) = grouped, separate
    rtol = _rounding_rtol(STEPS)
    for label in LABELS:
        together, alone = load_runs(g_out, row=label), load_runs(s_out, row=label)
        assert together.runs == alone.runs and together.config == alone.config
        assert together.diverged_at.tolist() == alone.diverged_at.tolist()
        if label == "rae-huge":
            continue  # frozen at its initialization; its losses are not finite
        relative = np.abs(together.losses - alone.losses) / np.abs(alone.losses)
        print(label, "grouped vs alone, max relative difference / bound:", (relative / rtol).max())
        assert np.all(relative <= rtol), (label, (relative / rtol).max())
        # the evaluation of those models: the same to the rounding the parameters carry into it
        for name, values in s["methods"][label]["metrics"].items():
            np.testing.assert_allclose(g["methods"][label]["metrics"][name], values, rtol=1e-3, atol=1e-6, err_msg=name)
        assert g["methods"][label]["convergence"]["converged"] == s["methods"][label]["convergence"]["converged"]
    # the diverged row froze at step 0 in both, its neighbours in the program went on
    assert g["methods"]["rae-huge"]["diverged_at"] == [0, 0] and g["methods"]["rae-b1"]["diverged_at"] == [-1, -1]
    assert g["methods"]["rae-huge"]["metrics"] == s["methods"]["rae-huge"]["metrics"]
    # the rows differ from each other by far more than the rounding
    b1, b2 = load_runs(g_out, row="rae-b1").losses, load_runs(g_out, row="rae-b2").losses
    assert np.mean(np.abs(b1 - b2) / np.abs(b1) > rtol) > 0.5


@pytest.mark.slow
def test_results_say_which_rows_trained_together(grouped, separate):
    (g_out, g), (s_out, s) = grouped, separate
    assert g["training_groups"] == [LABELS] and s["training_groups"] == [[label] for label in LABELS]
    assert (g_out / "checkpoints" / "rae-b1,rae-b2,rae-huge.msgpack").is_file()
    assert group_checkpoint(g_out, LABELS).name == "rae-b1,rae-b2,rae-huge.msgpack"
    assert not any((g_out / "checkpoints" / f"{label}.msgpack").exists() for label in LABELS)
    assert all((s_out / "checkpoints" / f"{label}.msgpack").is_file() for label in LABELS)
    for label in LABELS:
        record = json.loads((g_out / "methods" / f"{label}.json").read_text())
        group = record["group"]
        assert group["rows"] == LABELS and "1/3" in group["times"]
        assert record["times"]["train_s"] == pytest.approx(group["train_s"] / 3)
        assert record["times"]["compile_s"] == pytest.approx(group["compile_s"] / 3)
        assert "group" not in json.loads((s_out / "methods" / f"{label}.json").read_text())  # alone: as before
        # each row logs its own seeds, named as when it trains alone
        assert sorted(p.name for p in (g_out / "tensorboard" / label).iterdir()) == ["seed0", "seed1"]
        assert g["methods"][label]["group"]["rows"] == LABELS
        assert g["methods"][label]["runs"] == s["methods"][label]["runs"]


# --------------------------------------------------------------------------------------------
# Resume: inside the group's training, and between its rows' evaluations


@pytest.mark.slow
def test_group_resumes_inside_training_and_between_rows(tmp_path, grouped, cache_dir):
    _, full = grouped
    out = tmp_path / "out"
    # 1. interrupted after the first of two chunks: the group's checkpoint, nothing finished
    with pytest.raises(CompareInterrupted, match="rae-b1, rae-b2, rae-huge"):
        run_compare(experiment(), out, stop_after_chunks=1, feature_cache_dir=cache_dir, **QUIET)
    assert (out / "checkpoints" / "rae-b1,rae-b2,rae-huge.msgpack").is_file() and not (out / "methods").exists()
    # 2. resumed; stopped (as by Ctrl-C) once the first row's record is written
    first_done = lambda: (out / "methods" / "rae-b1.json").exists()
    with pytest.raises(KeyboardInterrupt):
        run_compare(experiment(), out, resume=True, should_stop=first_done, feature_cache_dir=cache_dir, **QUIET)
    assert sorted(p.name for p in (out / "methods").glob("*.json")) == ["rae-b1.json"]
    assert all((out / "models" / label / "model.msgpack").is_file() for label in LABELS)
    # 3. resumed: the rows left are evaluated from their saved models, nothing trains again
    mtime = (out / "checkpoints" / "rae-b1,rae-b2,rae-huge.msgpack").stat().st_mtime_ns
    resumed = run_compare(experiment(), out, resume=True, feature_cache_dir=cache_dir, **QUIET)
    assert (out / "checkpoints" / "rae-b1,rae-b2,rae-huge.msgpack").stat().st_mtime_ns == mtime
    assert not any((out / "checkpoints" / f"{label}.msgpack").exists() for label in LABELS)
    assert resumed["training_groups"] == [LABELS]
    for label in LABELS:  # bitwise the uninterrupted grouped run (the same program, resumed)
        assert resumed["methods"][label]["metrics"] == full["methods"][label]["metrics"]
        assert resumed["methods"][label]["final_loss"] == full["methods"][label]["final_loss"]
        assert resumed["methods"][label]["group"]["rows"] == LABELS


@pytest.mark.slow
def test_tuned_rows_train_together_at_their_chosen_weights(tmp_path, cache_dir):
    # [tune] chooses each row's beta on validation first; the rows then differ only in beta (rae's
    # 8e-4 x {0.1, 10} against 0.8 x {0.1, 10}: never the same point), so they train as one program
    rows = {"rae-a": {"method": "rae"}, "rae-b": {"method": "rae", "beta": 0.8}}
    tune = {"validation": 0.2, "beta": [0.1, 10.0], "steps": 5, "seeds": 2, "criterion": "rec_error"}
    exp = experiment(variants=rows, seeds=(0,), n_test=60, n_eval=20, tune=tune, config={**BASE["config"], "steps": 10})
    results = run_compare(exp, tmp_path / "out", feature_cache_dir=cache_dir, **QUIET)
    assert results["training_groups"] == [["rae-a", "rae-b"]]
    for label in rows:
        chosen = results["methods"][label]["tuning"]["chosen"]["beta"]
        assert results["methods"][label]["config"]["beta"] == chosen
        assert [r["beta"] for r in results["methods"][label]["runs"]] == [chosen]
        assert load_runs(tmp_path / "out", row=label).state.hparams.beta.tolist() == [np.float32(chosen)]
