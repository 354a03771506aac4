"""Discrete relaxations, gradient estimators and quantizers for categorical codes.

Every function is pure. Random ones take an explicit PRNG key and read no global state.

Conventions
-----------
- ``logits`` have shape ``(..., N, K)``: N categorical variables with K classes each. The last
  axis is the class axis; all leading axes are mapped over. Binary codes are simply K = 2.
- Estimators return a code that is exactly one-hot in the forward pass, with the estimator's
  surrogate gradient in the backward pass (``value + (surrogate - stop_gradient(surrogate))``,
  written in that order so that the forward value is bit-exact).
- Validation: ``tau <= 0``, ``K < 2`` and ``n_samples < 1`` raise :class:`ConfigError`. Shapes are
  static and always checked; ``tau`` is checked only when it is a concrete number or array. A
  traced ``tau`` (inside ``jit``, ``vmap`` or ``grad``) cannot be inspected and is not checked.

This module imports nothing from jaxrae except the errors, so it is usable on its own:
``from jaxrae.relax import gumbel_softmax``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrae.errors import invalid, require

__all__ = [
    "ESTIMATORS",
    "ScalarQuantized",
    "VectorQuantized",
    "categorical_kl_uniform",
    "code_capacity_bits",
    "conditional_gumbel",
    "constant_temperature",
    "discrete_code",
    "exponential_temperature",
    "finite_scalar_quantize",
    "fsq_capacity_bits",
    "fsq_codes_from_index",
    "gumbel_rao",
    "gumbel_softmax",
    "reinmax",
    "relaxed_bernoulli",
    "relaxed_one_hot_log_prob",
    "straight_through",
    "straight_through_sample",
    "vector_quantize",
]

ESTIMATORS = ("st", "st-gumbel", "gumbel-rao", "reinmax")


# ----------------------------------------------------------------------------- validation


def _check_positive(name: str, value) -> None:
    """Raise ConfigError unless ``value`` > 0 everywhere; traced values pass unchecked."""
    try:
        concrete = np.asarray(value)
    except jax.errors.TracerArrayConversionError:
        return
    require(bool(np.all(concrete > 0)), name, value, "must be > 0")  # also rejects NaN


def _check_logits(logits) -> jax.Array:
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        logits = logits.astype(jnp.float32)
    require(
        logits.ndim >= 1 and logits.shape[-1] >= 2,
        "logits.shape",
        logits.shape,
        "logits must have shape (..., N, K) with K >= 2 classes",
    )
    return logits


def _check_n_samples(n_samples) -> int:
    is_int = isinstance(n_samples, (int, np.integer)) and not isinstance(n_samples, bool)
    require(is_int and n_samples >= 1, "n_samples", n_samples, "must be a Python int >= 1")
    return int(n_samples)


# ----------------------------------------------------------------------------- helpers


def _one_hot_argmax(scores: jax.Array) -> jax.Array:
    return jax.nn.one_hot(jnp.argmax(scores, axis=-1), scores.shape[-1], dtype=scores.dtype)


def _replace_gradient(value: jax.Array, surrogate: jax.Array) -> jax.Array:
    """``value`` forward, the gradient of ``surrogate`` backward.

    The bracket is evaluated first: ``s - s`` is exactly 0, so the forward value is ``value``
    bit for bit (``(value + s) - s`` would not be).
    """
    return lax.stop_gradient(value) + (surrogate - lax.stop_gradient(surrogate))


def _frozen_offset(target: jax.Array, logits: jax.Array) -> jax.Array:
    """``stop_gradient(target - logits)``, so ``logits + offset`` equals ``target`` forward and
    has the gradient of ``logits``; 0 for a masked class (logit -inf), where both are -inf and
    their difference would be NaN, so that class keeps logit -inf (probability 0, zero gradient).
    """
    return lax.stop_gradient(jnp.where(jnp.isfinite(logits), target - logits, 0.0))


# ----------------------------------------------------------------------------- relaxations


def gumbel_softmax(key: jax.Array, logits: jax.Array, tau, hard: bool = False) -> jax.Array:
    """Gumbel-softmax / Concrete sample (Jang et al. 2017; Maddison et al. 2017).

        y = softmax((logits + g) / tau),   g_k ~ Gumbel(0, 1) i.i.d.

    As tau -> 0, y tends to one_hot(argmax(logits + g)), a sample of Cat(softmax(logits)).
    With ``hard=True`` the forward value is that one-hot sample and the gradient is the relaxed
    one, d y / d logits (the "straight-through Gumbel-softmax" of Jang et al.).

    Args:
      key: PRNG key.
      logits: (..., N, K) unnormalized log-probabilities.
      tau: temperature > 0 (scalar, or an array broadcastable against logits).
      hard: return one-hot samples with the relaxed gradient.

    Returns:
      (..., N, K) points of the simplex (one-hot if ``hard``).
    """
    logits = _check_logits(logits)
    _check_positive("tau", tau)
    # jax.random.gumbel draws its uniforms away from 0, so g is always finite.
    perturbed = logits + jax.random.gumbel(key, logits.shape, logits.dtype)
    relaxed = jax.nn.softmax(perturbed / tau, axis=-1)
    if not hard:
        return relaxed
    return _replace_gradient(_one_hot_argmax(perturbed), relaxed)


def relaxed_bernoulli(key: jax.Array, logit: jax.Array, tau) -> jax.Array:
    """Binary Concrete / relaxed Bernoulli sample (Maddison et al. 2017, sec. 3.3).

        y = sigmoid((logit + l) / tau),   l = log u - log(1 - u) ~ Logistic(0, 1)

    This is the first coordinate of ``gumbel_softmax`` with K = 2 logits (logit, 0), drawn with
    one noise variable instead of two. Its CDF is P(y <= x) = sigmoid(tau * logit(x) - logit).

    Args:
      key: PRNG key.
      logit: (...) log-odds log(p / (1 - p)), any shape.
      tau: temperature > 0.

    Returns:
      (...) values in (0, 1).
    """
    logit = jnp.asarray(logit)
    if not jnp.issubdtype(logit.dtype, jnp.floating):
        logit = logit.astype(jnp.float32)
    _check_positive("tau", tau)
    return jax.nn.sigmoid((logit + jax.random.logistic(key, logit.shape, logit.dtype)) / tau)


# ----------------------------------------------------------------------------- estimators


def straight_through(logits: jax.Array) -> jax.Array:
    """Deterministic straight-through estimator (Bengio et al. 2013).

        forward:  one_hot(argmax(logits))
        backward: d softmax(logits) / d logits = diag(p) - p p^T,  p = softmax(logits)

    Args:
      logits: (..., N, K).

    Returns:
      (..., N, K) one-hot codes.
    """
    logits = _check_logits(logits)
    return _replace_gradient(_one_hot_argmax(logits), jax.nn.softmax(logits, axis=-1))


def straight_through_sample(key: jax.Array, logits: jax.Array) -> jax.Array:
    """Stochastic straight-through estimator (Bengio et al. 2013).

        forward:  D = one_hot(b),  b ~ Cat(softmax(logits))
        backward: d softmax(logits) / d logits

    Args:
      key: PRNG key (used by ``jax.random.categorical``).
      logits: (..., N, K).

    Returns:
      (..., N, K) one-hot samples.
    """
    logits = _check_logits(logits)
    sample = jax.nn.one_hot(jax.random.categorical(key, logits), logits.shape[-1], dtype=logits.dtype)
    return _replace_gradient(sample, jax.nn.softmax(logits, axis=-1))


def conditional_gumbel(key: jax.Array, logits: jax.Array, sample: jax.Array, n_samples: int) -> jax.Array:
    """Perturbed logits ``logits + G`` drawn conditionally on argmax(logits + G) = sample.

    The truncated-Gumbel construction of Paulus et al. 2021 (Gumbel-Rao, appendix), itself from
    Maddison et al. 2014 (A* sampling). With i the sampled class and g_k ~ Gumbel(0, 1) i.i.d.:

        M   = logsumexp(logits) + g_i          (the max is Gumbel(logsumexp), independent of i)
        x_i = M
        x_j = -log(exp(-M) + exp(-(logits_j + g_j)))      for j != i

    x_j is a Gumbel(logits_j) truncated to (-inf, M]: by inverse CDF,
    x_j = logits_j - log(E_j + exp(logits_j - M)) with E_j = exp(-g_j) ~ Exp(1).
    Averaged over ``sample ~ Cat(softmax(logits))`` this is exactly the unconditional logits + G.

    Args:
      key: PRNG key; the noise is ``jax.random.gumbel(key, (n_samples, *logits.shape))``.
      logits: (..., N, K).
      sample: (..., N, K) one-hot codes to condition on.
      n_samples: number of conditional draws per code.

    Returns:
      (n_samples, ..., N, K) perturbed logits whose argmax is ``sample``. They depend on
      ``logits``; callers that want the Gumbel noise held fixed apply ``stop_gradient`` to
      ``x - logits``.
    """
    logits = _check_logits(logits)
    n_samples = _check_n_samples(n_samples)
    chex.assert_equal_shape([logits, sample])
    gumbels = jax.random.gumbel(key, (n_samples, *logits.shape), logits.dtype)
    is_sampled = sample > 0
    g_sampled = jnp.sum(jnp.where(is_sampled, gumbels, 0.0), axis=-1, keepdims=True)
    top = jax.nn.logsumexp(logits, axis=-1, keepdims=True) + g_sampled
    # log-space form of the truncation: finite even when logits_j + g_j is far below M.
    truncated = -jnp.logaddexp(-top, -(logits + gumbels))
    return jnp.where(is_sampled, top, truncated)


def gumbel_rao(key: jax.Array, logits: jax.Array, tau, n_samples: int) -> jax.Array:
    """Gumbel-Rao Monte Carlo estimator (Paulus et al. 2021, "Rao-Blackwellizing the
    Straight-Through Gumbel-Softmax Gradient Estimator").

        forward:  D = one_hot(argmax(logits + G)),  i.e. D ~ Cat(softmax(logits))
        backward: d/d logits of (1/S) sum_s softmax((logits + G_s) / tau),
                  G_s ~ Gumbel | argmax(logits + G_s) = D   (``conditional_gumbel``),
                  with the noise G_s held fixed.

    The backward pass is a Monte Carlo estimate of E[grad of ST Gumbel-softmax | D]; it has the
    same expectation as the straight-through Gumbel-softmax gradient and no larger variance.

    Args:
      key: PRNG key, split in two: the first draws D (``jax.random.categorical``), the second the
        conditional noise.
      logits: (..., N, K).
      tau: temperature > 0 of the surrogate.
      n_samples: S >= 1, conditional Gumbel draws per code.

    Returns:
      (..., N, K) one-hot samples.
    """
    logits = _check_logits(logits)
    _check_positive("tau", tau)
    n_samples = _check_n_samples(n_samples)
    key_sample, key_noise = jax.random.split(key)
    sample = jax.nn.one_hot(jax.random.categorical(key_sample, logits), logits.shape[-1], dtype=logits.dtype)
    noise = _frozen_offset(conditional_gumbel(key_noise, logits, sample, n_samples), logits)
    surrogate = jnp.mean(jax.nn.softmax((logits + noise) / tau, axis=-1), axis=0)
    return _replace_gradient(sample, surrogate)


def reinmax(key: jax.Array, logits: jax.Array, tau=1.0) -> jax.Array:
    """ReinMax estimator (Liu et al. 2023, "Bridging Discrete and Backpropagation:
    Straight-Through and Beyond", Algorithm 2): a second-order (Heun's method) surrogate.

        pi0 = softmax(logits)
        D   = one_hot(b),  b ~ Cat(pi0)
        pi1 = (D + softmax(logits / tau)) / 2
        pi1 = softmax(stop_gradient(log pi1 - logits) + logits)
        pi2 = 2 pi1 - pi0 / 2
        return pi2 - stop_gradient(pi2) + D

    So the gradient is 2 J(pi1)^T g - (1/2) J(pi0)^T g with J(p) = diag(p) - p p^T. tau enters
    only through pi1 (the paper recommends tau >= 1); D is always drawn at temperature 1.

    Args:
      key: PRNG key (used by ``jax.random.categorical``).
      logits: (..., N, K).
      tau: temperature > 0.

    Returns:
      (..., N, K) one-hot samples.
    """
    logits = _check_logits(logits)
    _check_positive("tau", tau)
    pi0 = jax.nn.softmax(logits, axis=-1)
    sample = jax.nn.one_hot(jax.random.categorical(key, logits), logits.shape[-1], dtype=logits.dtype)
    # log pi1 computed in log space: softmax(logits / tau) underflows to 0 at small tau, and
    # log(0) would put -inf into the stop_gradient branch.
    log_sample = jnp.where(sample > 0, 0.0, -jnp.inf).astype(logits.dtype)
    log_pi1 = jnp.logaddexp(log_sample, jax.nn.log_softmax(logits / tau, axis=-1)) - math.log(2.0)
    pi1 = jax.nn.softmax(_frozen_offset(log_pi1, logits) + logits, axis=-1)
    pi2 = 2.0 * pi1 - 0.5 * pi0
    return _replace_gradient(sample, pi2)


def discrete_code(
    key: jax.Array | None,
    logits: jax.Array,
    estimator: str,
    tau=1.0,
    n_samples: int = 10,
) -> jax.Array:
    """One-hot code of ``logits`` with the gradient of the named estimator.

    - ``"st"``: one_hot(argmax(logits)), softmax gradient (``straight_through``); key and tau
      are ignored (the code is deterministic).
    - ``"st-gumbel"``: ``gumbel_softmax(key, logits, tau, hard=True)``.
    - ``"gumbel-rao"``: ``gumbel_rao(key, logits, tau, n_samples)``.
    - ``"reinmax"``: ``reinmax(key, logits, tau)``.

    Args:
      key: PRNG key (may be None for "st").
      logits: (..., N, K).
      estimator: one of ``ESTIMATORS``.
      tau: temperature > 0 of the estimator's surrogate.
      n_samples: conditional draws for "gumbel-rao".

    Returns:
      (..., N, K) one-hot codes.
    """
    if estimator == "st":
        return straight_through(logits)
    if estimator == "st-gumbel":
        return gumbel_softmax(key, logits, tau, hard=True)
    if estimator == "gumbel-rao":
        return gumbel_rao(key, logits, tau, n_samples)
    if estimator == "reinmax":
        return reinmax(key, logits, tau)
    raise invalid("estimator", estimator, f"choose one of {', '.join(ESTIMATORS)}")


# ----------------------------------------------------------------------------- densities


def relaxed_one_hot_log_prob(y: jax.Array, logits: jax.Array, tau) -> jax.Array:
    """Log density of the Concrete / Gumbel-softmax distribution (Maddison et al. 2017, eq. 5).

        log p(y) = log (K-1)! + (K-1) log tau
                   + sum_k [log pi_k - (tau + 1) log y_k]
                   - K logsumexp_k [log pi_k - tau log y_k],     log pi = log_softmax(logits)

    The density is with respect to Lebesgue measure on the first K-1 coordinates of the
    simplex; the sums run over the class axis. ``y`` is floored at the smallest normal float
    before the log, so that coordinates which underflowed to 0 at small tau give a finite value
    (the exact density of such a point is not representable anyway).

    Args:
      y: (..., N, K) points of the open simplex.
      logits: (..., N, K).
      tau: temperature > 0 (scalar, or an array broadcastable to (..., N)).

    Returns:
      (..., N) log densities, one per categorical variable.
    """
    logits = _check_logits(logits)
    _check_positive("tau", tau)
    y = jnp.asarray(y, dtype=logits.dtype)
    chex.assert_equal_shape([y, logits])
    num_classes = logits.shape[-1]
    tau = jnp.asarray(tau, dtype=logits.dtype)
    log_y = jnp.log(jnp.maximum(y, jnp.finfo(logits.dtype).tiny))
    log_pi = jax.nn.log_softmax(logits, axis=-1)
    tau_k = tau[..., None]
    return (
        math.lgamma(num_classes)
        + (num_classes - 1) * jnp.log(tau)
        + jnp.sum(log_pi - (tau_k + 1.0) * log_y, axis=-1)
        - num_classes * jax.nn.logsumexp(log_pi - tau_k * log_y, axis=-1)
    )


def categorical_kl_uniform(logits: jax.Array) -> jax.Array:
    """KL(q || Uniform(K)) = sum_k q_k log q_k + log K = log K - H(q),  q = softmax(logits).

    The analytic latent regularizer of the discrete VAE (Jang et al. 2017; Rolfe 2017). Returned
    per categorical variable; the trainer sums over the N variables (the KL of a factorized
    posterior to a factorized prior is the sum of the per-variable KLs).

    Args:
      logits: (..., N, K).

    Returns:
      (..., N) values in [0, log K].
    """
    logits = _check_logits(logits)
    log_q = jax.nn.log_softmax(logits, axis=-1)
    # log_q is finite even where q underflows, so q * log_q is 0 there, never 0 * -inf.
    return jnp.sum(jnp.exp(log_q) * log_q, axis=-1) + math.log(logits.shape[-1])


# ----------------------------------------------------------------------------- temperature


def exponential_temperature(step, tau0=1.0, rate=1e-4, tau_min=0.5) -> jax.Array:
    """Annealed temperature tau(t) = max(tau_min, tau0 * exp(-rate * t)) (Jang et al. 2017).

    Jang et al. use tau0 = 1, tau_min = 0.5 and rate in {1e-5, 1e-4}. ``step`` may be a traced
    integer (inside ``scan``/``jit``); the parameters are checked when concrete.
    """
    _check_positive("tau0", tau0)
    _check_positive("tau_min", tau_min)
    try:
        require(bool(np.all(np.asarray(rate) >= 0)), "rate", rate, "must be >= 0")
    except jax.errors.TracerArrayConversionError:
        pass
    step = jnp.asarray(step, dtype=jnp.float32)
    return jnp.maximum(tau_min, tau0 * jnp.exp(-rate * step))


def constant_temperature(step, tau=1.0) -> jax.Array:
    """Constant temperature tau(t) = tau, returned with the shape of ``step``."""
    _check_positive("tau", tau)
    return jnp.full(jnp.shape(step), tau, dtype=jnp.float32)


# ----------------------------------------------------------------------------- quantizers


class VectorQuantized(NamedTuple):
    """Output of ``vector_quantize``; shapes for z_e of shape (..., D)."""

    codes: jax.Array  # (..., D) nearest codebook vectors, straight-through gradient to z_e
    indices: jax.Array  # (...) int32 codebook indices
    codebook_loss: jax.Array  # (...) ||sg(z_e) - e||^2, trains the codebook
    commitment_loss: jax.Array  # (...) ||z_e - sg(e)||^2, trains the encoder


def vector_quantize(z_e: jax.Array, codebook: jax.Array) -> VectorQuantized:
    """Nearest-neighbour vector quantization (van den Oord et al. 2017, VQ-VAE).

        k(z) = argmin_c ||z_e - e_c||^2,   z_q = e_k
        forward z_q; backward the identity to z_e (straight-through), nothing to the codebook
        codebook_loss   = ||sg(z_e) - e_k||^2
        commitment_loss = ||z_e - sg(e_k)||^2     (weighted by beta = 0.25 in the paper)

    The losses are per vector (summed over D); the trainer averages them.

    Args:
      z_e: (..., D) encoder outputs.
      codebook: (C, D) embedding vectors.

    Returns:
      VectorQuantized(codes, indices, codebook_loss, commitment_loss).
    """
    z_e = jnp.asarray(z_e)
    codebook = jnp.asarray(codebook)
    chex.assert_rank(codebook, 2)
    chex.assert_axis_dimension(z_e, -1, codebook.shape[-1])
    # ||z||^2 - 2 z.e + ||e||^2 avoids the (..., C, D) difference tensor. HIGHEST precision
    # because accelerators otherwise run float32 matmuls in bfloat16, which flips near-ties.
    cross = jnp.einsum("...d,cd->...c", z_e, codebook, precision=lax.Precision.HIGHEST)
    distances = jnp.sum(z_e**2, axis=-1, keepdims=True) - 2.0 * cross + jnp.sum(codebook**2, axis=-1)
    indices = jnp.argmin(distances, axis=-1).astype(jnp.int32)
    nearest = jnp.take(codebook, indices, axis=0)
    codebook_loss = jnp.sum((lax.stop_gradient(z_e) - nearest) ** 2, axis=-1)
    commitment_loss = jnp.sum((z_e - lax.stop_gradient(nearest)) ** 2, axis=-1)
    codes = lax.stop_gradient(nearest) + (z_e - lax.stop_gradient(z_e))
    return VectorQuantized(codes, indices, codebook_loss, commitment_loss)


class ScalarQuantized(NamedTuple):
    """Output of ``finite_scalar_quantize``; shapes for z of shape (..., d)."""

    codes: jax.Array  # (..., d) values on the per-dimension grid in [-1, 1]
    digits: jax.Array  # (..., d) int32, digit j in [0, levels[j])
    index: jax.Array  # (...) int32 flat code index in [0, prod(levels))


def _check_levels(levels: Sequence[int]) -> np.ndarray:
    levels_array = np.asarray(levels)
    require(
        levels_array.ndim == 1
        and levels_array.size > 0
        and np.issubdtype(levels_array.dtype, np.integer)
        and bool(np.all(levels_array >= 2)),
        "levels",
        levels,
        "FSQ levels must be a non-empty list of integers >= 2",
    )
    require(
        np.prod(levels_array.astype(np.float64)) <= np.iinfo(np.int32).max,
        "levels",
        levels,
        "the FSQ codebook size prod(levels) must fit in int32",
    )
    return levels_array.astype(np.int64)


def _fsq_basis(levels: np.ndarray) -> np.ndarray:
    return np.concatenate([[1], np.cumprod(levels[:-1])]).astype(np.int32)


def finite_scalar_quantize(z: jax.Array, levels: Sequence[int]) -> ScalarQuantized:
    """Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE
    Made Simple").

    Per dimension j with L = levels[j], half_l = (L - 1)(1 - eps)/2, eps = 1e-3:

        offset = 0.5 if L is even else 0
        bound(z) = tanh(z + atanh(offset / half_l)) * half_l - offset
        q = round(bound(z))        (straight-through: forward round, backward identity)
        code = q / (L // 2)        in [-1, 1]

    Odd L gives the symmetric grid {-(L-1)/2, ..., (L-1)/2}; even L, thanks to the half-offset,
    gives {-L/2, ..., L/2 - 1}. The shift makes bound(0) = 0 exactly for L >= 3; at L = 2 no
    shift can (offset / half_l > 1), so that ratio is capped at 1 - eps and bound(0) =
    -eps * (1 - eps) / 2, which rounds to the level 0 of the grid {-1, 0}; the paper's code uses tan
    where atanh is meant, which agrees to O((offset/half_l)^5). digits = q + L // 2 and the flat
    index is sum_j digits_j * prod_{i<j} levels[i] (a bijection onto [0, prod(levels))).

    Args:
      z: (..., d) with d = len(levels).
      levels: number of levels per dimension, each >= 2 (e.g. [8, 5, 5, 5]).

    Returns:
      ScalarQuantized(codes, digits, index).
    """
    levels_array = _check_levels(levels)
    z = jnp.asarray(z)
    if not jnp.issubdtype(z.dtype, jnp.floating):
        z = z.astype(jnp.float32)
    chex.assert_axis_dimension(z, -1, len(levels_array))
    eps = 1e-3
    half_l = (levels_array - 1) * (1 - eps) / 2
    offset = np.where(levels_array % 2 == 0, 0.5, 0.0)
    # bound(0) = 0 needs tanh(shift) = offset / half_l, which exceeds 1 at L = 2 (0.5 / 0.4995):
    # there the ratio is capped at 1 - eps, so bound(0) = -eps * half_l rounds to the level 0.
    shift = np.arctanh(np.minimum(offset / half_l, 1 - eps))
    half_width = levels_array // 2
    bounded = jnp.tanh(z + shift.astype(z.dtype)) * half_l.astype(z.dtype) - offset.astype(z.dtype)
    rounded = jnp.round(bounded)
    codes = _replace_gradient(rounded, bounded) / half_width.astype(z.dtype)
    digits = (rounded + half_width).astype(jnp.int32)
    index = jnp.sum(digits * _fsq_basis(levels_array), axis=-1)
    return ScalarQuantized(codes, digits, index)


def fsq_codes_from_index(index: jax.Array, levels: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """Inverse of the FSQ flat index: (...) int -> (..., d) codes on the grid in [-1, 1].

        digits_j = (index // prod_{i<j} levels[i]) mod levels[j]
        code_j = (digits_j - L_j // 2) / (L_j // 2)

    Used to decode samples of the uniform prior over the prod(levels) codes.
    """
    levels_array = _check_levels(levels)
    index = jnp.asarray(index, dtype=jnp.int32)[..., None]
    digits = (index // _fsq_basis(levels_array)) % levels_array.astype(np.int32)
    half_width = (levels_array // 2).astype(np.int32)
    return ((digits - half_width) / half_width).astype(dtype)


# ----------------------------------------------------------------------------- code capacity


def code_capacity_bits(n_vars: int, n_classes: int) -> float:
    """Capacity of a discrete code in bits: log2 of the number of distinct codes it can take.

    A code of N variables with K values each takes K^N values, so

        bits = log2(K^N) = N log2 K

    It covers every discrete code here: N categorical variables of K classes (Jang et al. 2017),
    N VQ vectors each one of a C-entry codebook (van den Oord et al. 2017; K = C), and N FSQ
    groups (Mentzer et al. 2023) whose K = prod_j L_j grid points are the group's values (see
    :func:`fsq_capacity_bits`). It is an upper bound on the information a code carries, reached
    only when every code is used equally often.
    """
    for name, value, least in (("n_vars", n_vars, 1), ("n_classes", n_classes, 2)):
        require(
            not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= least,
            name,
            value,
            f"must be an integer >= {least}",
        )
    return float(n_vars) * math.log2(int(n_classes))


def fsq_capacity_bits(levels: Sequence[int], n_groups: int = 1) -> float:
    """Capacity in bits of ``n_groups`` FSQ groups of ``levels``: each group takes prod_j L_j
    grid points (:func:`finite_scalar_quantize`), so bits = n_groups * sum_j log2 L_j."""
    levels_array = _check_levels(levels)
    require(
        not isinstance(n_groups, bool) and isinstance(n_groups, (int, np.integer)) and n_groups >= 1,
        "n_groups",
        n_groups,
        "must be an integer >= 1",
    )
    return float(n_groups) * float(np.sum(np.log2(levels_array)))


# ----------------------------------------------------------------------------- estimator diagnostics

GRADIENT_ESTIMATORS = ESTIMATORS + ("gumbel-softmax", "reinforce")
MAX_ENUMERATED_CODES = 1 << 16  # K^N codes summed by expected_objective_gradient

__all__ += ["GRADIENT_ESTIMATORS", "GradientMoments", "estimator_gradient_moments", "expected_objective_gradient"]


class GradientMoments(NamedTuple):
    """Moments of one gradient estimator next to the exact gradient; each field is shaped like the logits."""

    mean: jax.Array  # (1/S) sum_s g_s, the Monte Carlo estimate of E[g]
    variance: jax.Array  # per coordinate (1/S) sum_s (g_s - mean)^2
    exact: jax.Array  # grad_logits E_{b ~ Cat(softmax(logits))}[f(b)], by enumeration


def _all_one_hot_codes(num_variables: int, num_classes: int, dtype) -> jax.Array:
    """Every code of N variables with K classes, (K^N, N, K) one-hot, in itertools.product order."""
    require(
        num_classes**num_variables <= MAX_ENUMERATED_CODES,
        "logits.shape",
        (num_variables, num_classes),
        f"enumeration needs K^N <= {MAX_ENUMERATED_CODES} codes",
    )
    indices = np.indices((num_classes,) * num_variables).reshape(num_variables, -1).T
    return jax.nn.one_hot(jnp.asarray(indices), num_classes, dtype=dtype)


def expected_objective_gradient(logits: jax.Array, objective) -> jax.Array:
    """Exact gradient of an expectation over categorical codes, by enumerating all K^N codes.

        L(logits) = E_{b ~ prod_n Cat(softmax(logits_n))}[f(b)] = sum_b prod_n q_n(b_n) f(b),
        q_n = softmax(logits_n),  returned: grad_logits L.

    The reference against which gradient estimators are measured, as in the small enumerable
    models of Paulus et al. (2021) and Liu et al. (2023).

    Args:
      logits: (N, K), with K^N at most ``MAX_ENUMERATED_CODES``.
      objective: f, a function of one (N, K) one-hot code to a scalar.

    Returns:
      (N, K) gradient.
    """
    logits = _check_logits(logits)
    require(logits.ndim == 2, "logits.shape", logits.shape, "must be (N, K): N categorical variables with K classes")
    codes = _all_one_hot_codes(*logits.shape, logits.dtype)
    values = jax.vmap(objective)(codes)

    def expected_value(logits):
        log_prob_codes = jnp.sum(codes * jax.nn.log_softmax(logits, axis=-1), axis=(1, 2))
        return jnp.sum(jnp.exp(log_prob_codes) * values)

    return jax.grad(expected_value)(logits)


def _estimator_gradient(key, logits, objective, estimator: str, tau, n_samples: int) -> jax.Array:
    """One draw g(key) of an estimator's gradient of E[f(b)] with respect to ``logits``."""
    if estimator == "reinforce":  # score function (Williams 1992): f(b) grad log q(b), b ~ q
        sample = jax.nn.one_hot(jax.random.categorical(key, logits), logits.shape[-1], dtype=logits.dtype)
        score = jax.grad(lambda x: jnp.sum(sample * jax.nn.log_softmax(x, axis=-1)))(logits)
        return objective(sample) * score

    def code_of(x):
        if estimator == "gumbel-softmax":  # f at the relaxed sample: the relaxed objective's gradient
            return gumbel_softmax(key, x, tau)
        return discrete_code(key, x, estimator, tau, n_samples)

    return jax.grad(lambda x: objective(code_of(x)))(logits)


def estimator_gradient_moments(
    key: jax.Array,
    logits: jax.Array,
    objective,
    estimator: str,
    tau=1.0,
    n_draws: int = 10_000,
    n_samples: int = 10,
) -> GradientMoments:
    """Mean and variance of a gradient estimator over ``n_draws`` keys, next to the exact gradient.

    With g_s = grad_logits f(code(k_s, logits)) for the keys k_s = ``jax.random.split(key, S)``:

        mean = (1/S) sum_s g_s,   variance = (1/S) sum_s (g_s - mean)^2   (per coordinate),
        exact = grad_logits E_{b ~ Cat(softmax(logits))}[f(b)]   (:func:`expected_objective_gradient`).

    From these: bias = mean - exact, with Monte Carlo standard error sqrt(sum(variance) / S);
    E||g - exact||^2 = ||bias||^2 + sum(variance). Estimators: those of :func:`discrete_code`
    (``st``, ``st-gumbel``, ``gumbel-rao`` with ``n_samples`` conditional draws, ``reinmax``);
    ``gumbel-softmax``, the gradient of f at the relaxed sample (an estimate of the gradient of
    the relaxed objective, biased for the discrete one); and ``reinforce``, the score-function
    estimator f(b) grad log q(b) (Williams 1992), unbiased. The comparison is the one Paulus et
    al. (2021) and Liu et al. (2023) make on small enumerable models.

    Pure: ``tau``, ``key`` and ``logits`` may be traced (``jit``, ``vmap`` over temperatures or
    keys); ``estimator``, ``n_draws`` and ``n_samples`` are static.

    Args:
      key: PRNG key, split into ``n_draws`` keys.
      logits: (N, K), with K^N at most ``MAX_ENUMERATED_CODES``.
      objective: f, a function of one (N, K) code to a scalar, differentiable in the code.
      estimator: one of ``GRADIENT_ESTIMATORS``.
      tau: temperature > 0 (ignored by ``st`` and ``reinforce``).
      n_draws: S >= 1, gradient draws averaged.
      n_samples: conditional Gumbel draws per code of ``gumbel-rao``.

    Returns:
      ``GradientMoments(mean, variance, exact)``, each (N, K).
    """
    require(estimator in GRADIENT_ESTIMATORS, "estimator", estimator, f"choose one of {', '.join(GRADIENT_ESTIMATORS)}")
    require(
        isinstance(n_draws, (int, np.integer)) and not isinstance(n_draws, bool) and n_draws >= 1,
        "n_draws",
        n_draws,
        "must be an integer >= 1",
    )
    logits = _check_logits(logits)
    require(logits.ndim == 2, "logits.shape", logits.shape, "must be (N, K): N categorical variables with K classes")
    exact = expected_objective_gradient(logits, objective)
    keys = jax.random.split(key, n_draws)
    grads = jax.vmap(lambda k: _estimator_gradient(k, logits, objective, estimator, tau, n_samples))(keys)
    # Moments of the deviations from the first draw: a deterministic estimator (st) gets a
    # variance of exactly 0, which a float32 mean of S equal values would not give.
    deviations = grads - grads[0]
    return GradientMoments(grads[0] + jnp.mean(deviations, axis=0), jnp.var(deviations, axis=0), exact)
