"""jaxrae.likelihood against closed forms (a linear-Gaussian model) and exact enumeration (a tiny
categorical model), plus the numerics of the Bernoulli term, chunking, vmapping and bad input.

Monte Carlo tolerances: a stochastic estimate is compared with its exact value within 4 or 5
standard errors. The standard error is either measured from independent replicates (each with
its own key) or computed exactly from the enumerated model (the delta method: the standard error
of log p_hat(x) with k samples is sqrt(Var_q[w / p(x)] / k)). With the fixed keys used here the
tests are deterministic; the tolerances say why they pass for any key with high probability.
"""

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxrae import density, likelihood, losses
from jaxrae.errors import ConfigError

# --------------------------------------------------------------------------- linear-Gaussian model
# x = W z + b + noise, z ~ N(0, I_d), noise ~ N(0, s2 I_D). W has orthogonal columns, so the exact
# posterior N(mu, Sigma) is diagonal: Sigma = diag(1 / (1 + sv_j^2 / s2)), mu = Sigma W^T (x - b) / s2.

D, LATENT, S2 = 6, 2, 0.25
SINGULAR_VALUES = np.array([2.0, 0.7])


def linear_gaussian(n_images, seed=0, model_seed=0):
    """The model (W, b) drawn from model_seed, n_images images from seed."""
    model_rng, rng = np.random.default_rng(model_seed), np.random.default_rng(seed + 1000)
    q, _ = np.linalg.qr(model_rng.normal(size=(D, LATENT)))
    w = q * SINGULAR_VALUES
    b = model_rng.normal(size=D)
    z = rng.normal(size=(n_images, LATENT))
    x = z @ w.T + b + math.sqrt(S2) * rng.normal(size=(n_images, D))
    post_var = 1.0 / (1.0 + SINGULAR_VALUES**2 / S2)
    post_mean = ((x - b) @ w) * post_var / S2
    log_px = stats.multivariate_normal(mean=b, cov=w @ w.T + S2 * np.eye(D)).logpdf(x)
    return {
        "w": w,
        "b": b,
        "x": x.reshape(n_images, D, 1, 1),
        "post_mean": post_mean,
        "post_var": np.broadcast_to(post_var, post_mean.shape),
        "log_px": np.atleast_1d(log_px),
    }


def linear_decoder(w, b):
    def log_px_given_z(x, z):
        x_hat = (z @ jnp.asarray(w).T + jnp.asarray(b)).reshape(-1, D, 1, 1)
        return likelihood.gaussian_log_likelihood(x, x_hat, S2)

    return log_px_given_z


def closed_form_elbo(model, mean, var):
    """E_q log p(x|z) - KL(q || N(0, I)) for q = N(mean, diag var), in closed form."""
    w, b, x = model["w"], model["b"], model["x"].reshape(-1, D)
    residual = np.sum((x - mean @ w.T - b) ** 2, axis=1) + np.sum(SINGULAR_VALUES**2 * var, axis=1)
    expected_log_lik = -0.5 * residual / S2 - 0.5 * D * math.log(2 * math.pi * S2)
    kl = 0.5 * np.sum(mean**2 + var - np.log(var) - 1.0, axis=1)
    return expected_log_lik - kl


def replicate(fn, n, seed):
    """(mean, standard error of the mean) over n independent keys of fn(key) -> (B,)."""
    values = np.asarray(jax.jit(jax.vmap(fn))(jax.random.split(jax.random.key(seed), n)))
    return values.mean(axis=0), values.std(axis=0, ddof=1) / math.sqrt(n)


def standard_normal_mixture(dtype=jnp.float32):
    """The N(0, I) prior written as a one-component GaussianMixture."""
    return density.GaussianMixture(
        weights=jnp.ones((1,), dtype),
        means=jnp.zeros((1, LATENT), dtype),
        precisions_cholesky=jnp.eye(LATENT, dtype=dtype)[None],
        lower_bound=jnp.asarray(0.0, dtype),
        n_iter=jnp.asarray(0),
        converged=jnp.asarray(True),
        covariance_type="full",
    )


