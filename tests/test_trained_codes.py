"""Rows with a posterior are scored on the codes the decoder read in training, next to the argmax/mean ones.

- the trained-code draw is the training loss's code draw (the code path's ``train_code``) for the same
  key, at the temperature training logged at its last step, and equals the relaxation computed directly
  (:func:`jaxrae.relax.gumbel_softmax`, straight-through Gumbel's hard one-hot, mu + sigma * eps);
- a relaxed code approaches the one-hot of the same Gumbel draw as tau -> 0;
- ``rec_error_trained`` is the reconstruction error of decoding that draw, keyed by the evaluation's
  own ``trained_codes`` purpose folded with the seed value (recomputed here from the keys);
- every other metric is bitwise what the evaluation gives without the trained-code scoring;
- deterministic rows get no trained-code metric; refits draw afresh;
- table.md shows both columns, labelled by code, with paired differences and the caption line.
"""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrae import evaluate as E
from jaxrae import grid, losses, relax, report
from jaxrae import metrics as M
from jaxrae.config import TrainConfig
from jaxrae.data import load_data
from jaxrae.features import feature_network
from jaxrae.nets import AutoEncoder
from jaxrae.train import train

N_EVAL = 40
SEEDS = (0, 3)
STEPS = 20
LATENT, CLASSES = 4, 4
ANNEAL_RATE = 0.02  # tau at the last step = exp(-0.02 * 19) = 0.68, above tau_min = 0.5: the annealing shows
POSTERIOR_ROWS = ("dvae", "dvae-st", "vae")


@pytest.fixture(scope="module")
def setting():
    data = load_data("digits", n_train=300, n_test=120)
    fnet = feature_network(data, steps=30)
    rows = {}
    for method in (*POSTERIOR_ROWS, "drae"):
        config = TrainConfig.from_dict(
            {
                "method": method,
                "steps": STEPS,
                "chunk_size": 10,
                "batch_size": 32,
                "latent_dim": LATENT,
                "n_classes": CLASSES,
                "anneal_rate": ANNEAL_RATE,
            }
        )
        rows[method] = train(config, data, SEEDS, progress=False)
    return data, fnet, rows


@pytest.fixture(scope="module")
def evaluations(setting):
    data, fnet, rows = setting
    return {
        method: E.evaluate(runs, data, fnet, n_eval=N_EVAL, n_components=3, n_init=1, ex_post_refits=1)
        for method, runs in rows.items()
    }


def _encoder_outputs(runs, x):
    return jax.vmap(lambda v: runs.model.apply(v, x, False, method=AutoEncoder.encode))(runs.variables)


def _final_tau(runs) -> np.ndarray:
    """tau_t = max(tau_min, tau0 exp(-rate t)) at the last step t = STEPS - 1 (Jang et al. 2017), in numpy."""
    config = runs.config
    tau0 = np.asarray(runs.state.hparams.tau, np.float64)
    return np.maximum(config.tau_min, tau0 * np.exp(-config.anneal_rate * (STEPS - 1)))


