"""End-to-end `jaxrae compare` on a tiny slice of digits: outputs, table == per-seed means, resume.

Kept fast: 300/120 images, 20 steps in chunks of 10, 2 seeds, one continuous and one discrete
method, 40 evaluation samples, a 30-step feature network. Every run in this module uses the same
configs, so JAX compiles each program once and later runs reuse it.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from _tiny_compare import TINY_COMPARE

from jaxrae import cli
from jaxrae.cli import experiment_from_args
from jaxrae.compare import CompareInterrupted, run_compare
from jaxrae.errors import ConfigError
from jaxrae.evaluate import _fit_ex_post, _seed_keys
from jaxrae.experiment import Experiment, load_experiment

OUTPUT_FILES = [
    "results.json",
    "table.md",
    "table.csv",
    "experiment.json",
    "reconstructions.png",
    "samples.png",
    "interpolations.png",
    "metrics.png",
    "losses.png",
]

TINY = dict(
    **TINY_COMPARE,
    likelihood_k=20,
    config={"steps": 20, "chunk_size": 10, "batch_size": 32, "latent_dim": 4, "n_classes": 4},
)


def tiny(methods=("ae", "drae"), **changes) -> Experiment:
    return Experiment(**{**TINY, "methods": tuple(methods), **changes})


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("full") / "out"
    results = run_compare(tiny(), out, progress=False, feature_cache_dir=cache_dir, log=lambda *_: None)
    return out, results


def test_every_output_file_exists(uninterrupted):
    out, _ = uninterrupted
    for name in OUTPUT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for method in ("ae", "drae"):
        for suffix in (".json", ".npz"):
            assert (out / "methods" / f"{method}{suffix}").is_file()
        assert (out / "checkpoints" / f"{method}.msgpack").is_file()
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_results_json_holds_every_number(uninterrupted):
    out, _ = uninterrupted
    results = json.loads((out / "results.json").read_text())
    assert results["feature_network"]["metric"] == "FD in classifier features"
    assert 0.0 <= results["feature_network"]["test_accuracy"] <= 1.0
    assert results["environment"]["versions"]["jax"] and results["environment"]["devices"]
    ae, drae = results["methods"]["ae"], results["methods"]["drae"]
    assert ae["config"]["method"] == "ae" and ae["config"]["steps"] == 20
    for m in (ae, drae):
        assert m["seeds"] == [0, 1] and len(m["ok"]) == 2 and len(m["diverged_at"]) == 2
        assert m["times"]["train_s"] >= 0 and m["times"]["compile_s"] >= 0
        for key in ("rec_error", "fd_rec", "fd_prior", "fd_ex_post", "fd_interp", "precision", "recall", "code_loglik"):
            assert len(m["metrics"][key]) == 2 and all(math.isfinite(v) for v in m["metrics"][key]), key
    assert "perplexity" in drae["metrics"] and "perplexity" not in ae["metrics"]
    assert all(1.0 <= p <= 4.0 for p in drae["metrics"]["perplexity"])
    assert all(0.0 <= v <= 1.0 for v in ae["metrics"]["precision"] + ae["metrics"]["recall"])
    assert results["baseline"] == "ae"


def test_table_means_equal_per_seed_means(uninterrupted):
    out, _ = uninterrupted
    results = json.loads((out / "results.json").read_text())
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert rows
    for row in rows:
        m = results["methods"][row["method"]]
        values = np.array(m["metrics"][row["metric"]])[np.array(m["ok"])]
        assert float(row["mean"]) == pytest.approx(values.mean(), rel=1e-12)
        assert float(row["std"]) == pytest.approx(values.std(ddof=1), rel=1e-12)
        assert row["n_ok"] == str(sum(m["ok"])) and row["n_total"] == "2"
        if row["method"] == "drae" and row["diff_mean"]:
            base = np.array(results["methods"]["ae"]["metrics"][row["metric"]])
            assert float(row["diff_mean"]) == pytest.approx((values - base).mean(), rel=1e-9, abs=1e-12)
    # code log-likelihoods of discrete (log-probability) and continuous (log-density) codes are not paired
    assert next(r for r in rows if r["method"] == "drae" and r["metric"] == "code_loglik")["diff_mean"] == ""
    md = (out / "table.md").read_text()
    assert "2/2" in md and "classifier features" in md
    assert "FID (Inception)" not in md


def _numbers(results):
    return {name: m["metrics"] for name, m in results["methods"].items()}


def test_resume_after_interruption_gives_the_same_results(tmp_path, uninterrupted, cache_dir):
    _, full = uninterrupted
    out = tmp_path / "out"
    quiet = dict(progress=False, feature_cache_dir=cache_dir, log=lambda *_: None, figures=False)
    # 1. only the first method finishes
    run_compare(tiny(methods=("ae",)), out, **quiet)
    ae_record = (out / "methods" / "ae.json").read_bytes()
    # 2. the second method is interrupted after its first chunk (of two)
    with pytest.raises(CompareInterrupted):
        run_compare(tiny(), out, resume=True, stop_after_chunks=1, **quiet)
    assert (out / "checkpoints" / "drae.msgpack").exists() and not (out / "methods" / "drae.json").exists()
    # 3. rerun: ae is skipped (its record untouched), drae continues from its checkpoint
    resumed = run_compare(tiny(), out, resume=True, **quiet)
    assert (out / "methods" / "ae.json").read_bytes() == ae_record
    assert _numbers(resumed) == _numbers(full)
    for name in ("ae", "drae"):
        assert resumed["methods"][name]["final_loss"] == full["methods"][name]["final_loss"]


def test_cli_default_out_resumes_and_explicit_out_refuses(tmp_path, monkeypatch, cache_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JAXRAE_CACHE", str(cache_dir))
    flags = [
        "compare",
        "--methods",
        "ae",
        "--seeds",
        "2",
        "--n-train",
        "300",
        "--n-test",
        "120",
        "--n-eval",
        "40",
        "--feature-steps",
        "30",
        "--n-components",
        "3",
        "--likelihood-k",
        "20",
        "--steps",
        "20",
        "--chunk-size",
        "10",
        "--batch-size",
        "32",
        "--latent-dim",
        "4",
        "--n-classes",
        "4",
        "--quiet",
    ]
    assert cli.main(flags) == 0
    out = tmp_path / "runs" / "compare-digits"
    assert (out / "results.json").is_file()
    # table.md is headed by the exact command, the versions and the machine
    head = (out / "table.md").read_text().splitlines()[:6]
    assert head[2] == "- command: `jaxrae " + " ".join(flags) + "`"
    assert any(line.startswith("- versions: jaxrae ") and "jax " in line for line in head)
    assert any(line.startswith("- machine: cpu backend") for line in head)
    before = (out / "methods" / "ae.json").read_bytes()
    assert cli.main(flags) == 0  # the default directory is resumed: the finished method is skipped
    assert (out / "methods" / "ae.json").read_bytes() == before
    # changed settings in the same (default) directory: a clear one-line error, exit 2
    assert cli.main(flags[:-1] + ["--steps", "30", "--quiet"]) == 2
    # an explicit --out that holds results needs --resume or --overwrite
    assert cli.main(flags + ["--out", str(out)]) == 2


def test_diverged_run_is_recorded_but_excluded_from_the_table(tmp_path, uninterrupted, cache_dir):
    src, _ = uninterrupted
    out = tmp_path / "out"
    shutil.copytree(src, out)
    record_path = out / "methods" / "drae.json"
    record = json.loads(record_path.read_text())
    record["ok"], record["diverged_at"] = [True, False], [-1, 7]  # as train() flags a run that went non-finite
    record_path.write_text(json.dumps(record))
    results = run_compare(
        tiny(), out, resume=True, progress=False, feature_cache_dir=cache_dir, log=lambda *_: None, figures=False
    )
    assert results["methods"]["drae"]["diverged_at"] == [-1, 7]  # recorded
    rows = {(r["method"], r["metric"]): r for r in csv.DictReader((out / "table.csv").open())}
    row = rows[("drae", "rec_error")]
    assert (row["n"], row["n_ok"], row["n_total"]) == ("1", "1", "2")
    assert float(row["mean"]) == pytest.approx(record["metrics"]["rec_error"][0])  # seed 1 not averaged in
    assert rows[("drae", "rec_error")]["diff_n"] == "1"  # paired over the one common ok seed
    assert "| drae | 1/2 |" in (out / "table.md").read_text()


def test_ex_post_fit_survives_a_run_with_non_finite_codes():
    codes = np.random.default_rng(0).normal(size=(2, 300, 4)).astype(np.float32)
    broken = codes.copy()
    broken[1, 5] = np.nan
    runs = SimpleNamespace(codec=SimpleNamespace(discrete=False))
    keys = _seed_keys(jax.random.PRNGKey(0), [0, 1])
    fitted, bad = _fit_ex_post(runs, broken, keys, 3)
    reference, _ = _fit_ex_post(runs, codes, keys, 3)
    assert bad.tolist() == [False, True]
    np.testing.assert_allclose(np.asarray(fitted.means[0]), np.asarray(reference.means[0]), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Labelled variants: one preset in several rows (an estimator x temperature grid in one table)

VARIANTS_TOML = """
methods = ["ae"]
seeds = 2
baseline = "st"
[config]
steps = 20
[overrides.ae]
lr = 1e-3
[variants.st]
method = "drae"
estimator = "st"
[variants."reinmax-tau0.5"]
method = "drae"
estimator = "reinmax"
tau = 0.5
"""


def _write(tmp_path, body, name="experiment.toml"):
    path = tmp_path / name
    path.write_text(body)
    return path


def test_variants_are_rows_after_the_methods(tmp_path):
    exp = load_experiment(_write(tmp_path, VARIANTS_TOML))
    assert list(exp.rows) == ["ae", "st", "reinmax-tau0.5"]  # methods, then variants in file order
    st, reinmax = exp.method_config("st"), exp.method_config("reinmax-tau0.5")
    assert (st.method, st.estimator, st.steps) == ("drae", "st", 20)
    assert (reinmax.method, reinmax.estimator, reinmax.tau, reinmax.steps) == ("drae", "reinmax", 0.5, 20)
    assert exp.method_config("ae").lr == 1e-3  # [overrides.ae] is the row labelled ae, preset ae
    assert exp.rows["ae"] == {"method": "ae", "lr": 1e-3}
    assert exp.baseline_label == "st"
    assert Experiment.from_dict(exp.to_dict()).rows == exp.rows
    only_variants = load_experiment(_write(tmp_path, '[variants.b]\nmethod = "drae"\n[variants.a]\nmethod = "ae"\n'))
    assert only_variants.methods == () and list(only_variants.rows) == ["b", "a"]  # not the main job's methods


@pytest.mark.parametrize(
    "body, needles",
    [
        (
            'methods = ["drae"]\n[variants.drae]\nmethod = "drae"\n',
            ["[variants.drae]", "rename the variant", "drop 'drae' from methods"],
        ),
        ('[variants.st]\nestimator = "st"\n', ["[variants.st]", 'method = "<preset>"']),
        ('[variants.st]\nmethod = "drae"\nestimater = "st"\n', ["[variants.st]", "estimater"]),
        ('[variants.st]\nmethod = "drea"\n', ["[variants.st]", "drea", "drae"]),
        ('[variants.st]\nmethod = "drae"\ntau = -1.0\n', ["[variants.st]", "tau"]),
        ('[variants."a/b"]\nmethod = "drae"\n', ['[variants."a/b"]', "letters, digits"]),
        (
            'methods = ["ae"]\n[variants.st]\nmethod = "drae"\n[overrides.st]\nbeta = 1.0\n',
            ["[overrides.st]", "[variants.st]"],
        ),
        ('[variants.st]\nmethod = "drae"\nbaseline = "x"\n', ["[variants.st]", "baseline"]),  # a key of the wrong table
        ('baseline = "drae"\n[variants.st]\nmethod = "drae"\n', ["baseline='drae'", "'st'"]),
        ("variants = 3\n", ["variants", "table"]),
    ],
)
def test_variant_mistakes_are_config_errors_naming_the_file(tmp_path, body, needles):
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as error:
        load_experiment(path)
    for needle in [str(path)] + needles:
        assert needle in str(error.value), (needle, str(error.value))


def _args(*flags):
    return cli.build_parser().parse_args(["compare", *flags])


def test_flags_override_config_but_may_not_set_a_field_a_row_sets(tmp_path):
    path = str(_write(tmp_path, VARIANTS_TOML))
    exp = experiment_from_args(_args("--config", path, "--steps", "7", "--baseline", "reinmax-tau0.5"))
    assert all(exp.method_config(label).steps == 7 for label in exp.rows)  # a flag beats [config], in every row
    assert exp.method_config("reinmax-tau0.5").tau == 0.5 and exp.baseline_label == "reinmax-tau0.5"
    with pytest.raises(
        ConfigError, match=r'--tau=1.0 is invalid: it sets tau .*\[variants."reinmax-tau0.5"\]'
    ) as error:
        experiment_from_args(_args("--config", path, "--tau", "1"))  # would flatten the grid
    assert path in str(error.value) and "[variants.st]" not in str(error.value)  # st does not set tau
    with pytest.raises(
        ConfigError, match=r"--estimator='st' is invalid: .*\[variants.st\], \[variants.\"reinmax-tau0.5\"\]"
    ):
        experiment_from_args(_args("--config", path, "--estimator", "st"))
    with pytest.raises(
        ConfigError, match=r"--lr=0.01 is invalid: .*\[overrides.ae\]"
    ):  # [overrides.m] is a row's table too
        experiment_from_args(_args("--config", path, "--lr", "0.01"))
    with pytest.raises(ConfigError, match="share one namespace"):
        experiment_from_args(_args("--config", path, "--methods", "ae,st"))


def test_estimators_toml_is_the_estimator_by_temperature_grid():
    exp = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "estimators.toml")
    configs = {label: exp.method_config(label) for label in exp.rows}
    assert len(configs) == 10 and exp.methods == () and exp.baseline_label == "st"
    assert {c.method for c in configs.values()} == {"drae"}
    assert configs["st"].estimator == "st"  # deterministic: tau does not enter it, one row
    grid = {(c.estimator, c.tau) for label, c in configs.items() if label != "st"}
    assert grid == {(e, t) for e in ("st-gumbel", "gumbel-rao", "reinmax") for t in (0.5, 1.0, 2.0)}
    assert all(label == f"{c.estimator}-tau{c.tau:g}" for label, c in configs.items() if label != "st")
    assert {c.steps for c in configs.values()} == {1000} and exp.data == "digits" and len(exp.seeds) == 5


EXPERIMENT_FILES = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.toml"))


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda p: p.name)
def test_every_shipped_experiment_file_loads_and_validates(path):
    """A typo in a shipped TOML (unknown key, bad value, a label colliding with a method) is caught
    here, not after an hour of training: loading validates every row's TrainConfig."""
    exp = load_experiment(path)
    assert exp.rows and all(exp.method_config(label).steps >= 1 for label in exp.rows)