@pytest.mark.parametrize("fixed_variance", [None, 0.05], ids=["vae", "cv-vae"])
def test_linear_gaussian_elbo_matches_its_closed_form(fixed_variance):
    with jax.enable_x64(True):
        model = linear_gaussian(6)
        mean = model["post_mean"] + 1.5 * np.sqrt(model["post_var"])
        if fixed_variance is None:  # VAE: a variance per image and dimension
            var = 2.5 * model["post_var"]
            q = likelihood.GaussianProposal(jnp.asarray(mean), jnp.log(jnp.asarray(var)))
        else:  # CV-VAE: one fixed variance, passed as a scalar log variance
            var = np.full_like(mean, fixed_variance)
            q = likelihood.GaussianProposal(jnp.asarray(mean), jnp.log(fixed_variance))
        f = linear_decoder(model["w"], model["b"])
        estimate, se = replicate(
            lambda key: likelihood.elbo(key, model["x"], q, f, n_samples=500, chunk_size=128), 10, 1
        )
        expected = closed_form_elbo(model, mean, var)
        assert np.all(np.abs(estimate - expected) < 4 * se + 1e-9), (estimate, expected, se)
        # the closed form is far below log p(x), so the comparison above pins the formula
        assert np.all(model["log_px"] - expected > 1.0)


def test_linear_gaussian_elbo_below_iwae_k_below_log_px_and_iwae_converges():
    with jax.enable_x64(True):
        model = linear_gaussian(6)
        mean = model["post_mean"] + 1.5 * np.sqrt(model["post_var"])
        var = 2.5 * model["post_var"]  # wider than the posterior, so the weights have finite variance
        q = likelihood.GaussianProposal(jnp.asarray(mean), jnp.log(jnp.asarray(var)))
        f = linear_decoder(model["w"], model["b"])
        elbo = closed_form_elbo(model, mean, var)
        log_px = model["log_px"]
        means, ses = {}, {}
        for k in (1, 10, 100, 1000):
            means[k], ses[k] = replicate(
                lambda key, k=k: likelihood.iwae_bound(key, model["x"], q, f, k=k, chunk_size=250), 20, k
            )
        # IWAE-1 is an unbiased one-sample ELBO estimate (this fails if the -log k or log q is wrong)
        assert np.all(np.abs(means[1] - elbo) < 4 * ses[1]), (means[1], elbo, ses[1])
        ks = sorted(means)
        for k in ks:
            assert np.all(elbo <= means[k] + 4 * ses[k])
            assert np.all(means[k] <= log_px + 4 * ses[k])
        for small, large in itertools.pairwise(ks):
            assert np.all(means[small] <= means[large] + 4 * np.hypot(ses[small], ses[large]))
        gap_elbo, gap_10, gap_1000 = log_px - elbo, log_px - means[10], log_px - means[1000]
        assert np.all(gap_elbo > 1.0)
        assert np.mean(gap_1000) < np.mean(gap_10)  # per image IWAE-10 is too noisy to rank
        assert np.all(gap_1000 < 0.02 * gap_elbo + 4 * ses[1000]), (gap_1000, gap_elbo)


def test_exact_posterior_gives_log_px_for_every_sample():
    with jax.enable_x64(True):
        model = linear_gaussian(5, seed=3)
        q = likelihood.GaussianProposal(jnp.asarray(model["post_mean"]), jnp.log(jnp.asarray(model["post_var"])))
        f = linear_decoder(model["w"], model["b"])
        for seed in range(4):  # every draw, not only on average
            one = likelihood.iwae_bound(jax.random.key(seed), model["x"], q, f, k=1)
            np.testing.assert_allclose(one, model["log_px"], rtol=1e-10)
        several = likelihood.iwae_bound(jax.random.key(9), model["x"], q, f, k=7, chunk_size=3)
        np.testing.assert_allclose(several, model["log_px"], rtol=1e-10)