def _run(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


@pytest.mark.parametrize("method", POSTERIOR_ROWS)
def test_trained_code_is_the_training_loss_draw(setting, method):
    data, _, rows = setting
    runs = rows[method]
    x = jnp.asarray(data.test_images[:16])
    keys = jax.random.split(jax.random.PRNGKey(7), runs.n_runs)
    codes = E.trained_codes(runs, x, keys)
    spec = grid.code_spec(runs.config)
    chex.assert_shape(codes, (runs.n_runs, 16, spec.decoder_in))
    assert np.all(np.isfinite(codes))
    np.testing.assert_array_equal(E.last_steps(runs), [STEPS - 1] * runs.n_runs)
    h = _encoder_outputs(runs, x)
    path = grid.CODE_PATHS[runs.config.method_spec.encoder]
    for i in range(runs.n_runs):
        params = _run(runs.variables, i)["params"]
        if runs.codec.discrete:
            tau = _final_tau(runs)[i]
            # what training logged as its temperature at its last step
            np.testing.assert_allclose(runs.metrics["tau"][i, -1], tau, rtol=1e-6)
        else:
            tau = 1.0  # a Gaussian code ignores it
        # the loss's own draw: the code path's train_code at that key and tau
        loss_draw = path.train_code(runs.config, params, h[i], keys[i], jnp.float32(tau)).decoder_in
        np.testing.assert_allclose(codes[i], loss_draw, rtol=1e-5, atol=1e-6)
        # and the relaxation itself, computed directly
        if method == "vae":
            mean, log_var = jnp.split(h[i], 2, axis=-1)
            direct = losses.reparameterize(keys[i], mean, log_var)
            assert not np.allclose(codes[i], mean, atol=1e-3)  # a sample, not the mean
        else:
            logits = h[i].reshape(16, LATENT, CLASSES)
            hard = method == "dvae-st"
            direct = relax.gumbel_softmax(keys[i], logits, jnp.float32(tau), hard=hard).reshape(16, -1)
            per_var = codes[i].reshape(16, LATENT, CLASSES)
            np.testing.assert_allclose(per_var.sum(-1), 1.0, rtol=1e-5)
            if hard:  # the hard sampled one-hot
                np.testing.assert_allclose(per_var.max(-1), 1.0, rtol=1e-5)
            else:  # soft: not a one-hot
                assert per_var.max(-1).min() < 0.99
        np.testing.assert_allclose(codes[i], direct, rtol=1e-5, atol=1e-6)


def test_relaxed_code_approaches_the_one_hot_as_tau_shrinks(setting):
    data, _, rows = setting
    runs = rows["dvae"]
    x = data.test_images[:32]
    keys = jax.random.split(jax.random.PRNGKey(11), runs.n_runs)
    distances, argmaxes = [], []
    for tau in (1.0, 0.1, 1e-3):
        # tau_min below tau and tau0 chosen so that the last step's temperature is tau
        config = dataclasses.replace(runs.config, tau_min=tau)
        state = runs.state._replace(hparams=runs.state.hparams._replace(tau=jnp.full((runs.n_runs,), tau)))
        code = E.trained_codes(dataclasses.replace(runs, config=config, state=state), x, keys)
        code = code.reshape(runs.n_runs, len(x), LATENT, CLASSES)
        distances.append(float(np.mean(1.0 - code.max(-1))))
        argmaxes.append(code.argmax(-1))
    assert distances[0] > distances[1] > distances[2]
    assert distances[2] < 1e-3  # one-hot, up to the rare near-tie of two perturbed logits
    # the same Gumbel noise at every tau: the same sampled class
    np.testing.assert_array_equal(argmaxes[0], argmaxes[2])


@pytest.mark.parametrize("method", POSTERIOR_ROWS)
def test_posterior_rows_get_both_scores(setting, evaluations, method):
    runs = setting[2][method]
    out, _, notes = evaluations[method]
    for key in E.TRAINED_CODE_METRICS:
        assert key in E.METRIC_KEYS and key in E.REFIT_METRICS and key in report.METRICS
        chex.assert_shape(np.asarray(out[key]), (len(SEEDS),))
        assert np.all(np.isfinite(out[key])), key
    assert out["rec_error_trained"] != out["rec_error"]  # another code, another number
    trained = notes["trained_codes"]
    assert trained["code"] == runs.config.method_spec.code
    if runs.codec.discrete:
        np.testing.assert_allclose(trained["temperature"], runs.metrics["tau"][:, -1], rtol=1e-6)
    else:
        assert trained["temperature"] is None


def test_deterministic_rows_get_no_trained_code_score(evaluations):
    out, _, notes = evaluations["drae"]
    assert not any(key in out for key in E.TRAINED_CODE_METRICS)
    assert "trained_codes" not in notes and not any(k in notes["refits"]["values"] for k in E.TRAINED_CODE_METRICS)


def test_rec_error_trained_is_the_decoded_draw_of_the_evaluation_key(setting, evaluations):
    data, _, rows = setting
    runs = rows["dvae"]
    out = evaluations["dvae"][0]
    test = data.test_images[:N_EVAL]
    purpose = jax.random.fold_in(jax.random.PRNGKey(E.EVAL_SEED), E.TRAINED_CODES_STREAM)
    # seed value, then image chunk 0 (N_EVAL images: one chunk)
    keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(purpose, s), 0) for s in SEEDS])
    codes = E.trained_codes(runs, test, keys)
    decode = jax.vmap(lambda v, c: runs.model.apply(v, c, False, method=AutoEncoder.decode))
    images = np.asarray(decode(runs.variables, jnp.asarray(codes)))  # gaussian likelihood: sigmoid images
    for i in range(runs.n_runs):
        expected = M.reconstruction_error(test, images[i])
        assert out["rec_error_trained"][i] == pytest.approx(expected, rel=1e-5)


def test_other_metrics_are_bitwise_unchanged(setting, evaluations, monkeypatch):
    data, fnet, rows = setting
    full, full_images, full_notes = evaluations["dvae"]
    monkeypatch.setattr(grid, "has_posterior", lambda config: False)  # the evaluation before trained codes
    plain, plain_images, plain_notes = E.evaluate(
        rows["dvae"], data, fnet, n_eval=N_EVAL, n_components=3, n_init=1, ex_post_refits=1
    )
    assert set(full) == set(plain) | set(E.TRAINED_CODE_METRICS)
    for key, values in plain.items():
        assert full[key] == values, key
    for name, image in plain_images.items():
        np.testing.assert_array_equal(full_images[name], image)
    for key, values in plain_notes["refits"]["values"].items():
        assert full_notes["refits"]["values"][key] == values, key