def test_decoder_regularizers_toml_varies_only_the_decoder_term_at_one_latent_weight():
    exp = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "decoder_regularizers.toml")
    assert exp.baseline_label == "rae-beta0.0098"
    for shape in ((8, 8, 1), (28, 28, 1)):  # digits, and Fashion-MNIST from the command line
        configs = {label: exp.method_config(label).for_images(shape) for label in exp.rows}
        same_weight = [label for label in configs if label != "rae"]
        assert {configs[label].beta for label in same_weight} == {configs["rae-l2"].beta}
    assert configs["rae-l2"].beta == 0.0098  # at 784 pixels as before
    decoder_terms = {configs[label].method_spec.decoder_reg for label in same_weight}
    assert decoder_terms == {"none", "l2", "gp", "sn"}


def test_variants_are_keyed_by_label_in_results_tables_and_resume(tmp_path, uninterrupted, cache_dir):
    _, full = uninterrupted
    out = tmp_path / "out"
    quiet = dict(progress=False, feature_cache_dir=cache_dir, log=lambda *_: None, figures=False)
    # The fixture's drae config again (estimator st is drae's own), so its program is reused.
    st = {"method": "drae", "estimator": "st"}
    hot = {"method": "drae", "estimator": "reinmax", "tau": 2.0}
    # 1. one variant finishes
    run_compare(tiny(methods=(), variants={"drae-st": st}), out, **quiet)
    st_record = (out / "methods" / "drae-st.json").read_bytes()
    # 2. a second variant of the same preset is interrupted after its first chunk (of two)
    grid = tiny(methods=(), variants={"drae-st": st, "reinmax-tau2": hot})
    with pytest.raises(CompareInterrupted):
        run_compare(grid, out, resume=True, stop_after_chunks=1, **quiet)
    assert (out / "checkpoints" / "reinmax-tau2.msgpack").exists() and not (
        out / "methods" / "reinmax-tau2.json"
    ).exists()
    # 3. rerun: drae-st is skipped (record untouched), reinmax-tau2 continues from its checkpoint
    results = run_compare(grid, out, resume=True, **quiet)
    assert (out / "methods" / "drae-st.json").read_bytes() == st_record

    saved = json.loads((out / "results.json").read_text())
    assert list(saved["methods"]) == ["drae-st", "reinmax-tau2"] and saved["baseline"] == "drae-st"
    a, b = saved["methods"]["drae-st"], saved["methods"]["reinmax-tau2"]
    assert a["preset"] == b["preset"] == "drae" and a["config"]["method"] == b["config"]["method"] == "drae"
    assert b["overrides"] == {"estimator": "reinmax", "tau": 2.0}
    assert (a["config"]["estimator"], a["config"]["tau"]) == ("st", 1.0) and (
        b["config"]["estimator"],
        b["config"]["tau"],
    ) == ("reinmax", 2.0)
    assert a["metrics"] == full["methods"]["drae"]["metrics"]  # the same row under another label: the same numbers
    assert results["methods"]["reinmax-tau2"]["metrics"] != a["metrics"]

    rows = list(csv.DictReader((out / "table.csv").open()))
    assert {r["method"] for r in rows} == {"drae-st", "reinmax-tau2"}
    diff = next(r for r in rows if r["method"] == "reinmax-tau2" and r["metric"] == "rec_error")
    paired = np.array(b["metrics"]["rec_error"]) - np.array(a["metrics"]["rec_error"])
    assert diff["baseline"] == "drae-st" and float(diff["diff_mean"]) == pytest.approx(paired.mean(), rel=1e-9)
    md = (out / "table.md").read_text()
    assert "| reinmax-tau2 | drae | estimator=reinmax, tau=2.0 |" in md and "vs baseline `drae-st`" in md