def test_ex_post_estimator_with_the_prior_as_density_equals_iwae_and_approaches_log_px():
    with jax.enable_x64(True):
        train, test = linear_gaussian(64, seed=4), linear_gaussian(6, seed=5)
        f = linear_decoder(train["w"], train["b"])
        # a deterministic "encoder": the posterior mean, slightly off
        codes = lambda model: jnp.asarray(model["post_mean"] * 0.9)
        prior = standard_normal_mixture(jnp.float64)
        grid = [0.01, 0.03, 0.1, 0.3, 1.0]
        scale, grid_means = likelihood.select_proposal_scale(
            jax.random.key(0), train["x"], codes(train), prior.log_prob, f, grid, k=50
        )
        independent = [
            np.mean(
                likelihood.importance_sampled_log_likelihood(
                    jax.random.key(0),
                    train["x"],
                    likelihood.gaussian_proposal(codes(train), s),
                    prior.log_prob,
                    f,
                    k=50,
                )
            )
            for s in grid
        ]
        np.testing.assert_allclose(grid_means, independent, rtol=1e-10)
        assert float(scale) == grid[int(np.argmax(independent))]
        # the posterior stds are 0.24 and 0.58: an isotropic proposal narrower than the wide direction
        # misses mass there (heavy weights), so the tiny scales must lose clearly
        assert float(scale) in (0.3, 1.0)
        assert float(grid_means[0]) < float(np.max(grid_means)) - 1.0

        q = likelihood.gaussian_proposal(codes(test), float(scale))
        key = jax.random.key(1)
        np.testing.assert_allclose(
            likelihood.ex_post_log_likelihood(key, test["x"], q, prior, f, k=30),
            likelihood.iwae_bound(key, test["x"], q, f, k=30),
            rtol=1e-12,
        )
        estimate, se = replicate(lambda k: likelihood.ex_post_log_likelihood(k, test["x"], q, prior, f, k=5000), 5, 2)
        assert np.all(np.abs(estimate - test["log_px"]) < 4 * se + 0.01), (estimate, test["log_px"], se)


# --------------------------------------------------------------------------- tiny categorical model
# 2 variables x 3 classes, a fixed affine decoder from the one-hot code to 8 Bernoulli pixel logits.

N_VARS, N_CLASSES, PIXELS = 2, 3, 8
ALL_CODES = np.array(list(itertools.product(range(N_CLASSES), repeat=N_VARS)), dtype=np.int32)  # (9, 2)


def categorical_model(seed=0, n_images=4):
    rng = np.random.default_rng(seed)
    weights = 2.0 * rng.normal(size=(N_VARS * N_CLASSES, PIXELS))
    bias = rng.normal(size=PIXELS)

    def logits_of(codes):
        one_hot = jax.nn.one_hot(codes, N_CLASSES).reshape(codes.shape[0], -1)
        return (one_hot @ jnp.asarray(weights, one_hot.dtype) + jnp.asarray(bias, one_hot.dtype)).reshape(
            -1, PIXELS, 1, 1
        )

    def log_px_given_z(x, codes):
        return likelihood.bernoulli_log_likelihood(x, logits_of(codes))

    x = (rng.uniform(size=(n_images, PIXELS, 1, 1)) < 0.5).astype(np.float32)
    encoder_logits = 1.5 * rng.normal(size=(n_images, N_VARS, N_CLASSES)).astype(np.float32)
    # exact log p(x | c) for every image and code, written without jaxrae: sum of log Bernoulli
    p = 1.0 / (1.0 + np.exp(-np.asarray(logits_of(jnp.asarray(ALL_CODES)), np.float64)))  # (9, 8, 1, 1)
    xs = x.astype(np.float64)[:, None]
    log_lik = np.sum(xs * np.log(p) + (1 - xs) * np.log1p(-p), axis=(2, 3, 4))  # (B, 9)
    return {"x": jnp.asarray(x), "f": log_px_given_z, "encoder_logits": jnp.asarray(encoder_logits), "log_lik": log_lik}


def proposal_probs_of_all_codes(proposal):
    """q(c | x) for the 9 codes, from the proposal's per-variable probabilities: (B, 9)."""
    probs = np.exp(np.asarray(proposal.log_probs, np.float64))
    return probs[:, 0, ALL_CODES[:, 0]] * probs[:, 1, ALL_CODES[:, 1]]


def delta_method_se(log_joint, q_probs, k):
    """Standard error of log p_hat(x) with k samples: sqrt(Var_q[w / p(x)] / k), exactly."""
    log_px = np.logaddexp.reduce(log_joint, axis=1)
    ratio = np.exp(log_joint - log_px[:, None]) / q_probs
    variance = np.sum(q_probs * ratio**2, axis=1) - 1.0
    return log_px, np.sqrt(variance / k)