def test_refits_draw_the_trained_codes_afresh(setting, evaluations):
    data, fnet, rows = setting
    single = evaluations["dvae"][0]
    out, _, notes = E.evaluate(rows["dvae"], data, fnet, n_eval=N_EVAL, n_components=3, n_init=1, ex_post_refits=2)
    for key in E.TRAINED_CODE_METRICS:
        values = np.asarray(notes["refits"]["values"][key])  # (seeds, refits)
        assert values.shape == (len(SEEDS), 2)
        # refit 0 is the single evaluation's draw (batch shapes differ: float rounding only)
        np.testing.assert_allclose(values[:, 0], single[key], rtol=1e-4, err_msg=key)
        assert np.all(values[:, 0] != values[:, 1]), key  # refit 1 draws other codes
        np.testing.assert_array_equal(out[key], values.mean(axis=1))


def _results(setting, evaluations, baseline="dvae-st"):
    rows = setting[2]
    methods = {}
    for label in ("dvae", "dvae-st", "drae"):
        out, _, notes = evaluations[label]
        methods[label] = {
            "seeds": list(SEEDS),
            "ok": rows[label].ok.tolist(),
            "discrete": True,
            "metrics": out,
            "notes": notes,
        }
    return {
        "data": "digits",
        "baseline": baseline,
        "eval": {"n_eval": N_EVAL},
        "feature_network": {"test_accuracy": 0.9},
        "methods": methods,
    }


def test_table_shows_both_codes_with_paired_differences(setting, evaluations):
    results = _results(setting, evaluations)
    rows = report.summary_table(results)
    by = {(r["method"], r["metric"]): r for r in rows}
    dvae, base = results["methods"]["dvae"]["metrics"], results["methods"]["dvae-st"]["metrics"]
    for key in E.TRAINED_CODE_METRICS:
        paired = np.asarray(dvae[key]) - np.asarray(base[key])
        assert by[("dvae", key)]["diff_mean"] == pytest.approx(paired.mean())
        assert by[("dvae", key)]["family"] == "table"
        assert ("drae", key) not in by  # no posterior, no such metric
    md = report.render_markdown(results, rows)
    summary = md.split("## Summary")[1].split("\n## ")[0]
    header = next(line for line in summary.splitlines() if line.startswith("| method"))
    for label in ("rec err (argmax/mean)", "rec err (trained code)", "FD rec (argmax/mean)", "FD rec (trained code)"):
        assert f"| {label} |" in header, label
    columns = [c.strip() for c in header.strip("|").split("|")]
    drae_line = next(line for line in summary.splitlines() if line.startswith("| drae |"))
    cells = [c.strip() for c in drae_line.strip("|").split("|")]
    assert cells[columns.index("rec err (trained code)")] == "-"
    assert cells[columns.index("rec err (argmax/mean)")] != "-"
    dvae_line = next(line for line in summary.splitlines() if line.startswith("| dvae |"))
    cell = [c.strip() for c in dvae_line.strip("|").split("|")][columns.index("rec err (trained code)")]
    assert cell.startswith(report.fmt(np.mean(dvae["rec_error_trained"])))
    assert report.TRAINED_CODES_NOTE in md
    assert "### test reconstruction error from the codes the decoder read in training" in md
    # the paired-difference grid has the dvae row's trained-code difference, and none for drae
    paired_grid = md.split("## Paired difference")[1].split("\n## ")[0]
    drae_diff = next(line for line in paired_grid.splitlines() if line.startswith("| drae |"))
    columns = [
        c.strip()
        for c in next(line for line in paired_grid.splitlines() if line.startswith("| method")).strip("|").split("|")
    ]
    assert [c.strip() for c in drae_diff.strip("|").split("|")][columns.index("rec err (trained code)")] == "-"
    assert "rec_error_trained" in report.render_csv(rows)


def test_tables_without_trained_codes_keep_their_headers(setting, evaluations):
    results = _results(setting, evaluations, baseline="drae")
    results["methods"] = {"drae": results["methods"]["drae"]}
    md = report.render_markdown(results)
    assert "| rec err |" in md and "(argmax/mean)" not in md and report.TRAINED_CODES_NOTE not in md
    assert not math.isnan(report.summary_table(results)[0]["mean"])