# --------------------------------------------------------------------------------------------
# Test likelihoods


def test_results_json_records_the_test_likelihoods(uninterrupted):
    """Per seed NLL (ex-post IS-k) in nats and bits per dimension for the deterministic rows, k and
    each seed's fitted observation variance in results.json, the columns in the table and its caption."""
    out, _ = uninterrupted
    results = json.loads((out / "results.json").read_text())
    settings = results["eval"]["likelihood"]
    assert settings["k"] == 20 and results["experiment"]["likelihood_k"] == 20
    for name in ("ae", "drae"):
        m = results["methods"][name]
        nats, bpd = np.array(m["metrics"]["nll_ex_post"]), np.array(m["metrics"]["nll_ex_post_bpd"])
        assert nats.shape == (2,) and np.all(np.isfinite(nats))
        np.testing.assert_allclose(bpd, nats / (64 * math.log(2.0)), rtol=1e-6)  # 8x8x1 pixels
        assert "nll_iwae" not in m["metrics"] and "neg_elbo" not in m["metrics"]  # no posterior
        notes = m["notes"]["likelihood"]
        assert notes["k"] == 20 and notes["kind"] == "ex_post" and len(notes["proposal_width"]) == 2
        variance = settings["rows"][name]["observation_variance"]
        assert (
            settings["rows"][name]["likelihood"] == "gaussian"
            and len(variance) == 2
            and all(0 < v < 0.25 for v in variance)
        )
    assert {r["metric"] for r in csv.DictReader((out / "table.csv").open())} >= {"nll_ex_post", "nll_ex_post_bpd"}
    md = (out / "table.md").read_text()
    assert "NLL ex-post IS-20" in md and "observation variance sigma^2 fitted by maximum likelihood" in md