def test_categorical_iwae_with_uniform_prior_matches_enumeration():
    model = categorical_model(0)
    q = likelihood.categorical_proposal(model["encoder_logits"])
    log_joint = model["log_lik"] - N_VARS * math.log(N_CLASSES)
    k = 5000
    exact, se = delta_method_se(log_joint, proposal_probs_of_all_codes(q), k)
    estimate = likelihood.iwae_bound(jax.random.key(0), model["x"], q, model["f"], k=k, chunk_size=1024)
    assert np.all(np.abs(np.asarray(estimate) - exact) < 5 * se + 1e-4), (estimate, exact, se)
    # and the bound is not trivially tight: IWAE-1 (the ELBO) is well below log p(x)
    assert np.all(
        exact - np.asarray(likelihood.elbo(jax.random.key(1), model["x"], q, model["f"], n_samples=2000)) > 0.1
    )


def test_categorical_elbo_matches_enumeration():
    model = categorical_model(1)
    q = likelihood.categorical_proposal(model["encoder_logits"])
    q_probs = proposal_probs_of_all_codes(q)
    prior = -N_VARS * math.log(N_CLASSES)
    # ELBO = sum_c q(c) [log p(x|c) + log p(c) - log q(c)], independent of the KL formula used inside
    expected = np.sum(q_probs * (model["log_lik"] + prior - np.log(q_probs)), axis=1)
    n = 4000
    mean_log_lik = np.sum(q_probs * model["log_lik"], axis=1)
    se = np.sqrt(np.sum(q_probs * (model["log_lik"] - mean_log_lik[:, None]) ** 2, axis=1) / n)
    estimate = likelihood.elbo(jax.random.key(2), model["x"], q, model["f"], n_samples=n, chunk_size=1000)
    assert np.all(np.abs(np.asarray(estimate) - expected) < 5 * se + 1e-4), (estimate, expected, se)


def test_ex_post_categorical_mixture_estimate_matches_enumeration():
    model = categorical_model(2)
    rng = np.random.default_rng(7)
    raw = rng.normal(size=(2, N_VARS, N_CLASSES))
    mixture = density.CategoricalMixture(
        weights=jnp.asarray([0.3, 0.7]),
        log_class_probs=jnp.asarray(raw - np.logaddexp.reduce(raw, axis=-1, keepdims=True), jnp.float32),
        lower_bound=jnp.asarray(0.0),
        n_iter=jnp.asarray(0),
        converged=jnp.asarray(True),
    )
    log_prior = np.asarray(mixture.log_prob(jnp.asarray(ALL_CODES)), np.float64)
    # the mixture's log-probabilities, enumerated by hand
    by_hand = np.log(
        0.3 * np.exp(np.sum(np.asarray(mixture.log_class_probs[0])[[0, 1], ALL_CODES], axis=1))
        + 0.7 * np.exp(np.sum(np.asarray(mixture.log_class_probs[1])[[0, 1], ALL_CODES], axis=1))
    )
    np.testing.assert_allclose(log_prior, by_hand, rtol=1e-5)
    # a deterministic encoder's saturated logits, widened by temperature and uniform mass
    q = likelihood.categorical_proposal(8.0 * model["encoder_logits"], temperature=4.0, uniform_weight=0.1)
    log_joint = model["log_lik"] + log_prior[None]
    k = 5000
    exact, se = delta_method_se(log_joint, proposal_probs_of_all_codes(q), k)
    estimate = likelihood.ex_post_log_likelihood(
        jax.random.key(3), model["x"], q, mixture, model["f"], k=k, chunk_size=2000
    )
    assert np.all(np.abs(np.asarray(estimate) - exact) < 5 * se + 1e-4), (estimate, exact, se)


def test_categorical_proposal_mixes_tempered_softmax_with_uniform_over_the_support():
    logits = np.array([[[2.0, -1.0, 0.5, -np.inf]]], np.float32)  # the 4th class is padding
    q = likelihood.categorical_proposal(jnp.asarray(logits), temperature=2.0, uniform_weight=0.2)
    tempered = np.exp(logits[0, 0, :3] / 2.0)
    expected = 0.8 * tempered / tempered.sum() + 0.2 / 3
    np.testing.assert_allclose(np.exp(np.asarray(q.log_probs))[0, 0], np.append(expected, 0.0), rtol=1e-6)
    plain = likelihood.categorical_proposal(jnp.asarray(logits))
    np.testing.assert_allclose(
        np.exp(np.asarray(plain.log_probs))[0, 0, :3],
        np.exp(logits[0, 0, :3]) / np.exp(logits[0, 0, :3]).sum(),
        rtol=1e-6,
    )


