"""Ex-post densities in JAX: Gaussian mixtures and mixtures of categoricals, fitted by EM.

A regularized autoencoder has no prior to sample from. Ghosh et al. (2020, "From Variational to
Deterministic Autoencoders", sec. 4) fit a density on the training codes *after* training and
sample from it: a 10-component full-covariance Gaussian mixture for continuous codes. This module
does that in JAX, so a fit is jit-compiled, runs on the accelerator, and fits one mixture per seed
in one vmapped call. Its discrete counterpart is a mixture of products of categoricals (a latent
class model) for categorical codes.

Public API
----------
fit_gmm(key, x, n_components, covariance, ...)              -> GaussianMixture
fit_gaussian(x, reg_covar)                                   -> GaussianMixture (one component)
fit_categorical_mixture(key, codes, n_classes, n_components) -> CategoricalMixture
check_mixture_size(n_points, n_components)                  -> None, or ConfigError
collapsed_directions(x, reg_covar)                           -> directions of x at the covariance floor

Both results are pytrees (flax.struct dataclasses): they pass through jit and vmap, and a stacked
fit over seeds is the same class with a leading seeds axis on every field. Their methods
`log_prob(x)` and `sample(key, n)` work on one unstacked fit; for a stacked fit use
`jax.vmap(lambda m, x: m.log_prob(x))(mixtures, xs)`.

Many seeds
----------
`fit_gmm(key, xs)` with xs of shape (seeds, n, d) is `jax.vmap` of the single fit. `key` is either
one key, split into `seeds` keys with `jax.random.split(key, seeds)`, or already a stack of keys
(shape (seeds, 2) for raw uint32 keys, (seeds,) for typed keys). Seed s of the stacked fit equals
`fit_gmm(keys[s], xs[s])`: a converged seed's EM state is frozen while the others keep iterating.
The same holds for `fit_categorical_mixture`.

Numerics follow scikit-learn's GaussianMixture: log-sum-exp responsibilities, the Cholesky factor
of each precision matrix as the parameter, reg_covar added to the covariance diagonal, and EM that
stops when the mean log-likelihood changes by less than tol. Arrays keep the input's float dtype,
so fits are float64 when JAX x64 is enabled and the input is float64.

Input checks (NaN, inf, shapes, code range) run on concrete arrays before anything is traced, and
raise jaxrae.errors.DataError; bad arguments raise ConfigError. Inside a caller's jit or vmap the
values cannot be inspected, so only shapes are checked there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp

from jaxrae.errors import DataError, invalid, require

COVARIANCE_TYPES = ("full", "diag", "spherical")
GMM_INITS = ("kmeans++", "random")

#: The covariance floor fit_gmm adds to every Sigma_k's diagonal by default (scikit-learn's too).
REG_COVAR = 1e-6

#: The most mixture components a fit accepts. EM holds an (n, k, d) array at every iteration and
#: k-means++ seeds the k components one after another, so the cost grows with n * k: at 1000
#: components and 60,000 points a full-covariance fit already holds ~4 GB per seed for d = 16,
#: while Ghosh et al. (2020) use 10.
MAX_MIXTURE_COMPONENTS = 1000

#: A direction of the codes whose variance is at most this multiple of reg_covar is "at the
#: floor": the fitted covariance there is reg_covar itself, not a property of the codes.
COVARIANCE_FLOOR_FACTOR = 10.0


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@flax.struct.dataclass
class GaussianMixture:
    """p(x) = sum_k weights[k] * N(x | means[k], Sigma_k), with Sigma_k^-1 = P_k P_k^T.

    precisions_cholesky holds P_k in scikit-learn's layout: (k, d, d) upper-triangular factors
    for "full", (k, d) for "diag" (P_k = diag of 1/sigma), (k,) for "spherical" (1/sigma).
    lower_bound is the mean training log-likelihood at the last E-step, n_iter the number of EM
    iterations run and converged whether the last change of lower_bound was below tol.
    """

    weights: jax.Array
    means: jax.Array
    precisions_cholesky: jax.Array
    lower_bound: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    covariance_type: str = flax.struct.field(pytree_node=False, default="full")

    @property
    def n_components(self) -> int:
        return self.means.shape[-2]

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    # Methods are jitted as a whole (the mixture is a pytree argument): one compile per input
    # shape instead of one per primitive when called eagerly; inside a caller's jit they inline.
    @jax.jit
    def log_prob(self, x: jax.Array) -> jax.Array:
        """log p(x_n) = logsumexp_k [log w_k + log N(x_n | mu_k, Sigma_k)]: (n, d) -> (n,)."""
        chex.assert_rank(x, 2)
        chex.assert_axis_dimension(x, 1, self.dim)
        x = jnp.asarray(x, self.means.dtype)
        weighted = _gaussian_log_densities(x, self.means, self.precisions_cholesky, self.covariance_type) + jnp.log(
            self.weights
        )
        return logsumexp(weighted, axis=1)

    @partial(jax.jit, static_argnames="n")
    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """Ancestral sampling: k ~ Cat(weights), x = mu_k + P_k^-T eps, eps ~ N(0, I): (n, d).

        Cov(P^-T eps) = P^-T P^-1 = (P P^T)^-1 = Sigma, so no covariance is ever inverted.
        """
        key_component, key_noise = jax.random.split(key)
        component = jax.random.categorical(key_component, jnp.log(self.weights), shape=(n,))
        eps = jax.random.normal(key_noise, (n, self.dim), self.means.dtype)
        prec_chol = self.precisions_cholesky
        if self.covariance_type == "full":
            cov_chol = _covariance_cholesky_from_precision_cholesky(prec_chol)  # (k, d, d)
            offset = jnp.einsum("nde,ne->nd", cov_chol[component], eps)
        elif self.covariance_type == "diag":
            offset = eps / prec_chol[component]
        else:  # spherical
            offset = eps / prec_chol[component][:, None]
        samples = self.means[component] + offset
        chex.assert_shape(samples, (n, self.dim))
        return samples

    @jax.jit
    def covariance_matrices(self) -> jax.Array:
        """Sigma_k as dense (k, d, d) matrices, whatever the covariance type."""
        prec_chol = self.precisions_cholesky
        if self.covariance_type == "full":
            cov_chol = _covariance_cholesky_from_precision_cholesky(prec_chol)
            return cov_chol @ jnp.swapaxes(cov_chol, -1, -2)
        variances = 1.0 / prec_chol**2
        if self.covariance_type == "spherical":
            variances = jnp.broadcast_to(variances[:, None], self.means.shape)
        return jax.vmap(jnp.diag)(variances)


@flax.struct.dataclass
class CategoricalMixture:
    """p(x) = sum_c weights[c] * prod_v class_probs[c, v, x_v], a latent class model.

    log_class_probs has shape (components, n_vars, n_classes). lower_bound, n_iter and converged
    mean what they mean for GaussianMixture.
    """

    weights: jax.Array
    log_class_probs: jax.Array
    lower_bound: jax.Array
    n_iter: jax.Array
    converged: jax.Array

    @property
    def class_probs(self) -> jax.Array:
        return jnp.exp(self.log_class_probs)

    @property
    def n_vars(self) -> int:
        return self.log_class_probs.shape[-2]

    @property
    def n_classes(self) -> int:
        return self.log_class_probs.shape[-1]

    @jax.jit
    def log_prob(self, codes: jax.Array) -> jax.Array:
        """log p(x_n) = logsumexp_c [log w_c + sum_v log theta[c, v, x_nv]]: (n, n_vars) -> (n,)."""
        chex.assert_rank(codes, 2)
        chex.assert_axis_dimension(codes, 1, self.n_vars)
        weighted = _categorical_log_likelihoods(codes, self.log_class_probs) + jnp.log(self.weights)
        return logsumexp(weighted, axis=1)

    @partial(jax.jit, static_argnames="n")
    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """Ancestral sampling: c ~ Cat(weights), then x_v ~ Cat(theta[c, v]) independently: (n, n_vars)."""
        key_component, key_classes = jax.random.split(key)
        component = jax.random.categorical(key_component, jnp.log(self.weights), shape=(n,))
        codes = jax.random.categorical(key_classes, self.log_class_probs[component], axis=-1)
        chex.assert_shape(codes, (n, self.n_vars))
        return codes


# ---------------------------------------------------------------------------------------------
# Gaussian pieces: component densities (E-step) and parameter estimates (M-step)
# ---------------------------------------------------------------------------------------------


class _GaussianParams(NamedTuple):
    weights: jax.Array  # (k,)
    means: jax.Array  # (k, d)
    precisions_cholesky: jax.Array  # see GaussianMixture


def _gaussian_log_densities(x, means, precisions_cholesky, covariance_type):
    """log N(x_n | mu_k, Sigma_k) for every point and component: (n, d) -> (n, k).

    With Sigma^-1 = P P^T, log N = -0.5 (d log 2pi + ||P^T (x - mu)||^2) + sum log diag P.
    """
    _, d = x.shape
    prec_chol = precisions_cholesky
    if covariance_type == "full":
        log_det = jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)
        # One (n, d) x (d, k*d) matmul projects every point through every component's factor;
        # this is the whole cost of the E-step.
        y = jnp.einsum("nd,kde->nke", x, prec_chol) - jnp.einsum("kd,kde->ke", means, prec_chol)
        squared_mahalanobis = jnp.sum(y**2, axis=-1)
    elif covariance_type == "diag":
        log_det = jnp.sum(jnp.log(prec_chol), axis=-1)
        precisions = prec_chol**2
        squared_mahalanobis = (
            jnp.sum(means**2 * precisions, axis=1) - 2.0 * x @ (means * precisions).T + (x**2) @ precisions.T
        )
    else:  # spherical
        log_det = d * jnp.log(prec_chol)
        precisions = prec_chol**2
        squared_mahalanobis = (
            jnp.sum(means**2, axis=1) * precisions
            - 2.0 * (x @ means.T) * precisions
            + jnp.sum(x**2, axis=1)[:, None] * precisions
        )
    return -0.5 * (d * math.log(2.0 * math.pi) + squared_mahalanobis) + log_det


def _covariance_cholesky_from_precision_cholesky(prec_chol):
    """P -> L with L L^T = (P P^T)^-1, i.e. L = P^-T (lower triangular)."""
    identity = jnp.broadcast_to(jnp.eye(prec_chol.shape[-1], dtype=prec_chol.dtype), prec_chol.shape)
    return solve_triangular(jnp.swapaxes(prec_chol, -1, -2), identity, lower=True)


def _precision_cholesky_from_covariance(covariances):
    """Sigma = L L^T -> P = L^-T, so that P P^T = Sigma^-1 (scikit-learn's parametrization).

    reg_covar normally keeps Sigma positive definite; in float32, rounding can still push a
    nearly singular Sigma below zero, where Cholesky returns NaN (LAPACK reads one triangle only,
    so Sigma is symmetrized first). Such components are refactored
    with a jitter proportional to their scale instead of poisoning the whole fit.
    """
    d = covariances.shape[-1]
    identity = jnp.eye(d, dtype=covariances.dtype)
    covariances = 0.5 * (covariances + jnp.swapaxes(covariances, -1, -2))
    cov_chol = jnp.linalg.cholesky(covariances)
    failed = ~jnp.all(jnp.isfinite(cov_chol), axis=(-2, -1))
    scale = jnp.trace(covariances, axis1=-2, axis2=-1) / d
    jitter = 1e3 * jnp.finfo(covariances.dtype).eps * scale + jnp.finfo(covariances.dtype).tiny
    jittered_chol = jnp.linalg.cholesky(covariances + jitter[:, None, None] * identity)
    cov_chol = jnp.where(failed[:, None, None], jittered_chol, cov_chol)
    prec_chol_lower_t = solve_triangular(cov_chol, jnp.broadcast_to(identity, covariances.shape), lower=True)
    return jnp.swapaxes(prec_chol_lower_t, -1, -2)


def _gaussian_m_step(x, resp, reg_covar, covariance_type):
    """Maximum-likelihood mixture parameters given responsibilities (Bishop PRML eqs. 9.24-9.26).

    N_k = sum_n r_nk (+ 10 eps, so an empty component stays finite), w_k = N_k / sum N,
    mu_k = sum_n r_nk x_n / N_k, Sigma_k = sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T / N_k + reg I.
    """
    n, d = x.shape
    resp_per_component = resp.sum(axis=0) + 10 * jnp.finfo(x.dtype).eps
    means = (resp.T @ x) / resp_per_component[:, None]
    if covariance_type == "full":
        # sum_n r_nk x_n x_n^T for all k as ONE (k*d, n) x (n, d) matmul, then subtract N_k mu mu^T.
        # This uncentred form would cancel badly in float32 for data far from the origin, which
        # is why _fit_gmm_single centres x on its global mean before EM; centring per component
        # instead would cost a (k, n, d) difference array and a batched matmul per iteration,
        # about twice the time.
        resp_x = (resp[:, :, None] * x[:, None, :]).reshape(n, -1)  # (n, k*d)
        second_moments = (resp_x.T @ x).reshape(-1, d, d) / resp_per_component[:, None, None]
        covariances = second_moments - means[:, :, None] * means[:, None, :]
        covariances = covariances + reg_covar * jnp.eye(d, dtype=x.dtype)
        prec_chol = _precision_cholesky_from_covariance(covariances)
    else:
        # E[x^2] - 2 mu E[x] + mu^2, elementwise: the scikit-learn formula for diagonal models.
        avg_x2 = (resp.T @ (x * x)) / resp_per_component[:, None]
        avg_x_mean = means * (resp.T @ x) / resp_per_component[:, None]
        variances = jnp.maximum(avg_x2 - 2 * avg_x_mean + means**2, 0.0) + reg_covar
        if covariance_type == "spherical":
            variances = variances.mean(axis=1)
        prec_chol = 1.0 / jnp.sqrt(variances)
    weights = resp_per_component / resp_per_component.sum()
    return _GaussianParams(weights, means, prec_chol)


def _gaussian_e_step(x, params, covariance_type):
    """log r_nk = log w_k + log N(x_n | k) - logsumexp_j(...), and the mean log-likelihood."""
    weighted = _gaussian_log_densities(x, params.means, params.precisions_cholesky, covariance_type) + jnp.log(
        params.weights
    )
    log_prob_norm = logsumexp(weighted, axis=1)
    return weighted - log_prob_norm[:, None], jnp.mean(log_prob_norm)


# ---------------------------------------------------------------------------------------------
# The EM loop, shared by both mixtures
# ---------------------------------------------------------------------------------------------


class _EMState(NamedTuple):
    params: Any
    lower_bound: jax.Array
    n_iter: jax.Array
    converged: jax.Array


def _expectation_maximization(e_step: Callable, m_step: Callable, params, max_iter, tol, dtype):
    """Iterate E and M steps until the mean log-likelihood changes by less than tol.

    Dempster, Laird & Rubin (1977); Bishop PRML sec. 9.2.2. Step t computes
    (log r, L_t) = e_step(params_t), params_{t+1} = m_step(r), and stops when |L_t - L_{t-1}| < tol
    or after max_iter steps, exactly like scikit-learn's loop (lower_bound is L of the parameters
    before the last M-step).
    """

    def keep_going(state):
        return (~state.converged) & (state.n_iter < max_iter)

    def step(state):
        log_resp, lower_bound = e_step(state.params)
        updated = _EMState(
            params=m_step(jnp.exp(log_resp)),
            lower_bound=lower_bound,
            n_iter=state.n_iter + 1,
            converged=jnp.abs(lower_bound - state.lower_bound) < tol,
        )
        # Under vmap a while_loop runs until every seed has stopped. A finished seed must keep
        # its state untouched, so that seed s alone and seed s in a batch give the same fit.
        # (JAX's batching rule does this select too; writing it here keeps the guarantee local.)
        finished = ~keep_going(state)
        return jax.tree.map(lambda old, new: jnp.where(finished, old, new), state, updated)

    initial = _EMState(
        params=params,
        lower_bound=jnp.asarray(-jnp.inf, dtype),
        n_iter=jnp.asarray(0, jnp.int32),
        converged=jnp.asarray(False),
    )
    return jax.lax.while_loop(keep_going, step, initial)


def _best_of_runs(states: _EMState) -> _EMState:
    """Among n_init stacked EM runs, keep the one with the highest final lower bound."""
    best = jnp.argmax(states.lower_bound)
    return jax.tree.map(lambda leaf: leaf[best], states)


# ---------------------------------------------------------------------------------------------
# Initialization: k-means++ seeding (Arthur & Vassilvitskii 2007) and Lloyd's iterations
# ---------------------------------------------------------------------------------------------


def _squared_distances(x, centers):
    """||x_n - c_k||^2 as one matmul: (n, d), (k, d) -> (n, k)."""
    sq = jnp.sum(x**2, axis=1)[:, None] - 2.0 * x @ centers.T + jnp.sum(centers**2, axis=1)[None, :]
    return jnp.maximum(sq, 0.0)


def _kmeans_plusplus_seeds(key, x, n_centers, distances_to):
    """Greedy k-means++ seeding: indices of n_centers points of x.

    The first seed is uniform; each next one is drawn with probability D(x)^2 / sum D^2, where
    D(x)^2 is the squared distance to the nearest seed so far, distances_to(x, points) -> (m, n)
    (Arthur & Vassilvitskii 2007). As in scikit-learn, each step draws 2 + log(k) candidates and
    keeps the one that lowers the potential sum D^2 most (the greedy variant of the same paper),
    which avoids most of the bad seedings that EM cannot repair. When every point already
    coincides with a seed (duplicates, fewer distinct points than centers) the draw falls back
    to uniform rather than dividing by zero.
    """
    n = x.shape[0]
    n_candidates = 2 + int(math.log(n_centers))
    # All uniforms drawn up front and turned into indices by inverse-CDF lookup: one PRNG call
    # instead of one per step keeps the compiled program (and its compile time) small.
    uniforms = jax.random.uniform(key, (n_centers, n_candidates), jnp.float32)
    first = jnp.minimum((uniforms[0, 0] * n).astype(jnp.int32), n - 1)

    def draw(u, nearest):
        cumulative = jnp.cumsum(nearest)
        total = cumulative[-1]
        by_distance = jnp.searchsorted(cumulative, u * total, side="right")
        uniform = (u * n).astype(jnp.int32)
        return jnp.clip(jnp.where(total > 0, by_distance, uniform), 0, n - 1)

    def add_seed(i, carry):
        indices, nearest = carry
        candidates = draw(uniforms[i], nearest)
        nearest_if_added = jnp.minimum(nearest[None, :], distances_to(x, x[candidates]))
        best = jnp.argmin(jnp.sum(nearest_if_added, axis=1))
        return indices.at[i].set(candidates[best]), nearest_if_added[best]

    indices = jnp.zeros((n_centers,), jnp.int32).at[0].set(first)
    nearest = distances_to(x, x[first][None, :])[0]
    indices, _ = jax.lax.fori_loop(1, n_centers, add_seed, (indices, nearest))
    return indices


def _lloyd(x, centers, max_iter):
    """Lloyd's k-means iterations until no label changes (at most max_iter).

    A center that loses all its points stays where it was. Run to convergence because EM started
    from a half-settled k-means converges, by its tol, to a visibly worse optimum.
    """
    n_centers = centers.shape[0]

    def labels_of(centers):
        return jnp.argmin(_squared_distances(x, centers), axis=1)

    def keep_going(carry):
        _, _, changed, iteration = carry
        return changed & (iteration < max_iter)

    def step(carry):
        centers, labels, _, iteration = carry
        one_hot = jax.nn.one_hot(labels, n_centers, dtype=x.dtype)
        counts = one_hot.sum(axis=0)
        centers = jnp.where(counts[:, None] > 0, (one_hot.T @ x) / jnp.maximum(counts, 1)[:, None], centers)
        new_labels = labels_of(centers)
        return centers, new_labels, jnp.any(new_labels != labels), iteration + 1

    initial = (centers, labels_of(centers), jnp.asarray(True), jnp.asarray(0, jnp.int32))
    centers, _, _, _ = jax.lax.while_loop(keep_going, step, initial)
    return centers


def _initial_gaussian_resp(key, x, means_init, n_components, init, kmeans_iter):
    """Responsibilities the first M-step starts from, (n, k).

    kmeans++: hard labels of k-means (k-means++ seeds, then Lloyd's iterations), as
    scikit-learn's default init. random: uniform random responsibilities, normalized per point.
    With means_init: hard labels of the nearest given mean.
    """
    if means_init is not None:
        centers = means_init
    elif init == "random":
        resp = jax.random.uniform(key, (x.shape[0], n_components), x.dtype)
        return resp / resp.sum(axis=1, keepdims=True)
    else:
        seeds = _kmeans_plusplus_seeds(key, x, n_components, lambda x, points: _squared_distances(x, points).T)
        centers = _lloyd(x, x[seeds], kmeans_iter)
    labels = jnp.argmin(_squared_distances(x, centers), axis=1)
    return jax.nn.one_hot(labels, n_components, dtype=x.dtype)


# ---------------------------------------------------------------------------------------------
# Gaussian mixture: single fit, compiled (optionally vmapped) fit, public entry points
# ---------------------------------------------------------------------------------------------


def _map_over_runs(fit_one, *stacked):
    """``fit_one`` applied to each run's slice of ``stacked`` (leading axis: runs), results stacked.

    A sequential ``lax.map`` inside the one compiled program, not ``vmap``, for the runs of
    :func:`fit_gmm` and for its ``n_init`` starts: on jaxlib 0.10.2's CPU runtime a GMM's EM
    vmapped over many problems hangs forever, every XLA thread idle (also with
    ``--xla_cpu_multi_thread_eigen=false`` and with synchronous dispatch). Measured on 1,438 x 16
    codes, 10 components, one trial each: vmapped runs x inits of 16 x 1, 12 x 1, 5 x 4 and 1 x 4
    completed; 18 x 1, 15 x 4, 8 x 4 and 5 x 16 hung. Mapped, 32 runs x 4 starts completed in 13 s.
    EM is a small-batch, iteration-bound computation, so the problems lose little by going one
    after another, and each run's numbers are those of fitting it alone.
    """
    return jax.lax.map(lambda args: fit_one(*args), stacked)


def _fit_gmm_single(
    key, x, means_init, tol, reg_covar, *, n_components, covariance_type, max_iter, n_init, init, kmeans_iter
):
    chex.assert_rank(x, 2)
    # Fit on x centred on its mean and shift the means back at the end: the likelihood is
    # translation invariant, and the one-matmul covariance update in _gaussian_m_step stays
    # accurate in float32 only near the origin.
    data_mean = jnp.mean(x, axis=0)
    x = x - data_mean
    if means_init is not None:
        means_init = means_init.astype(x.dtype) - data_mean
    e_step = partial(_gaussian_e_step, x, covariance_type=covariance_type)
    m_step = partial(_gaussian_m_step, x, reg_covar=reg_covar, covariance_type=covariance_type)

    def run(init_key):
        resp = _initial_gaussian_resp(init_key, x, means_init, n_components, init, kmeans_iter)
        params = m_step(resp)
        if means_init is not None:
            # As scikit-learn: weights and covariances from the hard labels, means as given.
            params = params._replace(means=means_init)
        return _expectation_maximization(e_step, m_step, params, max_iter, tol, x.dtype)

    if n_init == 1:
        state = run(key)
    else:  # one start after another, not vmapped: see _map_over_runs
        state = _best_of_runs(jax.lax.map(run, jax.random.split(key, n_init)))
    return GaussianMixture(
        weights=state.params.weights,
        means=state.params.means + data_mean,
        precisions_cholesky=state.params.precisions_cholesky,
        lower_bound=state.lower_bound,
        n_iter=state.n_iter,
        converged=state.converged,
        covariance_type=covariance_type,
    )


@partial(
    jax.jit, static_argnames=("n_components", "covariance_type", "max_iter", "n_init", "init", "kmeans_iter", "batched")
)
def _fit_gmm_compiled(
    key, x, means_init, tol, reg_covar, *, n_components, covariance_type, max_iter, n_init, init, kmeans_iter, batched
):
    fit_one = partial(
        _fit_gmm_single,
        n_components=n_components,
        covariance_type=covariance_type,
        max_iter=max_iter,
        n_init=n_init,
        init=init,
        kmeans_iter=kmeans_iter,
    )
    if not batched:
        return fit_one(key, x, means_init, tol, reg_covar)
    # One run after another (lax.map), not vmapped: see _map_over_runs.
    if means_init is not None and means_init.ndim == 3:
        return _map_over_runs(lambda k, xs, m: fit_one(k, xs, m, tol, reg_covar), key, x, means_init)
    return _map_over_runs(lambda k, xs: fit_one(k, xs, means_init, tol, reg_covar), key, x)


def fit_gmm(
    key: jax.Array,
    x: jax.Array,
    n_components: int = 10,
    covariance: str = "full",
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = REG_COVAR,
    n_init: int = 1,
    init: str = "kmeans++",
    means_init: jax.Array | None = None,
    kmeans_iter: int = 100,
) -> GaussianMixture:
    """Fit a Gaussian mixture by expectation-maximization.

    p(x) = sum_k w_k N(x | mu_k, Sigma_k). EM (Dempster, Laird & Rubin 1977; Bishop PRML ch. 9)
    alternates responsibilities r_nk = w_k N(x_n|k) / sum_j w_j N(x_n|j) (computed in log space
    with log-sum-exp) and the weighted maximum-likelihood estimates of w, mu, Sigma, adding
    reg_covar to the diagonal of every Sigma_k. It stops when the mean log-likelihood
    (1/n) sum_n log p(x_n) changes by less than tol, or after max_iter iterations. This is the
    ex-post density of Ghosh et al. (2020), where it is fitted on a trained RAE's codes.

    Args:
      key: PRNG key for the initialization. For stacked x, one key (split into `seeds` keys) or
        a stack of `seeds` keys.
      x: float array (n, d), or (seeds, n, d) to fit one mixture per seed in one vmapped call.
        Integer input is cast to the default float dtype; float input keeps its dtype.
      n_components: number of mixture components k >= 1.
      covariance: "full" (Sigma_k dense), "diag" (diagonal) or "spherical" (sigma_k^2 I).
      max_iter, tol: EM stops after max_iter iterations or when the lower bound changes < tol.
      reg_covar: non-negative value added to the covariance diagonal; keeps Sigma_k invertible
        for duplicate points, constant columns, or components with a single point.
      n_init: number of initializations (each with its own key, run in parallel); the one with
        the highest final lower bound is kept. The default 1 is scikit-learn's (so a fit here and
        a GaussianMixture() there are compared like for like, and means_init needs it); EM from
        one start can stop in a clearly worse local optimum, so jaxrae's evaluation asks for
        jaxrae.evaluate.N_INIT = 4, and a result worth reporting should too.
      init: "kmeans++" (greedy k-means++ seeding, Arthur & Vassilvitskii 2007, then Lloyd's
        iterations until the labels settle; responsibilities are the hard k-means labels) or "random" (uniform random
        responsibilities).
      means_init: optional initial means (k, d) (or (seeds, k, d)). Weights and covariances then
        start from the hard assignment of each point to its nearest given mean, like
        scikit-learn's means_init. Requires n_init == 1.
      kmeans_iter: at most this many Lloyd iterations after k-means++ seeding.

    Returns:
      A GaussianMixture (a pytree; stacked fields with a leading seeds axis for stacked x).

    Raises:
      DataError: x is not (n, d) / (seeds, n, d), is empty, or holds NaN or inf.
      ConfigError: an argument is out of range, or n_components exceeds the number of points or
        MAX_MIXTURE_COMPONENTS (:func:`check_mixture_size`).
    """
    for field, value, minimum in (
        ("n_components", n_components, 1),
        ("max_iter", max_iter, 1),
        ("n_init", n_init, 1),
        ("kmeans_iter", kmeans_iter, 0),
    ):
        require(_is_int(value) and value >= minimum, field, value, f"must be an integer >= {minimum}")
    require(covariance in COVARIANCE_TYPES, "covariance", covariance, f"choose one of {', '.join(COVARIANCE_TYPES)}")
    require(init in GMM_INITS, "init", init, f"choose one of {', '.join(GMM_INITS)}")
    for field, value in (("tol", tol), ("reg_covar", reg_covar)):
        require(_is_finite_nonnegative(value), field, value, "must be a finite number >= 0")
    x = _as_float_array("x", x)
    batched = _check_data_rank("x", x, "(n, d)")
    check_mixture_size(x.shape[-2], n_components)
    if means_init is not None:
        require(n_init == 1, "n_init", n_init, "a given means_init is deterministic, so use n_init=1")
        means_init = _as_float_array("means_init", means_init).astype(x.dtype)
        expected = (n_components, x.shape[-1])
        require(
            means_init.shape[-2:] == expected and means_init.ndim in ((2, 3) if batched else (2,)),
            "means_init.shape",
            means_init.shape,
            f"expected {expected}" + (f" or ({x.shape[0]}, {expected[0]}, {expected[1]})" if batched else ""),
            DataError,
        )
    key = _keys_for(key, x.shape[0] if batched else None)
    mixture = _fit_gmm_compiled(
        key,
        x,
        means_init,
        jnp.asarray(tol, x.dtype),
        jnp.asarray(reg_covar, x.dtype),
        n_components=n_components,
        covariance_type=covariance,
        max_iter=max_iter,
        n_init=n_init,
        init=init,
        kmeans_iter=kmeans_iter,
        batched=batched,
    )
    _check_fitted_finite(
        mixture, ("weights", "means", "precisions_cholesky"), hint="standardize x or increase reg_covar"
    )
    return mixture


def fit_gaussian(x: jax.Array, reg_covar: float = REG_COVAR) -> GaussianMixture:
    """Fit one full-covariance Gaussian: mu = mean(x), Sigma = (1/n) sum (x - mu)(x - mu)^T + reg I.

    The simplest ex-post density of Ghosh et al. (2020) (their "N(0, I) fitted" baseline, sec. 4);
    the closed-form maximum-likelihood estimate (Bishop PRML sec. 2.3.4). Returned as a
    one-component GaussianMixture with n_iter=0 and converged=True, so it has log_prob and sample.
    x may be (n, d) or (seeds, n, d); a stacked x gives one Gaussian per seed.

    Raises DataError for a wrongly shaped, empty or non-finite x, ConfigError for reg_covar < 0.
    """
    require(_is_finite_nonnegative(reg_covar), "reg_covar", reg_covar, "must be a finite number >= 0")
    x = _as_float_array("x", x)
    batched = _check_data_rank("x", x, "(n, d)")
    fit = partial(_fit_gaussian_compiled, reg_covar=jnp.asarray(reg_covar, x.dtype))
    mixture = jax.vmap(fit)(x) if batched else fit(x)
    _check_fitted_finite(
        mixture, ("weights", "means", "precisions_cholesky"), hint="standardize x or increase reg_covar"
    )
    return mixture


@jax.jit
def _fit_gaussian_compiled(x, reg_covar):
    data_mean = jnp.mean(x, axis=0)  # centred for the same float32 reason as in _fit_gmm_single
    x = x - data_mean
    one_component = jnp.ones((x.shape[0], 1), x.dtype)
    params = _gaussian_m_step(x, one_component, reg_covar, "full")
    params = params._replace(weights=jnp.ones((1,), x.dtype))
    _, mean_log_likelihood = _gaussian_e_step(x, params, "full")
    return GaussianMixture(
        weights=params.weights,
        means=params.means + data_mean,
        precisions_cholesky=params.precisions_cholesky,
        lower_bound=mean_log_likelihood,
        n_iter=jnp.asarray(0, jnp.int32),
        converged=jnp.asarray(True),
        covariance_type="full",
    )


# ---------------------------------------------------------------------------------------------
# Mixture of categoricals (latent class model)
# ---------------------------------------------------------------------------------------------


class _CategoricalParams(NamedTuple):
    weights: jax.Array  # (c,)
    log_class_probs: jax.Array  # (c, n_vars, n_classes)


def _categorical_log_likelihoods(codes, log_class_probs):
    """log p(x_n | c) = sum_v log theta[c, v, x_nv]: (n, n_vars) -> (n, c), by gathering."""
    n_vars = codes.shape[1]
    picked = log_class_probs[:, jnp.arange(n_vars, dtype=codes.dtype)[None, :], codes]  # (c, n, n_vars)
    return jnp.sum(picked, axis=-1).T


def _categorical_e_step(codes, params):
    weighted = _categorical_log_likelihoods(codes, params.log_class_probs) + jnp.log(params.weights)
    log_prob_norm = logsumexp(weighted, axis=1)
    return weighted - log_prob_norm[:, None], jnp.mean(log_prob_norm)


def _categorical_m_step(codes, resp, n_classes, alpha):
    """MAP estimates under a Dirichlet prior on every theta[c, v, :].

    theta[c, v, j] = (n_cvj + alpha) / (N_c + n_classes * alpha), with expected counts
    n_cvj = sum_n r_nc [x_nv = j] and N_c = sum_n r_nc: the mode of the Dirichlet(1 + alpha)
    posterior, i.e. alpha pseudo-counts per class, so no class gets probability 0.
    w_c = (N_c + 10 eps) / sum, the maximum-likelihood weights kept off zero like the GMM's.
    """
    _, n_vars = codes.shape
    # Scatter-add responsibilities into (n_vars, n_classes, c) count tables: memory O(n * c)
    # per variable, never the (n, n_vars * n_classes) one-hot matrix.
    counts = jnp.zeros((n_vars, n_classes, resp.shape[1]), resp.dtype)
    counts = counts.at[jnp.arange(n_vars, dtype=codes.dtype)[None, :], codes].add(resp[:, None, :])
    counts = jnp.transpose(counts, (2, 0, 1)) + alpha  # (c, n_vars, n_classes)
    log_class_probs = jnp.log(counts) - jnp.log(jnp.sum(counts, axis=-1, keepdims=True))
    resp_per_component = resp.sum(axis=0) + 10 * jnp.finfo(resp.dtype).eps
    return _CategoricalParams(resp_per_component / resp_per_component.sum(), log_class_probs)


def _hamming_sq_distances(codes, points):
    """||onehot(a) - onehot(b)||^2 = 2 Hamming(a, b): k-means++ on one-hot codes, without them."""
    return 2.0 * jnp.sum(codes[None, :, :] != points[:, None, :], axis=-1).astype(jnp.float32)


def _fit_categorical_single(key, codes, alpha, tol, *, n_classes, n_components, max_iter, n_init, dtype):
    chex.assert_rank(codes, 2)
    e_step = partial(_categorical_e_step, codes)
    m_step = partial(_categorical_m_step, codes, n_classes=n_classes, alpha=alpha)

    def run(init_key):
        key_seeds, key_ties = jax.random.split(init_key)
        # k-means++ in Hamming distance picks distinct prototypes; each code starts in the
        # component of its nearest prototype (random tie-breaking, since Hamming distances tie
        # often), a k-modes step that breaks the symmetry plain random responsibilities leave.
        seeds = _kmeans_plusplus_seeds(key_seeds, codes, n_components, _hamming_sq_distances)
        mismatches = jnp.sum(codes[:, None, :] != codes[seeds][None, :, :], axis=-1)
        tie_break = jax.random.uniform(key_ties, mismatches.shape, dtype, 0.0, 0.5)
        labels = jnp.argmin(mismatches.astype(dtype) + tie_break, axis=1)
        params = m_step(jax.nn.one_hot(labels, n_components, dtype=dtype))
        return _expectation_maximization(e_step, m_step, params, max_iter, tol, dtype)

    if n_init == 1:
        state = run(key)
    else:
        state = _best_of_runs(jax.vmap(run)(jax.random.split(key, n_init)))
    return CategoricalMixture(
        weights=state.params.weights,
        log_class_probs=state.params.log_class_probs,
        lower_bound=state.lower_bound,
        n_iter=state.n_iter,
        converged=state.converged,
    )


@partial(jax.jit, static_argnames=("n_classes", "n_components", "max_iter", "n_init", "dtype", "batched"))
def _fit_categorical_compiled(key, codes, alpha, tol, *, n_classes, n_components, max_iter, n_init, dtype, batched):
    fit_one = partial(
        _fit_categorical_single,
        n_classes=n_classes,
        n_components=n_components,
        max_iter=max_iter,
        n_init=n_init,
        dtype=dtype,
    )
    if not batched:
        return fit_one(key, codes, alpha, tol)
    return jax.vmap(fit_one, in_axes=(0, 0, None, None))(key, codes, alpha, tol)


def fit_categorical_mixture(
    key: jax.Array,
    codes: jax.Array,
    n_classes: int,
    n_components: int = 10,
    *,
    alpha: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-3,
    n_init: int = 1,
) -> CategoricalMixture:
    """Fit a mixture of products of categoricals (a latent class model) by MAP EM.

    p(x) = sum_c w_c prod_v theta[c, v, x_v] for codes x of n_vars categorical variables with
    n_classes classes each: Lazarsfeld's latent structure analysis, fitted by maximum likelihood
    as in Goodman (1974), by EM (Dempster et al. 1977; Bishop PRML sec. 9.3.3 for the Bernoulli
    case). A Dirichlet prior adds alpha pseudo-counts to every class of every theta[c, v, :]
    (MAP EM), so a class unseen in a component keeps a small probability and held-out codes never
    get log-probability -inf. Computed in log space; the loop stops when the mean training
    log-likelihood changes by less than tol. The discrete analogue of Ghosh et al.'s (2020)
    ex-post GMM, to sample codes for a discrete RAE.

    Initialization: k-means++ seeding in Hamming distance (Arthur & Vassilvitskii 2007; it is
    k-means++ on the one-hot codes), each code assigned to its nearest seed; n_init > 1 keeps the
    run with the best final mean log-likelihood.

    Args:
      key: PRNG key; for stacked codes one key (split per seed) or a stack of seed keys.
      codes: integers in [0, n_classes), shape (n, n_vars) or (seeds, n, n_vars).
      n_classes: number of classes per variable.
      n_components: number of latent classes c >= 1.
      alpha: Dirichlet pseudo-count per class, > 0.
      max_iter, tol, n_init: as for fit_gmm (n_init defaults to 1 there and here; jaxrae's
        evaluation uses jaxrae.evaluate.N_INIT = 4).

    Returns:
      A CategoricalMixture (fields stacked over seeds for stacked codes). Its arrays use the
      default float dtype (float64 when JAX x64 is enabled).

    Raises:
      DataError: codes are not integers of the right rank, empty, or outside [0, n_classes).
      ConfigError: an argument is out of range, or n_components exceeds the number of codes or
        MAX_MIXTURE_COMPONENTS (:func:`check_mixture_size`).
    """
    for field, value in (
        ("n_classes", n_classes),
        ("n_components", n_components),
        ("max_iter", max_iter),
        ("n_init", n_init),
    ):
        require(_is_int(value) and value >= 1, field, value, "must be an integer >= 1")
    require(_is_finite_nonnegative(tol), "tol", tol, "must be a finite number >= 0")
    require(alpha > 0, "alpha", alpha, "the Dirichlet pseudo-count must be > 0")
    codes = jnp.asarray(codes) if not isinstance(codes, jax.core.Tracer) else codes
    require(
        jnp.issubdtype(codes.dtype, jnp.integer),
        "codes.dtype",
        str(codes.dtype),
        "expected integer class indices",
        DataError,
    )
    batched = _check_data_rank("codes", codes, "(n, n_vars)")
    if not isinstance(codes, jax.core.Tracer):
        low, high = int(jnp.min(codes)), int(jnp.max(codes))
        require(
            low >= 0 and high < n_classes,
            "codes range",
            (low, high),
            f"expected classes in [0, {n_classes - 1}] for n_classes={n_classes}",
            DataError,
        )
    check_mixture_size(codes.shape[-2], n_components)
    dtype = jnp.result_type(float)
    key = _keys_for(key, codes.shape[0] if batched else None)
    mixture = _fit_categorical_compiled(
        key,
        codes.astype(jnp.int32),
        jnp.asarray(alpha, dtype),
        jnp.asarray(tol, dtype),
        n_classes=n_classes,
        n_components=n_components,
        max_iter=max_iter,
        n_init=n_init,
        dtype=dtype,
        batched=batched,
    )
    _check_fitted_finite(mixture, ("weights", "log_class_probs"), hint="report this as a bug")
    return mixture


# ---------------------------------------------------------------------------------------------
# What a fit can mean: mixture size against the data, codes at the covariance floor
# ---------------------------------------------------------------------------------------------


def check_mixture_size(n_points: int, n_components: int, field: str = "n_components") -> None:
    """Raise ConfigError unless 1 <= n_components <= min(n_points, MAX_MIXTURE_COMPONENTS).

    A mixture fitted by maximum likelihood to n points has no use for more than n components:
    with more, EM leaves components empty or stacks several on one point, where the covariance
    shrinks to reg_covar and the likelihood grows without bound as reg_covar -> 0 (Bishop PRML
    sec. 9.2.1), so a "converged" fit reports a log-likelihood that measures reg_covar, not the
    codes. scikit-learn's GaussianMixture refuses n_samples < n_components for the same reason.
    Above MAX_MIXTURE_COMPONENTS a fit does not finish in useful time (see that constant).
    ``field`` names the setting in the message: ``n_components`` for the fitting functions, the
    experiment's field for a comparison, which calls this before any row trains.
    """
    require(_is_int(n_components) and n_components >= 1, field, n_components, "must be an integer >= 1")
    require(
        n_components <= MAX_MIXTURE_COMPONENTS,
        field,
        n_components,
        f"at most {MAX_MIXTURE_COMPONENTS} mixture components: EM holds an (n, k, d) array per iteration "
        "and k-means++ seeds the components one at a time, so larger fits do not finish in useful time "
        "(Ghosh et al. 2020 use 10)",
    )
    require(
        n_components <= n_points,
        field,
        n_components,
        f"more mixture components than the {n_points} points the density is fitted on: use at most "
        f"{n_points} components (or more training points); extra components sit empty or on single points, "
        "and the fit's log-likelihood then measures reg_covar, not the data",
    )


def collapsed_directions(x, reg_covar: float = REG_COVAR) -> np.ndarray:
    """Directions in which x has no spread beyond the covariance floor: a count per seed.

    The number of eigenvalues lambda_i of the empirical covariance
    S = (1/n) sum_n (x_n - mean)(x_n - mean)^T (float64) with lambda_i <= COVARIANCE_FLOOR_FACTOR *
    reg_covar. A fitted Gaussian's variance in such a direction is reg_covar plus almost nothing,
    so its density there is a spike of height ~ (2 pi reg_covar)^-1/2 that grows as reg_covar
    shrinks, and every log-likelihood of codes under it is inflated by ~0.5 log(1 / reg_covar) per
    collapsed direction (6.9 nats at the default reg_covar). d collapsed directions out of d mean
    the codes are constant (a collapsed encoder, or constant images).

    x: (n, d), or (seeds, n, d) for one count per seed. Returns an int (or an int array (seeds,)).
    """
    x = np.asarray(x, np.float64)
    require(x.ndim in (2, 3) and x.shape[-2] > 0, "x.shape", x.shape, "expected (n, d) or (seeds, n, d)", DataError)
    centred = x - x.mean(axis=-2, keepdims=True)
    covariance = np.swapaxes(centred, -1, -2) @ centred / x.shape[-2]
    eigenvalues = np.linalg.eigvalsh(covariance)
    counts = np.sum(eigenvalues <= COVARIANCE_FLOOR_FACTOR * reg_covar, axis=-1)
    return int(counts) if x.ndim == 2 else counts.astype(int)


# ---------------------------------------------------------------------------------------------
# Argument and data checks (concrete values only; tracers pass through)
# ---------------------------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_finite_nonnegative(value) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and value >= 0 and math.isfinite(value)


def _as_float_array(name, x):
    """Float array, dtype kept for float input; NaN/inf rejected while values are concrete."""
    if isinstance(x, jax.core.Tracer):
        return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))
    array = np.asarray(x)
    require(
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_,
        f"{name}.dtype",
        str(array.dtype),
        "expected a real-valued array",
        DataError,
    )
    finite = np.isfinite(array)
    if not finite.all():
        n_nan, n_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise invalid(
            f"{name}[{', '.join(map(str, first))}]",
            float(array[first]),
            f"{name} contains {n_nan} NaN and {n_inf} infinite values; a density cannot be "
            "fitted to them: drop or fix those rows",
            DataError,
        )
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def _check_data_rank(name, x, layout):
    """True for a stacked (seeds, ...) array; DataError for any rank but 2 or 3, or no rows."""
    require(x.ndim in (2, 3), f"{name}.shape", x.shape, f"expected {layout} or (seeds, *{layout})", DataError)
    require(
        x.shape[-2] > 0 and x.shape[-1] > 0 and (x.ndim == 2 or x.shape[0] > 0),
        f"{name}.shape",
        x.shape,
        "no data to fit: need at least one row and one column",
        DataError,
    )
    return x.ndim == 3


def _keys_for(key, n_seeds):
    """One key for a single fit; n_seeds keys for a stacked fit (split one, or take a stack)."""
    key = jnp.asarray(key) if not isinstance(key, jax.core.Tracer) else key
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    single_rank = 0 if typed else 1
    if n_seeds is None:
        require(key.ndim == single_rank, "key.shape", key.shape, "a single fit takes one PRNG key")
        return key
    if key.ndim == single_rank:
        return jax.random.split(key, n_seeds)
    require(
        key.ndim == single_rank + 1 and key.shape[0] == n_seeds,
        "key.shape",
        key.shape,
        f"for {n_seeds} stacked seeds pass one key or {n_seeds} stacked keys",
    )
    return key


def _check_fitted_finite(mixture, fields, hint):
    """Never hand back NaN parameters silently (checked only when the result is concrete)."""
    for field in fields:
        value = getattr(mixture, field)
        if isinstance(value, jax.core.Tracer):
            return
        require(
            bool(jnp.all(jnp.isfinite(value))), f"fitted {field}", "non-finite", f"the fit diverged: {hint}", DataError
        )
