"""Several initializations find what one misses: planted mixtures where EM from one start lands in
a worse local optimum, and n_init = 4 (jaxrae.evaluate.N_INIT, the evaluation's default) recovers
the planted log-likelihood.

Tolerance from the sample size (Wilks 1938): for n points and a model with p free parameters that
contains the planted one, 2 n (L_hat - L_true) ~ chi2_p asymptotically, where L is the mean
log-likelihood of the sample, L_hat at the maximum likelihood fit and L_true at the planted
parameters. So a fit at the global optimum lies in [L_true - slack, L_true + chi2_{0.999, p} / (2 n)],
the slack covering EM's stopping rule (|change of L| < tol = 1e-3 per iteration) and, for the
categorical mixture, the Dirichlet pseudo-counts of MAP EM. A fit that misses by more than three
times the upper bound sits in another optimum, not in sampling noise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats
from scipy.special import logsumexp

from jaxrae.density import fit_categorical_mixture, fit_gmm
from jaxrae.evaluate import N_INIT

EM_SLACK = 0.01  # 10 x EM's tol on the mean log-likelihood


def wilks_bound(n_params: int, n: int) -> float:
    return float(stats.chi2.ppf(0.999, n_params)) / (2 * n)


def planted_categorical(seed=3, n=2000, n_vars=5, n_classes=3, weights=(0.5, 0.4, 0.1), concentration=0.3):
    rng = np.random.default_rng(seed)
    weights = np.asarray(weights)
    theta = rng.dirichlet(np.full(n_classes, concentration), size=(len(weights), n_vars))
    z = rng.choice(len(weights), n, p=weights)
    codes = np.minimum((rng.random((n, n_vars, 1)) > np.cumsum(theta[z], -1)).sum(-1), n_classes - 1)
    per_class = np.log(theta[:, np.arange(n_vars)[None], codes]).sum(-1).T + np.log(weights)
    n_params = len(weights) - 1 + len(weights) * n_vars * (n_classes - 1)
    return codes, float(logsumexp(per_class, axis=1).mean()), n_params


def planted_gaussian_grid(seed=1, n=1800, sd=0.4, spacing=4.0):
    """Nine round clusters on a 3 x 3 grid: k-means++ occasionally seeds two in one cluster."""
    rng = np.random.default_rng(seed)
    means = np.array([[i * spacing, j * spacing] for i in range(3) for j in range(3)])
    z = rng.choice(9, n)
    x = means[z] + sd * rng.normal(size=(n, 2))
    log_dens = -0.5 * ((x[:, None] - means[None]) ** 2).sum(-1) / sd**2 - 2 * np.log(sd) - np.log(2 * np.pi)
    n_params = 8 + 9 * (2 + 3)  # weights, means, full 2 x 2 covariances
    return x.astype(np.float32), float(logsumexp(log_dens + np.log(1 / 9), axis=1).mean()), n_params


def test_evaluation_default_is_several_inits():
    assert N_INIT >= 4


def test_categorical_mixture_one_init_misses_four_recover():
    codes, planted, n_params = planted_categorical()
    bound = wilks_bound(n_params, len(codes))
    key = jax.random.key(2)  # a start that EM cannot leave (found by search; 10 of 40 starts miss)
    one = fit_categorical_mixture(key, codes, 3, 3)
    assert float(one.log_prob(codes).mean()) < planted - 3 * bound
    keys = jnp.stack([jax.random.key(i) for i in range(8)])
    several = fit_categorical_mixture(keys, np.broadcast_to(codes, (8, *codes.shape)), 3, 3, n_init=N_INIT)
    fitted = np.asarray(jax.vmap(lambda m: m.log_prob(jnp.asarray(codes)).mean())(several))
    assert np.all(fitted >= planted - EM_SLACK), fitted - planted
    assert np.all(fitted <= planted + bound), fitted - planted
    # the kept start is the best of its n_init: its lower bound is what the fit reports
    np.testing.assert_allclose(np.asarray(several.lower_bound), fitted, atol=EM_SLACK)


def test_gmm_one_init_misses_four_recover():
    x, planted, n_params = planted_gaussian_grid()
    bound = wilks_bound(n_params, len(x))
    key = jax.random.split(jax.random.key(0), 64)[7]  # k-means++ seeds two centres in one cluster (1 of 64 starts)
    one = fit_gmm(key, x, 9)
    assert float(one.log_prob(x).mean()) < planted - 3 * bound
    several = fit_gmm(key, x, 9, n_init=N_INIT)
    fitted = float(several.log_prob(x).mean())
    assert planted - EM_SLACK <= fitted <= planted + bound, fitted - planted