# --------------------------------------------------------------------------- decoder likelihoods


def test_bce_with_logits_equals_the_direct_formula_where_finite():
    with jax.enable_x64(True):
        logits = jnp.linspace(-10.0, 10.0, 41, dtype=jnp.float64)
        for target in (0.0, 0.3, 1.0):
            p = 1.0 / (1.0 + np.exp(-np.asarray(logits)))
            direct = -(target * np.log(p) + (1 - target) * np.log(1 - p))
            np.testing.assert_allclose(losses.binary_cross_entropy_with_logits(target, logits), direct, rtol=1e-10)


def test_bce_with_logits_stays_finite_with_finite_gradients_when_saturated():
    logits = jnp.array([100.0, -100.0, 100.0, -100.0], jnp.float32)
    target = jnp.array([0.0, 1.0, 1.0, 0.0], jnp.float32)
    values = losses.binary_cross_entropy_with_logits(target, logits)
    np.testing.assert_allclose(values, [100.0, 100.0, 0.0, 0.0], atol=1e-6)
    grads = jax.grad(lambda lg: jnp.sum(losses.binary_cross_entropy_with_logits(target, lg)))(logits)
    np.testing.assert_allclose(grads, [1.0, -1.0, 0.0, 0.0], atol=1e-6)  # sigmoid(l) - x
    image_logits = logits.reshape(1, 2, 2, 1)
    image = target.reshape(1, 2, 2, 1)
    assert float(losses.bernoulli_reconstruction_loss(image, image_logits)) == pytest.approx(200.0)
    grad = jax.grad(lambda lg: losses.bernoulli_reconstruction_loss(image, lg))(image_logits)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_bernoulli_reconstruction_loss_sums_pixels_and_averages_images():
    rng = np.random.default_rng(0)
    x = (rng.uniform(size=(3, 4, 4, 2)) < 0.5).astype(np.float64)
    logits = rng.normal(size=(3, 4, 4, 2))
    p = 1 / (1 + np.exp(-logits))
    per_image = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2, 3))
    assert float(losses.bernoulli_reconstruction_loss(jnp.asarray(x), jnp.asarray(logits))) == pytest.approx(
        per_image.mean(), rel=1e-5
    )
    np.testing.assert_allclose(
        likelihood.bernoulli_log_likelihood(jnp.asarray(x), jnp.asarray(logits)), -per_image, rtol=1e-5
    )


def test_gaussian_log_likelihood_and_the_variance_of_the_squared_error():
    rng = np.random.default_rng(1)
    x, x_hat = rng.uniform(size=(4, 3, 3, 1)), rng.uniform(size=(4, 3, 3, 1))
    for variance in (0.5, 0.02):
        expected = stats.norm(loc=x_hat, scale=math.sqrt(variance)).logpdf(x).sum(axis=(1, 2, 3))
        np.testing.assert_allclose(
            likelihood.gaussian_log_likelihood(jnp.asarray(x), jnp.asarray(x_hat), variance), expected, rtol=1e-5
        )
    # ||x - x_hat||^2 = -log N(x; x_hat, I/2) - (D/2) log pi, averaged over the batch
    n_dims = 9
    nll_half = -float(np.mean(likelihood.gaussian_log_likelihood(jnp.asarray(x), jnp.asarray(x_hat), 0.5)))
    assert float(losses.reconstruction_loss(jnp.asarray(x), jnp.asarray(x_hat))) == pytest.approx(
        nll_half - 0.5 * n_dims * math.log(math.pi), rel=1e-5
    )


def test_fit_observation_variance_maximizes_the_likelihood():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        x, x_hat = jnp.asarray(rng.uniform(size=(6, 4, 4, 1))), jnp.asarray(rng.uniform(size=(6, 4, 4, 1)))
        fitted = likelihood.fit_observation_variance(x, x_hat)
        assert float(fitted) == pytest.approx(float(np.mean((np.asarray(x) - np.asarray(x_hat)) ** 2)))
        total = lambda v: jnp.sum(likelihood.gaussian_log_likelihood(x, x_hat, v))
        assert abs(float(jax.grad(total)(fitted))) < 1e-8
        assert float(total(fitted)) > float(total(1.1 * fitted)) and float(total(fitted)) > float(total(0.9 * fitted))


