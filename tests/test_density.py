"""Tests of jaxrae.density: EM against scikit-learn, planted mixtures, many seeds, degenerate input.

Compilation dominates the run time on CPU, so fits that several tests inspect are module-level
fixtures, and data shapes repeat wherever a test allows it (one shape, one compile).
"""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from jaxrae.density import (
    COVARIANCE_FLOOR_FACTOR,
    MAX_MIXTURE_COMPONENTS,
    REG_COVAR,
    CategoricalMixture,
    GaussianMixture,
    check_mixture_size,
    collapsed_directions,
    fit_categorical_mixture,
    fit_gaussian,
    fit_gmm,
)
from jaxrae.errors import ConfigError, DataError

N_COMPONENTS = 3


def planted_gaussian_mixture(seed, n=600, dim=3, n_components=N_COMPONENTS, separation=4.0):
    """Points of a random mixture with well-separated means and random full covariances."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=separation, size=(n_components, dim))
    mixing = rng.normal(size=(n_components, dim, dim)) / np.sqrt(dim) + 0.5 * np.eye(dim)
    component = rng.choice(n_components, size=n, p=rng.dirichlet(np.full(n_components, 5.0)))
    noise = rng.normal(size=(n, dim))
    return means[component] + np.einsum("nd,nde->ne", noise, mixing[component])


def sklearn_initial_parameters(x, means_init, covariance, reg_covar):
    """What fit_gmm starts from given means_init (hard labels of the nearest mean), in numpy.

    Passed to scikit-learn as weights_init / precisions_init, both fits start from the same
    parameters, so any difference afterwards comes from the EM iterations themselves.
    """
    n_components = means_init.shape[0]
    labels = np.argmin(((x[:, None, :] - means_init[None]) ** 2).sum(-1), axis=1)
    resp = np.eye(n_components)[labels]
    counts = resp.sum(0) + 10 * np.finfo(x.dtype).eps
    centroids = resp.T @ x / counts[:, None]
    if covariance == "full":
        covariances = np.stack(
            [
                (resp[:, k, None] * (x - centroids[k])).T @ (x - centroids[k]) / counts[k]
                + reg_covar * np.eye(x.shape[1])
                for k in range(n_components)
            ]
        )
        precisions = np.linalg.inv(covariances)
    else:
        variances = (resp.T @ (x - 0) ** 2) / counts[:, None] - centroids**2 + reg_covar
        precisions = 1.0 / (variances.mean(1) if covariance == "spherical" else variances)
    return counts / counts.sum(), precisions


def mixture_moments(mixture: GaussianMixture):
    """Mean and covariance of the whole mixture: E[x] = sum w mu, Cov = sum w (S + mu mu^T) - m m^T."""
    weights, means = np.asarray(mixture.weights), np.asarray(mixture.means)
    covariances = np.asarray(mixture.covariance_matrices())
    mean = weights @ means
    second = np.einsum("k,kde->de", weights, covariances + means[:, :, None] * means[:, None, :])
    return mean, second - np.outer(mean, mean)


@pytest.fixture(scope="module")
def data32():
    return planted_gaussian_mixture(seed=0).astype(np.float32)


@pytest.fixture(scope="module")
def gmm32(data32):
    return fit_gmm(jax.random.key(0), data32, N_COMPONENTS)


# ---------------------------------------------------------------------------------------------
# Gaussian mixture against scikit-learn
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("covariance", ["full", "diag", "spherical"])
def test_same_start_as_sklearn_gives_same_per_sample_log_likelihood(covariance):
    x = planted_gaussian_mixture(seed=1, n=300, separation=2.0)
    means_init = x[np.random.default_rng(1).choice(len(x), N_COMPONENTS, replace=False)]
    weights_init, precisions_init = sklearn_initial_parameters(x, means_init, covariance, 1e-6)
    reference = SklearnGaussianMixture(
        N_COMPONENTS,
        covariance_type=covariance,
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        weights_init=weights_init,
        means_init=means_init,
        precisions_init=precisions_init,
    ).fit(x)
    # float64 only inside this block: jax's x64 flag is a context, so other tests stay float32.
    with jax.enable_x64(True):
        mixture = fit_gmm(
            jax.random.key(0), jnp.asarray(x), N_COMPONENTS, covariance, means_init=jnp.asarray(means_init)
        )
        assert mixture.means.dtype == jnp.float64
        log_likelihood = np.asarray(mixture.log_prob(jnp.asarray(x)))
    assert int(mixture.n_iter) == reference.n_iter_ > 1
    assert bool(mixture.converged) == reference.converged_
    np.testing.assert_allclose(log_likelihood, reference.score_samples(x), rtol=0, atol=1e-4)
    np.testing.assert_allclose(float(mixture.lower_bound), reference.lower_bound_, atol=1e-6)


def test_kmeanspp_init_within_one_percent_of_sklearn_best(data32, gmm32):
    x64 = data32.astype(np.float64)
    best_sklearn = SklearnGaussianMixture(N_COMPONENTS, n_init=5, random_state=0).fit(x64)
    ours = float(jnp.mean(gmm32.log_prob(data32)))
    reference = best_sklearn.score(x64)
    assert ours >= reference - 0.01 * abs(reference), (ours, reference)
    assert bool(gmm32.converged)


def test_fit_gaussian_is_the_maximum_likelihood_gaussian(data32):
    mixture = fit_gaussian(data32, reg_covar=1e-6)
    x = data32.astype(np.float64)
    mean, covariance = x.mean(0), np.cov(x.T, bias=True) + 1e-6 * np.eye(x.shape[1])
    np.testing.assert_allclose(np.asarray(mixture.means[0]), mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(mixture.covariance_matrices()[0]), covariance, rtol=1e-4, atol=1e-4)
    expected = multivariate_normal(mean, covariance).logpdf(x)
    np.testing.assert_allclose(np.asarray(mixture.log_prob(data32)), expected, atol=1e-3)
    assert mixture.n_components == 1 and bool(mixture.converged)


# ---------------------------------------------------------------------------------------------
# Many seeds
# ---------------------------------------------------------------------------------------------


def test_vmapped_fit_of_four_seeds_equals_four_single_fits():
    # Different data per seed, so the seeds stop after different numbers of iterations and the
    # frozen-after-convergence property is actually exercised. In float64, because batched and
    # single matmuls round differently and EM carries float32 rounding to ~1e-5 in the weights.
    xs = np.stack([planted_gaussian_mixture(seed=10 + s, n=200, dim=2, separation=1.5) for s in range(4)])
    with jax.enable_x64(True):
        # Raw uint32 keys here (shape (4, 2)); the other tests use typed keys: both are accepted.
        keys = jax.random.split(jax.random.PRNGKey(3), 4)
        stacked = fit_gmm(keys, xs, N_COMPONENTS)
        singles = [fit_gmm(keys[s], xs[s], N_COMPONENTS) for s in range(4)]
        # One key for a stacked fit is split into one key per seed.
        from_one_key = fit_gmm(jax.random.PRNGKey(3), xs, N_COMPONENTS)
    assert stacked.means.shape == (4, N_COMPONENTS, 2)
    assert len(set(np.asarray(stacked.n_iter).tolist())) > 1, "seeds should stop at different steps"
    for s, single in enumerate(singles):
        assert int(single.n_iter) == int(stacked.n_iter[s])
        for field in ("weights", "means", "precisions_cholesky", "lower_bound"):
            np.testing.assert_allclose(
                np.asarray(getattr(stacked, field)[s]),
                np.asarray(getattr(single, field)),
                rtol=1e-9,
                atol=1e-9,
                err_msg=field,
            )
    np.testing.assert_array_equal(np.asarray(from_one_key.means), np.asarray(stacked.means))


def test_mixture_is_a_pytree_usable_under_jit_and_vmap(gmm32, data32):
    stacked = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), gmm32)
    per_seed = jax.jit(jax.vmap(lambda mixture, x: mixture.log_prob(x)))(stacked, data32[None].repeat(2, 0))
    assert per_seed.shape == (2, len(data32))
    np.testing.assert_allclose(np.asarray(per_seed[1]), np.asarray(gmm32.log_prob(data32)), rtol=1e-5, atol=1e-5)


def test_random_init_finds_the_same_optimum(data32, gmm32):
    mixture = fit_gmm(jax.random.key(1), data32, N_COMPONENTS, init="random", n_init=2)
    np.testing.assert_allclose(float(mixture.lower_bound), float(gmm32.lower_bound), rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def test_gmm_samples_have_the_fitted_moments(gmm32):
    samples = np.asarray(gmm32.sample(jax.random.key(1), 20_000), dtype=np.float64)
    assert samples.shape == (20_000, 3)
    mean, covariance = mixture_moments(gmm32)
    scale = np.sqrt(np.diag(covariance))
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.05 * scale.max())
    np.testing.assert_allclose(np.cov(samples.T, bias=True), covariance, atol=0.05 * scale.max() ** 2)


# ---------------------------------------------------------------------------------------------
# Mixture of categoricals
# ---------------------------------------------------------------------------------------------

N_VARS, N_CLASSES, N_LATENT = 8, 4, 3


@pytest.fixture(scope="module")
def planted_categorical():
    """A latent class model with peaked class distributions, and train/test codes from it."""
    rng = np.random.default_rng(0)
    weights = np.array([0.5, 0.3, 0.2])
    class_probs = rng.dirichlet(np.full(N_CLASSES, 0.3), size=(N_LATENT, N_VARS))
    class_probs = 0.9 * class_probs + 0.1 / N_CLASSES  # no exact zeros in the truth either

    def draw(n):
        component = rng.choice(N_LATENT, size=n, p=weights)
        cumulative = class_probs[component].cumsum(-1)  # (n, vars, classes)
        return (rng.random((n, N_VARS, 1)) > cumulative).sum(-1).astype(np.int32)

    def true_log_prob(codes):
        picked = np.log(class_probs[:, np.arange(N_VARS), codes])  # (c, n, vars)
        joint = np.log(weights)[:, None] + picked.sum(-1)
        top = joint.max(0)
        return top + np.log(np.exp(joint - top).sum(0))

    return draw(4000), draw(2000), true_log_prob


@pytest.fixture(scope="module")
def categorical_fit(planted_categorical):
    train, _, _ = planted_categorical
    return fit_categorical_mixture(jax.random.key(0), train, N_CLASSES, N_LATENT, alpha=0.1, n_init=3)


def test_planted_categorical_mixture_is_recovered(planted_categorical, categorical_fit):
    _, test, true_log_prob = planted_categorical
    held_out = float(jnp.mean(categorical_fit.log_prob(test)))
    truth = float(np.mean(true_log_prob(test)))
    assert abs(held_out - truth) < 0.03, (held_out, truth)
    np.testing.assert_allclose(np.sort(np.asarray(categorical_fit.weights)), [0.2, 0.3, 0.5], atol=0.05)
    assert bool(categorical_fit.converged)


def test_categorical_samples_have_the_fitted_marginals(categorical_fit):
    samples = np.asarray(categorical_fit.sample(jax.random.key(1), 20_000))
    assert samples.shape == (20_000, N_VARS) and samples.min() >= 0 and samples.max() < N_CLASSES
    empirical = np.stack([np.bincount(samples[:, v], minlength=N_CLASSES) for v in range(N_VARS)])
    model = np.einsum("c,cvk->vk", np.asarray(categorical_fit.weights), np.asarray(categorical_fit.class_probs))
    np.testing.assert_allclose(empirical / len(samples), model, atol=0.02)
    assert isinstance(categorical_fit, CategoricalMixture)


def test_categorical_vmapped_seeds_equal_single_fits(planted_categorical):
    train = planted_categorical[0][:500]
    codes = np.stack([train, train[::-1], np.roll(train, 1, axis=1)])
    keys = jax.random.split(jax.random.key(5), 3)
    stacked = fit_categorical_mixture(keys, codes, N_CLASSES, N_LATENT)
    for s in range(3):
        single = fit_categorical_mixture(keys[s], codes[s], N_CLASSES, N_LATENT)
        assert int(single.n_iter) == int(stacked.n_iter[s])
        np.testing.assert_allclose(
            np.asarray(stacked.log_class_probs[s]), np.asarray(single.log_class_probs), rtol=1e-5, atol=1e-5
        )


def test_categorical_degenerate_codes_give_finite_fits():
    identical = np.zeros((500, N_VARS), np.int32)  # the shape of the test above: no new compile
    two_distinct = np.arange(N_LATENT * N_VARS, dtype=np.int32).reshape(N_LATENT, N_VARS) % 2
    for codes in (identical, two_distinct):
        mixture = fit_categorical_mixture(jax.random.key(0), codes, N_CLASSES, N_LATENT)
        assert np.all(np.isfinite(np.asarray(mixture.log_class_probs)))
        assert np.all(np.isfinite(np.asarray(mixture.log_prob(codes))))
        # The Dirichlet pseudo-counts keep unseen classes possible.
        assert np.all(np.isfinite(np.asarray(mixture.log_prob(np.full_like(codes, 3)))))


# ---------------------------------------------------------------------------------------------
# Degenerate and invalid input
# ---------------------------------------------------------------------------------------------


def degenerate_inputs():
    rng = np.random.default_rng(0)
    with_constant_column = rng.normal(size=(30, 3))
    with_constant_column[:, 1] = 7.0
    return {
        "duplicate points": np.tile([[1.0, -2.0, 3.0]], (30, 1)),
        "constant column": with_constant_column,
        "as many points as components": rng.normal(size=(N_COMPONENTS, 3)),
        "d=1": rng.normal(size=(30, 1)),
        "far from the origin": 1e4 + rng.normal(size=(30, 3)),
    }


@pytest.mark.parametrize("name", list(degenerate_inputs()))
def test_degenerate_input_gives_a_finite_regularized_fit(name):
    x = degenerate_inputs()[name].astype(np.float32)
    mixture = fit_gmm(jax.random.key(0), x, N_COMPONENTS)
    for field in ("weights", "means", "precisions_cholesky", "lower_bound"):
        assert np.all(np.isfinite(np.asarray(getattr(mixture, field)))), field
    assert np.all(np.isfinite(np.asarray(mixture.log_prob(x))))
    assert np.all(np.isfinite(np.asarray(mixture.sample(jax.random.key(1), 5))))
    np.testing.assert_allclose(float(jnp.sum(mixture.weights)), 1.0, rtol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_a_data_error(bad):
    x = np.zeros((10, 2), np.float32)
    x[3, 1] = bad
    with pytest.raises(DataError, match=r"NaN|infinite"):
        fit_gmm(jax.random.key(0), x, 2)
    with pytest.raises(DataError, match=r"x\[3, 1\]=(nan|inf|-inf) is invalid"):
        fit_gaussian(x)


@pytest.mark.parametrize(
    "x", [np.zeros(5), np.zeros((2, 2, 2, 2)), np.zeros((0, 3))], ids=["rank 1", "rank 4", "empty"]
)
def test_badly_shaped_input_is_a_data_error(x):
    with pytest.raises(DataError):
        fit_gmm(jax.random.key(0), x, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_components": 0},
        {"covariance": "tied"},
        {"covariance": "bogus"},
        {"n_init": 0},
        {"max_iter": 0},
        {"reg_covar": -1.0},
        {"tol": float("nan")},
        {"init": "spectral"},
        {"n_components": 2.5},
    ],
)
def test_bad_arguments_are_config_errors(kwargs):
    ((field, value),) = kwargs.items()
    with pytest.raises(ConfigError, match=rf"^{field}={value!r} is invalid: "):
        fit_gmm(jax.random.key(0), np.zeros((10, 2), np.float32), **kwargs)


def test_bad_means_init_and_codes_are_rejected():
    x = np.zeros((10, 2), np.float32)
    with pytest.raises(DataError, match="means_init"):
        fit_gmm(jax.random.key(0), x, 3, means_init=np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="n_init"):
        fit_gmm(jax.random.key(0), x, 2, means_init=np.zeros((2, 2)), n_init=2)
    with pytest.raises(DataError, match="range"):
        fit_categorical_mixture(jax.random.key(0), np.full((5, 2), 4), n_classes=4)
    with pytest.raises(DataError, match="integer"):
        fit_categorical_mixture(jax.random.key(0), np.zeros((5, 2)), n_classes=4)
    with pytest.raises(ConfigError, match="alpha"):
        fit_categorical_mixture(jax.random.key(0), np.zeros((5, 2), int), 4, alpha=0.0)
    with pytest.raises(ConfigError, match="key"):
        fit_gmm(jax.random.split(jax.random.key(0), 3), np.zeros((2, 10, 2)), 2)


# ---------------------------------------------------------------------------------------------
# Mixture size against the data; codes at the covariance floor
# ---------------------------------------------------------------------------------------------


def test_more_components_than_points_is_a_config_error_naming_the_bound():
    # 10 points, 50 components: EM used to report a "converged" fit with empty components.
    x = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
    with pytest.raises(ConfigError, match=r"^n_components=50 is invalid: more mixture components than the 10 points"):
        fit_gmm(jax.random.key(0), x, 50)
    with pytest.raises(ConfigError, match=r"^n_components=11 is invalid: .* use at most 10 components"):
        fit_gmm(jax.random.key(0), np.stack([x, x]), 11)  # stacked seeds: points per seed count
    with pytest.raises(ConfigError, match=r"^n_components=4 is invalid: more mixture components than the 3 points"):
        fit_categorical_mixture(jax.random.key(0), np.zeros((3, N_VARS), np.int32), N_CLASSES, 4)


def test_check_mixture_size_bounds():
    check_mixture_size(10, 10)  # as many components as points is allowed
    check_mixture_size(10**6, MAX_MIXTURE_COMPONENTS)
    # compare --n-components 500 --n-train 200: refused, naming the experiment's field
    with pytest.raises(ConfigError, match=r"^n_components=500 is invalid: .*the 200 points.*at most 200"):
        check_mixture_size(200, 500)
    # compare --n-components 100000 on a large training set: refused by the absolute bound
    with pytest.raises(ConfigError, match=rf"^n_components=100000 is invalid: at most {MAX_MIXTURE_COMPONENTS} "):
        check_mixture_size(10**6, 100000)
    with pytest.raises(ConfigError, match=r"^n_components=0 is invalid: must be an integer >= 1"):
        check_mixture_size(10, 0)
    with pytest.raises(ConfigError, match=r"^\[eval\].n_components=20 is invalid"):
        check_mixture_size(5, 20, field="[eval].n_components")


def test_collapsed_directions_counts_eigenvalues_at_the_floor():
    rng = np.random.default_rng(0)
    # Rotated data with per-direction standard deviations 1, 0.1 and 0: exactly one direction
    # (the last) has variance below the floor, whatever the rotation.
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    latent = rng.normal(size=(400, 3)) * np.array([1.0, 0.1, 0.0])
    x = latent @ rotation.T + 5.0
    assert collapsed_directions(x) == 1
    assert collapsed_directions(np.zeros((50, 4))) == 4  # constant codes: every direction
    assert collapsed_directions(rng.normal(size=(50, 4))) == 0
    # the threshold is COVARIANCE_FLOOR_FACTOR * reg_covar on the variance (ddof 0)
    just_below = np.array([[-1.0], [1.0]]) * np.sqrt(0.99 * COVARIANCE_FLOOR_FACTOR * REG_COVAR)
    just_above = np.array([[-1.0], [1.0]]) * np.sqrt(1.01 * COVARIANCE_FLOOR_FACTOR * REG_COVAR)
    assert collapsed_directions(just_below) == 1 and collapsed_directions(just_above) == 0
    stacked = collapsed_directions(np.stack([x, np.zeros_like(x), rng.normal(size=x.shape)]))
    np.testing.assert_array_equal(stacked, [1, 3, 0])


def test_many_runs_and_starts_fit_without_hanging():
    # jaxlib 0.10.2's CPU runtime hung forever on a GMM's EM vmapped over 18 runs (or 15 runs x 4
    # starts) of this size; fit_gmm maps over runs and starts instead (density._map_over_runs).
    # In a subprocess with a deadline, so a hang fails the test instead of stalling the suite.
    script = textwrap.dedent(
        """
        import jax, numpy as np
        from jaxrae import density
        rng = np.random.default_rng(0)
        x = rng.normal(size=(15, 1438, 16)).astype(np.float32) * rng.uniform(0.1, 3, (15, 1, 16)).astype(np.float32)
        fitted = density.fit_gmm(jax.random.split(jax.random.key(0), 15), x, 10, n_init=4)
        alone = density.fit_gmm(jax.random.split(jax.random.key(0), 15)[7], x[7], 10, n_init=4)
        # Mapped and alone are different program shapes, so rounding may differ and flip EM's
        # stopping test once; the lower bound then differs by at most tol (1e-3, fit_gmm's default).
        np.testing.assert_allclose(fitted.lower_bound[7], alone.lower_bound, rtol=0, atol=1e-3)
        print("fitted", fitted.means.shape)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fitted (15, 10, 16)" in done.stdout