@pytest.fixture(scope="module")
def binary_digits():
    from jaxrae.data import load_data

    return load_data("digits@binarize=static", n_train=300, n_test=30)


@pytest.mark.parametrize(
    "name,lik", [("vae", "bernoulli"), ("dvae", "bernoulli"), ("ae", "gaussian"), ("fsq", "bernoulli")]
)
def test_evaluation_equals_jaxrae_likelihood_called_directly(binary_digits, name, lik):
    """evaluate_likelihoods against jaxrae.likelihood called by hand on each seed's model: the
    posterior (or proposal) from the encoder, log p(x | z) from the decoder, the same keys."""
    from jaxrae import evaluate as E
    from jaxrae import likelihood as L
    from jaxrae import relax
    from jaxrae.config import TrainConfig
    from jaxrae.nets import AutoEncoder
    from jaxrae.train import train

    config = TrainConfig(
        method=name,
        likelihood=lik,
        steps=10,
        chunk_size=10,
        batch_size=32,
        latent_dim=3,
        n_classes=3,
        fsq_levels=(3, 4),
    )
    runs = train(config, binary_digits, seeds=(0, 3), progress=False)
    test, train_images = binary_digits.test_images, E.training_images(binary_digits)
    fitted, bad = E._fit_ex_post(runs, runs.encode(train_images), E._seed_keys(jax.random.key(5), runs.seeds), 2)
    key, k = jax.random.key(7), 12
    values, notes = E.evaluate_likelihoods(runs, test, train_images, fitted, bad, k=k, key=key)
    model = runs.model
    for r, seed in enumerate(runs.seeds):
        variables = jax.tree.map(lambda a, r=r: a[r], runs.variables)
        h = model.apply(variables, test, False, method=AutoEncoder.encode)

        def decoded(z, variables=variables):
            if z.dtype == np.int32:  # discrete codes: one-hot (categorical) or FSQ grid codes
                z = jax.nn.one_hot(z, config.n_classes) if name == "dvae" else relax.fsq_codes_from_index(z, (3, 4))
            return model.apply(variables, z.reshape((z.shape[0], -1)), False, method=AutoEncoder.decode)

        if lik == "bernoulli":

            def f(image, z, decoded=decoded):
                return L.bernoulli_log_likelihood(image, decoded(z))
        else:
            recon = model.apply(
                variables,
                model.apply(variables, train_images, False, method=AutoEncoder.encode),
                False,
                method=AutoEncoder.decode,
            )
            variance = np.mean((np.asarray(recon, np.float64) - train_images) ** 2)
            np.testing.assert_allclose(notes["observation_variance"][r], variance, rtol=1e-4)

            def f(image, z, decoded=decoded, variance=notes["observation_variance"][r]):
                return L.gaussian_log_likelihood(image, decoded(z), variance)

        batch_key = jax.random.fold_in(jax.random.fold_in(key, seed), 1)
        if name in ("vae", "dvae"):
            if name == "vae":
                mean, log_var = np.split(np.asarray(h), 2, axis=-1)
                q = L.GaussianProposal(mean, log_var)
            else:
                q = L.CategoricalProposal(jax.nn.log_softmax(h.reshape((len(test), 3, 3)), axis=-1))
            key_elbo, key_iwae = jax.random.split(batch_key)
            elbo = L.elbo(key_elbo, test, q, f, n_samples=k, chunk_size=k)
            iwae = L.iwae_bound(key_iwae, test, q, f, k=k, chunk_size=k)
            np.testing.assert_allclose(values["neg_elbo"][r], -float(np.mean(elbo)), rtol=1e-4)
            np.testing.assert_allclose(values["nll_iwae"][r], -float(np.mean(iwae)), rtol=1e-4)
            np.testing.assert_allclose(values["nll_iwae_bpd"][r], -float(np.mean(iwae)) / (64 * math.log(2)), rtol=1e-4)
        else:
            density = jax.tree.map(lambda a, r=r: a[r], fitted)
            width = notes["proposal_width"][r]
            if name == "ae":
                q = L.gaussian_proposal(h, width)
            else:  # FSQ: squared grid distances of the quantized group codes, widened by the temperature
                grid_codes = np.asarray(relax.fsq_codes_from_index(np.arange(12), (3, 4)))
                q_codes = np.asarray(relax.finite_scalar_quantize(h.reshape((len(test), 3, 2)), (3, 4)).codes)
                scores = -np.sum((q_codes[:, :, None, :] - grid_codes) ** 2, axis=-1)
                q = L.categorical_proposal(scores, width, E.PROPOSAL_UNIFORM_WEIGHT)
            log_px = L.ex_post_log_likelihood(batch_key, test, q, density, f, k=k, chunk_size=k)
            np.testing.assert_allclose(values["nll_ex_post"][r], -float(np.mean(log_px)), rtol=1e-4)