def test_nll_units_convert_nats_to_bits_per_dimension():
    units = likelihood.nll_units(jnp.array([-784 * math.log(2) * 0.25, -100.0]), 784)
    np.testing.assert_allclose(units.nats, [784 * math.log(2) * 0.25, 100.0], rtol=1e-6)
    np.testing.assert_allclose(units.bits_per_dim, [0.25, 100.0 / (784 * math.log(2))], rtol=1e-6)


# --------------------------------------------------------------------------- chunks and runs


def test_chunked_evaluation_equals_unchunked():
    model = linear_gaussian(3, seed=6)
    f = linear_decoder(model["w"].astype(np.float32), model["b"].astype(np.float32))
    x = jnp.asarray(model["x"], jnp.float32)
    q = likelihood.GaussianProposal(
        jnp.asarray(model["post_mean"] + 0.1, jnp.float32), jnp.float32(-2.0)
    )  # CV-VAE: scalar
    key = jax.random.key(4)
    whole = likelihood.iwae_bound(key, x, q, f, k=50, chunk_size=50)
    for chunk in (1, 7, 64):
        chex.assert_trees_all_close(likelihood.iwae_bound(key, x, q, f, k=50, chunk_size=chunk), whole, rtol=1e-6)
        chex.assert_trees_all_close(
            likelihood.elbo(key, x, q, f, n_samples=50, chunk_size=chunk),
            likelihood.elbo(key, x, q, f, n_samples=50, chunk_size=50),
            rtol=1e-6,
        )
    cat = categorical_model(3)
    qc = likelihood.categorical_proposal(cat["encoder_logits"], uniform_weight=0.05)
    chex.assert_trees_all_close(
        likelihood.iwae_bound(key, cat["x"], qc, cat["f"], k=40, chunk_size=6),
        likelihood.iwae_bound(key, cat["x"], qc, cat["f"], k=40, chunk_size=40),
        rtol=1e-6,
    )


def test_vmap_over_three_runs_equals_three_separate_calls():
    runs = [linear_gaussian(4, seed=10, model_seed=r) for r in range(3)]
    x = jnp.asarray(runs[0]["x"], jnp.float32)  # the same test images for every run
    ws = jnp.asarray(np.stack([r["w"] for r in runs]), jnp.float32)
    bs = jnp.asarray(np.stack([r["b"] for r in runs]), jnp.float32)
    means = jnp.asarray(np.stack([r["post_mean"] for r in runs]), jnp.float32)
    log_vars = jnp.log(jnp.asarray(np.stack([r["post_var"] for r in runs]), jnp.float32))
    keys = jax.random.split(jax.random.key(5), 3)
    gmms = jax.tree.map(lambda leaf: jnp.stack([leaf] * 3), standard_normal_mixture())
    gmms = gmms.replace(means=gmms.means + jnp.arange(3.0)[:, None, None] * 0.1)  # a different density per run

    def one_run(w, b, mean, log_var, gmm, key):
        f = lambda xi, z: likelihood.gaussian_log_likelihood(xi, (z @ w.T + b).reshape(-1, D, 1, 1), S2)
        q = likelihood.GaussianProposal(mean, log_var)
        return (
            likelihood.iwae_bound(key, x, q, f, k=30, chunk_size=8),
            likelihood.elbo(key, x, q, f, n_samples=3),
            likelihood.ex_post_log_likelihood(
                key, x, likelihood.GaussianProposal(mean, log_var + 0.5), gmm, f, k=30, chunk_size=8
            ),
        )

    batched = jax.jit(jax.vmap(one_run))(ws, bs, means, log_vars, gmms, keys)
    for r in range(3):

        def row(tree, r=r):
            return jax.tree.map(lambda leaf: leaf[r], tree)

        single = one_run(ws[r], bs[r], means[r], log_vars[r], row(gmms), keys[r])
        chex.assert_trees_all_close(row(batched), single, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- bad input


def _gaussian_args():
    x = jnp.zeros((2, D, 1, 1))
    f = linear_decoder(np.ones((D, LATENT)), np.zeros(D))
    return x, f, likelihood.GaussianProposal(jnp.zeros((2, LATENT)), jnp.zeros((2, LATENT)))


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda x, f, q: likelihood.iwae_bound(jax.random.key(0), x, q, f, k=0), "k=0"),
        (lambda x, f, q: likelihood.iwae_bound(jax.random.key(0), x, q, f, k=2.5), "k=2.5"),
        (lambda x, f, q: likelihood.iwae_bound(jax.random.key(0), x, q, f, k=5, chunk_size=0), "chunk_size=0"),
        (lambda x, f, q: likelihood.elbo(jax.random.key(0), x, q, f, n_samples=0), "n_samples=0"),
        (lambda x, f, q: likelihood.iwae_bound(jax.random.key(0), x[:1], q, f, k=5), "proposal.mean="),
        (
            lambda x, f, q: likelihood.iwae_bound(jax.random.key(0), x, q._replace(log_var=jnp.zeros((3,))), f, k=5),
            "proposal.log_var=",
        ),
        (
            lambda x, f, q: likelihood.iwae_bound(
                jax.random.key(0), x, likelihood.CategoricalProposal(jnp.zeros((2, 3))), f, k=5
            ),
            "proposal.log_probs=",
        ),
        (lambda x, f, q: likelihood.iwae_bound(jax.random.key(0), x, (q.mean, q.log_var), f, k=5), "proposal="),
        (lambda x, f, q: likelihood.ex_post_log_likelihood(jax.random.key(0), x, q, "gmm", f, k=5), "density="),
        (
            lambda x, f, q: likelihood.ex_post_log_likelihood(
                jax.random.key(0),
                x,
                likelihood.CategoricalProposal(jnp.zeros((2, 2, 3))),
                standard_normal_mixture(),
                f,
                k=5,
            ),
            "proposal=",
        ),
        (
            lambda x, f, q: likelihood.ex_post_log_likelihood(
                jax.random.key(0),
                x,
                likelihood.GaussianProposal(jnp.zeros((2, 3)), 0.0),
                standard_normal_mixture(),
                f,
                k=5,
            ),
            "proposal.mean=",
        ),
        (lambda x, f, q: likelihood.categorical_proposal(jnp.zeros((2, 2, 3)), temperature=0.0), "temperature=0.0"),
        (
            lambda x, f, q: likelihood.categorical_proposal(jnp.zeros((2, 2, 3)), uniform_weight=1.0),
            "uniform_weight=1.0",
        ),
        (lambda x, f, q: likelihood.gaussian_proposal(jnp.zeros((2, LATENT)), -1.0), "scale=-1.0"),
        (
            lambda x, f, q: likelihood.select_proposal_scale(
                jax.random.key(0), x, q.mean, likelihood.standard_normal_log_prob, f, []
            ),
            "scales=",
        ),
        (lambda x, f, q: likelihood.nll_units(jnp.zeros(2), 0), "n_dims=0"),
    ],
)
def test_bad_input_raises_config_error_naming_the_field(call, field):
    x, f, q = _gaussian_args()
    with pytest.raises(ConfigError, match="^" + field.replace(".", r"\.").replace("[", r"\[")):
        call(x, f, q)


def test_compiled_memory_is_set_by_the_chunk_not_by_k():
    cat = categorical_model(4)
    q = likelihood.categorical_proposal(cat["encoder_logits"], uniform_weight=0.05)

    def temp_bytes(k, chunk_size):
        program = jax.jit(lambda key: likelihood.iwae_bound(key, cat["x"], q, cat["f"], k=k, chunk_size=chunk_size))
        analysis = program.lower(jax.random.key(0)).compile().memory_analysis()
        if analysis is None:
            pytest.skip("this backend reports no memory analysis")
        return analysis.temp_size_in_bytes

    small_k, large_k, unchunked = temp_bytes(64, 16), temp_bytes(4096, 16), temp_bytes(4096, 4096)
    # the same chunk: the same buffers whatever k is (here 8.8 kB for k = 64, 9.8 kB for k = 4096)
    assert large_k <= 2 * small_k
    assert unchunked > 20 * large_k  # one chunk of all 4096 samples needs them all at once (2 MB)