def test_likelihood_settings_that_cannot_work_are_config_errors(monkeypatch, capsys):
    import dataclasses

    from jaxrae import grid

    with pytest.raises(ConfigError, match="likelihood_k=0 is invalid: must be an integer >= 1"):
        tiny(likelihood_k=0)
    with pytest.raises(ConfigError, match="likelihood='logistic' is invalid: choose one of gaussian, bernoulli"):
        tiny(config={**TINY["config"], "likelihood": "logistic"})
    # a row whose code path gives no ex-post proposal cannot be asked for a likelihood
    monkeypatch.setitem(grid.CODE_PATHS, "fsq", dataclasses.replace(grid.CODE_PATHS["fsq"], proposal_logits=None))
    with pytest.raises(ConfigError, match="likelihood_k=.* row 'fsq' has no posterior"):
        tiny(methods=("ae", "fsq"))
    assert tiny(methods=("ae", "fsq"), likelihood_k=None).likelihood_k is None  # none asked: fine
    for flags in (["compare", "--likelihood-k", "0", "--quiet"], ["compare", "--likelihood", "logistic", "--quiet"]):
        assert cli.main(flags) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("jaxrae: error: ") and "likelihood" in err[0]


def test_jang2017_toml_is_their_categorical_vae_setting():
    """Jang et al. (2017): MLP 784-512-256 encoder, 20 x 10 categorical codes, Bernoulli decoder,
    ELBO weight 1, tau = max(0.5, exp(-1e-4 t)), statically binarized data, >= 30 epochs of 60k."""
    exp = load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "jang2017_fashion_mnist.toml")
    assert exp.data == "fashion_mnist@binarize=static" and len(exp.seeds) == 5 and exp.likelihood_k == 1000
    configs = {label: exp.method_config(label) for label in exp.rows}
    assert set(configs) == {"dvae", "dvae-st", "vae", "drae", "rae"}
    for c in configs.values():
        assert (c.arch, c.likelihood, c.batch_size) == (
            "mlp",
            "bernoulli",
            100,
        ) and c.steps * c.batch_size >= 30 * 60000
    for label in ("dvae", "dvae-st"):
        c = configs[label]
        assert (c.latent_dim, c.n_classes, c.beta, c.tau, c.tau_min, c.anneal_rate) == (20, 10, 1.0, 1.0, 0.5, 1e-4)
        assert c.method_spec.anneal
    assert configs["dvae"].method_spec.code == "relaxed" and configs["dvae-st"].estimator == "st-gumbel"
    assert configs["vae"].beta == 1.0
    from jaxrae.nets import Encoder

    params = Encoder("mlp", 200).init(jax.random.key(0), np.zeros((1, 28, 28, 1)), False)["params"]
    assert [params[f"Dense_{i}"]["kernel"].shape for i in range(3)] == [(784, 512), (512, 256), (256, 200)]
