"""Test likelihoods: the ELBO, the importance-weighted bound IWAE-k, and an importance-sampled
log p(x) for deterministic autoencoders sampled through an ex-post density.

Every function is pure and takes the model as callables, so it works for any architecture:

- ``log_px_given_z(x, z) -> (n,)``: the decoder's log-likelihood log p(x | z_i) of ONE image
  ``x`` (any shape, e.g. (H, W, C)) under each of ``n`` latent samples ``z`` (shape (n, d) for
  continuous codes, integer class indices (n, N) for N categorical variables). Build it from
  :func:`bernoulli_log_likelihood` or :func:`gaussian_log_likelihood`, e.g.
  ``lambda x, z: bernoulli_log_likelihood(x, decode(params, z))``.
- ``log_prior(z) -> (n,)``: the density the latent codes are generated from: the VAE's prior
  (:func:`standard_normal_log_prob`, :func:`uniform_categorical_log_prob`) or an ex-post density
  (``jaxrae.density.GaussianMixture.log_prob``, ``CategoricalMixture.log_prob``).
- a proposal q(z | x) per image, as arrays: :class:`GaussianProposal` (mean, log variance) or
  :class:`CategoricalProposal` (normalized log-probabilities per variable and class).

Every estimator takes a batch of B images ``x`` (B, ...) with a proposal of B rows and returns one
number per image, shape (B,). Seeds (runs) are one ``jax.vmap`` away: map over the decoder
parameters inside the callables, the proposals and the keys together. Memory: the k samples per
image are drawn and decoded ``chunk_size`` at a time in a ``lax.scan`` that keeps a running
log-sum-exp, so a program holds B * chunk_size decoded images, whatever k is. Sample i of image b
is drawn from ``fold_in(split(key, B)[b], i)``, so the samples, and hence the estimates, do not
depend on ``chunk_size`` (results agree to float rounding across chunk sizes).

Which bound for which model
---------------------------
- Gaussian VAE and CV-VAE (fixed variance): :func:`elbo` with the analytic KL to N(0, I), and
  :func:`iwae_bound` (Burda et al. 2016, "Importance Weighted Autoencoders", Sec. 3), whose
  k = 5000 value is the test log-likelihood estimate of their Sec. 5.
- Categorical VAE (dvae, dvae-st, drae-noise): the bounds of the DISCRETE model, with the exact
  categorical posterior q(c | x) = prod_v softmax(logits_v), the uniform prior p(c) = K^-N and
  the decoder evaluated at exact one-hot samples c ~ q(c | x). Jang et al. (2017, "Categorical
  Reparameterization with Gumbel-Softmax", Table 2) report the negative variational lower bound
  of their categorical VAE with the categorical KL(q(c | x) || Uniform); Paulus et al. (2021,
  "Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient Estimator") report it for
  models trained with straight-through estimators, whose decoder sees one-hot codes. Evaluating
  the decoder at one-hot samples makes every number here a bound on the discrete model's log
  p(x), whatever estimator or temperature trained it. A relaxed-density bound (Maddison et al.
  2017, the Concrete density of a point on the simplex) or a decoder fed relaxed samples would
  bound the likelihood of a different, continuous model; it is not comparable across
  temperatures or with VQ/FSQ, so it is not used.
- Deterministic autoencoders with an ex-post density (ae and the rae family with a GMM; dae/drae
  with a mixture of categoricals; vqvae and fsq with a mixture over their codes):
  :func:`ex_post_log_likelihood`, importance sampling with the ex-post density as the prior
  and a proposal centred on the encoder's code. Ghosh et al. (2020) report no likelihood for
  RAEs; this estimate puts the RAE + ex-post density and the VAE on one number.

Units: all functions return log p(x) in nats per image; :func:`nll_units` converts to the
negative log-likelihood in nats and bits per dimension.

This module imports only jax, numpy, chex and jaxrae's losses, relax, density and errors, so it
is usable on its own: ``from jaxrae.likelihood import iwae_bound``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import logsumexp

from jaxrae import losses, relax
from jaxrae.density import CategoricalMixture, GaussianMixture
from jaxrae.errors import require

__all__ = [
    "CategoricalProposal",
    "GaussianProposal",
    "NllUnits",
    "bernoulli_log_likelihood",
    "categorical_proposal",
    "elbo",
    "ex_post_log_likelihood",
    "fit_observation_variance",
    "gaussian_log_likelihood",
    "gaussian_proposal",
    "importance_sampled_log_likelihood",
    "iwae_bound",
    "nll_units",
    "proposal_grid_estimates",
    "select_proposal_scale",
    "standard_normal_log_prob",
    "uniform_categorical_log_prob",
]

#: log p(x | z) of one image under n codes: (x, z (n, ...)) -> (n,).
LogLikelihoodFn = Callable[[jax.Array, jax.Array], jax.Array]
#: log density of n codes: z (n, ...) -> (n,).
LogDensityFn = Callable[[jax.Array], jax.Array]


# ----------------------------------------------------------------------------- decoder p(x | z)


def bernoulli_log_likelihood(x: chex.Array, logits: chex.Array) -> chex.Array:
    """log p(x | z) = sum_{h,w,c} [x l - max(l, 0) - log1p(exp(-|l|))] over the last three axes.

    Independent Bernoulli pixels with p(x_p = 1 | z) = sigmoid(l_p) (Kingma & Welling 2014,
    Appendix C.1), in the numerically stable form of
    :func:`jaxrae.losses.binary_cross_entropy_with_logits`. ``x`` (H, W, C) and ``logits``
    (..., H, W, C) broadcast, so one image against n decoded samples gives (n,).
    """
    chex.assert_rank(logits, {3, 4, 5})
    return -jnp.sum(losses.binary_cross_entropy_with_logits(x, logits), axis=(-3, -2, -1))


def gaussian_log_likelihood(x: chex.Array, x_hat: chex.Array, variance=0.5) -> chex.Array:
    """log N(x; x_hat, variance I) = -0.5 sum_p [(x_p - x_hat_p)^2 / variance + log(2 pi variance)].

    Summed over the last three axes (H, W, C); ``x`` and ``x_hat`` broadcast. The summed squared
    error that jaxrae trains with (:func:`jaxrae.losses.reconstruction_loss`, the official VAE
    loss of Ghosh et al. 2020) is this with variance = 1/2:

        ||x - x_hat||^2 = -log N(x; x_hat, I/2) - (D/2) log(pi),

    so a likelihood at variance 1/2 is the training objective's. A variance fitted by maximum
    likelihood on training residuals (:func:`fit_observation_variance`) is the honest choice for
    a reported likelihood. The density is on R^D, so it is comparable between Gaussian decoders,
    not with a Bernoulli decoder's probability of binary pixels.
    """
    chex.assert_rank(x_hat, {3, 4, 5})
    variance = jnp.asarray(variance, x_hat.dtype)
    squared = jnp.sum(jnp.square(x - x_hat), axis=(-3, -2, -1))
    n_dims = math.prod(x_hat.shape[-3:])
    return -0.5 * (squared / variance + n_dims * jnp.log(2.0 * jnp.pi * variance))


def fit_observation_variance(x: chex.Array, x_hat: chex.Array) -> chex.Array:
    """Maximum-likelihood shared observation variance: sigma^2 = (1 / (B D)) sum_{b,p} (x - x_hat)^2.

    Setting d/d sigma^2 of sum_b log N(x_b; x_hat_b, sigma^2 I) = -0.5 sum_b sum_p [1/sigma^2 -
    r^2/sigma^4] to zero gives the mean squared residual per pixel (Bishop PRML Eq. 1.56 with a
    known mean). Fit it on TRAINING images and their reconstructions (x_hat = D(E(x)), or the
    decoded posterior mean for a VAE), then evaluate test likelihoods with it.
    """
    chex.assert_equal_shape([x, x_hat])
    chex.assert_rank(x, 4)
    return jnp.mean(jnp.square(x - x_hat))


# ----------------------------------------------------------------------------- priors


def standard_normal_log_prob(z: chex.Array) -> chex.Array:
    """log N(z; 0, I) = -0.5 sum_j z_j^2 - (d/2) log(2 pi): (n, d) -> (n,). The VAE prior."""
    chex.assert_rank(z, 2)
    return -0.5 * jnp.sum(jnp.square(z), axis=-1) - 0.5 * z.shape[-1] * math.log(2.0 * math.pi)


def uniform_categorical_log_prob(codes: chex.Array, n_classes: int) -> chex.Array:
    """log p(c) = -N log K for every code c of N variables with K classes: (n, N) -> (n,).

    The discrete VAE's prior (Jang et al. 2017; Rolfe 2017).
    """
    chex.assert_rank(codes, 2)
    return jnp.full(codes.shape[:1], -codes.shape[1] * math.log(n_classes), jnp.result_type(float))


# ----------------------------------------------------------------------------- proposals


class GaussianProposal(NamedTuple):
    """q(z | x_b) = N(mean[b], diag(exp(log_var[b]))): mean (B, d), log_var broadcastable to it.

    A Gaussian encoder's posterior (log_var per image), a CV-VAE's (log_var a scalar), or the
    proposal of :func:`gaussian_proposal` around a deterministic code.
    """

    mean: jax.Array
    log_var: jax.Array


class CategoricalProposal(NamedTuple):
    """q(c | x_b) = prod_v Cat(c_v; exp(log_probs[b, v])): log_probs (B, N, K), normalized over K.

    Build it with :func:`categorical_proposal`; classes with log-probability -inf are never drawn.
    """

    log_probs: jax.Array


Proposal = GaussianProposal | CategoricalProposal


def gaussian_proposal(codes: chex.Array, scale) -> GaussianProposal:
    """q(z | x) = N(E(x), scale^2 I): an isotropic Gaussian around deterministic codes (B, d).

    The proposal for a deterministic continuous autoencoder with an ex-post density; choose
    ``scale`` on training images with :func:`select_proposal_scale`.
    """
    codes = jnp.asarray(codes)
    _require_positive("scale", scale)
    chex.assert_rank(codes, 2)
    log_var = jnp.broadcast_to(2.0 * jnp.log(jnp.asarray(scale, codes.dtype)), codes.shape)
    return GaussianProposal(codes, log_var)


def categorical_proposal(logits: chex.Array, temperature=1.0, uniform_weight=0.0) -> CategoricalProposal:
    """q(c_v = j | x) = (1 - eps) softmax(logits_v / T)_j + eps / |S_v| [j in S_v], per variable v.

    logits (B, N, K); S_v = the classes with a finite logit (padding classes carry -inf, e.g. FSQ
    dimensions with fewer levels than K), eps = ``uniform_weight``, T = ``temperature``.

    - The VAE posterior q(c | x): the encoder's logits, T = 1, eps = 0.
    - A deterministic discrete autoencoder (dae/drae): its encoder logits; VQ-VAE: the negative
      squared distances -||z_e - e_j||^2 to the codebook entries; FSQ: the negative squared
      distances of each bounded coordinate to its grid levels. T widens the proposal around the
      encoder's argmax code.

    Why the uniform mass: importance sampling is unbiased for p(x) = sum_c p_ex(c) p(x | c) only if
    q(c | x) > 0 wherever p_ex(c) p(x | c) > 0 (otherwise those codes' mass is silently dropped and
    the estimate is biased low). A saturated softmax underflows to exactly 0 for most classes; eps
    > 0 keeps every class of S_v at probability >= eps / |S_v|, so the estimator covers the ex-post
    density's support and the importance weights are bounded by p_ex(c) p(x | c) |S_v|^N / eps^N.
    """
    logits = jnp.asarray(logits)
    chex.assert_rank(logits, 3)
    _require_positive("temperature", temperature)
    _require_in_unit_interval("uniform_weight", uniform_weight)
    log_probs = jax.nn.log_softmax(logits / temperature, axis=-1)
    support = jnp.isfinite(logits)
    log_uniform = jnp.where(
        support, -jnp.log(jnp.sum(support, axis=-1, keepdims=True).astype(log_probs.dtype)), -jnp.inf
    )
    if isinstance(uniform_weight, (int, float)) and uniform_weight == 0:
        return CategoricalProposal(log_probs)
    weight = jnp.asarray(uniform_weight, log_probs.dtype)
    mixed = jnp.logaddexp(jnp.log1p(-weight) + log_probs, jnp.log(weight) + log_uniform)
    return CategoricalProposal(mixed)


def _draw(proposal: Proposal, key: jax.Array, index: jax.Array) -> jax.Array:
    """Sample ``index`` of one image's proposal: its own key fold_in(key, index), so the draws do
    not depend on how the k samples are chunked."""
    sample_key = jax.random.fold_in(key, index)
    if isinstance(proposal, GaussianProposal):
        eps = jax.random.normal(sample_key, proposal.mean.shape, proposal.mean.dtype)
        return proposal.mean + jnp.exp(0.5 * proposal.log_var) * eps
    return jax.random.categorical(sample_key, proposal.log_probs, axis=-1).astype(jnp.int32)


def _proposal_log_prob(proposal: Proposal, z: jax.Array) -> jax.Array:
    """log q(z_i | x) of one image's proposal for n samples: (n, ...) -> (n,)."""
    if isinstance(proposal, GaussianProposal):
        var = jnp.exp(proposal.log_var)
        per_dim = jnp.square(z - proposal.mean) / var + proposal.log_var + math.log(2.0 * math.pi)
        return -0.5 * jnp.sum(per_dim, axis=-1)
    n_vars = proposal.log_probs.shape[0]
    return jnp.sum(proposal.log_probs[jnp.arange(n_vars)[None, :], z], axis=-1)


def _model_prior(proposal: Proposal) -> LogDensityFn:
    """The VAE's own prior for a posterior of this type: N(0, I) or Uniform(K)^N."""
    if isinstance(proposal, GaussianProposal):
        return standard_normal_log_prob
    n_classes = proposal.log_probs.shape[-1]
    return lambda codes: uniform_categorical_log_prob(codes, n_classes)


# ----------------------------------------------------------------------------- chunked sampling


def _chunked_over_samples(key, x, proposal, per_sample, k, chunk_size, reduce):
    """Reduce per_sample(x, z, q) over k samples z ~ q, chunk_size at a time, for every image.

    ``reduce`` is "logsumexp" (running log-sum-exp; padded samples count as -inf) or "sum"
    (padded samples count as 0). Returns (B,).
    """
    chunk = min(chunk_size, k)
    n_chunks = -(-k // chunk)
    image_keys = jax.random.split(key, x.shape[0])

    def one_image(image_key, image, q):
        def step(total, chunk_index):
            index = chunk_index * chunk + jnp.arange(chunk)
            z = jax.vmap(lambda i: _draw(q, image_key, i))(index)
            values = per_sample(image, z, q)
            chex.assert_shape(values, (chunk,))
            valid = index < k
            if reduce == "logsumexp":
                return jnp.logaddexp(total, logsumexp(jnp.where(valid, values, -jnp.inf))), None
            return total + jnp.sum(jnp.where(valid, values, 0.0)), None

        init = jnp.asarray(-jnp.inf if reduce == "logsumexp" else 0.0, jnp.result_type(float))
        total, _ = lax.scan(step, init, jnp.arange(n_chunks))
        return total

    return jax.vmap(one_image)(image_keys, x, proposal)


def _log_weights(log_px_given_z: LogLikelihoodFn, log_prior: LogDensityFn):
    """log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x)."""

    def log_weight(image, z, q):
        log_px = log_px_given_z(image, z)
        log_pz = log_prior(z)
        chex.assert_shape([log_px, log_pz], (z.shape[0],))
        return log_px + log_pz - _proposal_log_prob(q, z)

    return log_weight


# ----------------------------------------------------------------------------- estimators


def importance_sampled_log_likelihood(
    key: jax.Array,
    x: chex.Array,
    proposal: Proposal,
    log_prior: LogDensityFn,
    log_px_given_z: LogLikelihoodFn,
    *,
    k: int,
    chunk_size: int = 1000,
) -> chex.Array:
    """log p_hat(x) = log (1/k) sum_{i=1}^k p(x | z_i) p(z_i) / q(z_i | x),  z_i ~ q(z | x).

    Importance sampling of p(x) = E_q[p(x | z) p(z) / q(z | x)] (e.g. Bishop PRML Sec. 11.1.4;
    Burda et al. 2016, Sec. 3), computed with a log-sum-exp over the k log-weights, chunk_size
    samples at a time. p_hat(x) is unbiased for p(x) wherever q covers p(z) p(x | z); by Jensen,
    E[log p_hat(x)] <= log p(x), increasing in k and converging to log p(x) as k -> infinity
    (Burda et al. 2016, Theorem 1). With the posterior as q it is exact for every sample.

    Args:
      key: one PRNG key for the whole batch.
      x: B images (B, ...).
      proposal: q(z | x_b) for each image, B rows.
      log_prior: log p(z): (n, ...) -> (n,).
      log_px_given_z: log p(x | z) of one image under n codes -> (n,).
      k: samples per image, >= 1.
      chunk_size: samples per image decoded at once, >= 1; memory is O(B * chunk_size).

    Returns:
      (B,) estimates of log p(x_b) in nats.
    """
    x = jnp.asarray(x)
    _check_estimator_args(x, proposal, k=k, chunk_size=chunk_size)
    proposal = _broadcast_proposal(proposal)
    total = _chunked_over_samples(key, x, proposal, _log_weights(log_px_given_z, log_prior), k, chunk_size, "logsumexp")
    return total - math.log(k)


def iwae_bound(
    key: jax.Array,
    x: chex.Array,
    posterior: Proposal,
    log_px_given_z: LogLikelihoodFn,
    *,
    k: int,
    chunk_size: int = 1000,
) -> chex.Array:
    """IWAE-k = log (1/k) sum_{i=1}^k p(x | z_i) p(z_i) / q(z_i | x),  z_i ~ q(z | x), for a VAE.

    Burda et al. (2016, Sec. 3) with the model's own prior: N(0, I) for a GaussianProposal (VAE,
    CV-VAE), the uniform K^-N for a CategoricalProposal (the discrete VAE, evaluated as the
    discrete model: exact categorical samples and probabilities, see the module docstring).
    IWAE-1 is an unbiased one-sample ELBO estimate; E[IWAE-k] increases with k to log p(x); Burda
    et al. report IWAE-5000 as the test log-likelihood. (B,) values in nats; see
    :func:`importance_sampled_log_likelihood` for the arguments.
    """
    _check_proposal_type(posterior)
    return importance_sampled_log_likelihood(
        key, x, posterior, _model_prior(posterior), log_px_given_z, k=k, chunk_size=chunk_size
    )


def ex_post_log_likelihood(
    key: jax.Array,
    x: chex.Array,
    proposal: Proposal,
    density: GaussianMixture | CategoricalMixture,
    log_px_given_z: LogLikelihoodFn,
    *,
    k: int,
    chunk_size: int = 1000,
) -> chex.Array:
    """log p(x) ~= log (1/k) sum_i p(x | z_i) p_ex(z_i) / q(z_i | x) for a deterministic autoencoder.

    The generative model of an RAE is z ~ p_ex (the ex-post density fitted on training codes,
    Ghosh et al. 2020 Sec. 4) followed by the decoder's likelihood p(x | z); its marginal
    likelihood is estimated by importance sampling (:func:`importance_sampled_log_likelihood`)
    with a proposal around the encoder's code: :func:`gaussian_proposal` for a GaussianMixture,
    :func:`categorical_proposal` (with uniform mass, so that it covers the mixture's support)
    for a CategoricalMixture. The encoder is only the proposal: a poor one makes the estimate
    noisier and lower in expectation, never higher, so the estimate is conservative for any
    encoder. ``density`` is one (unstacked) fit; vmap over runs for stacked fits.
    """
    if isinstance(density, GaussianMixture):
        require(
            isinstance(proposal, GaussianProposal),
            "proposal",
            type(proposal).__name__,
            "a GaussianMixture density needs a GaussianProposal",
        )
        require(
            proposal.mean.shape[-1] == density.dim,
            "proposal.mean",
            tuple(proposal.mean.shape),
            f"must have the density's dimension {density.dim} in its last axis",
        )
    else:
        require(
            isinstance(density, CategoricalMixture),
            "density",
            type(density).__name__,
            "must be a jaxrae.density.GaussianMixture or CategoricalMixture",
        )
        require(
            isinstance(proposal, CategoricalProposal),
            "proposal",
            type(proposal).__name__,
            "a CategoricalMixture density needs a CategoricalProposal",
        )
        require(
            proposal.log_probs.shape[-2:] == (density.n_vars, density.n_classes),
            "proposal.log_probs",
            tuple(proposal.log_probs.shape),
            f"must end in (n_vars, n_classes) = ({density.n_vars}, {density.n_classes})",
        )
    return importance_sampled_log_likelihood(
        key, x, proposal, density.log_prob, log_px_given_z, k=k, chunk_size=chunk_size
    )


def elbo(
    key: jax.Array,
    x: chex.Array,
    posterior: Proposal,
    log_px_given_z: LogLikelihoodFn,
    *,
    n_samples: int = 1,
    chunk_size: int = 1000,
) -> chex.Array:
    """ELBO = E_q[log p(x | z)] - KL(q(z | x) || p(z)), the expectation by n_samples draws.

    Kingma & Welling (2014), Eq. 10: the reconstruction term estimated by sampling, the KL exact.
    - GaussianProposal (VAE; CV-VAE with a scalar log_var): KL(N(mu, sigma^2) || N(0, I)) =
      0.5 sum_j (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1) (:func:`jaxrae.losses.gaussian_kl`).
    - CategoricalProposal (discrete VAE): sum over the N variables of KL(q_v || Uniform(K)) =
      log K - H(q_v) (:func:`jaxrae.relax.categorical_kl_uniform`), and the decoder evaluated at
      exact one-hot samples c ~ q(c | x): the bound of the discrete model that Jang et al. (2017)
      and Paulus et al. (2021) report (module docstring).
    Returns (B,) values in nats; -elbo is the "test -ELBO".
    """
    x = jnp.asarray(x)
    _check_estimator_args(x, posterior, k=n_samples, chunk_size=chunk_size, k_field="n_samples")
    posterior = _broadcast_proposal(posterior)
    reconstruction = (
        _chunked_over_samples(
            key, x, posterior, lambda image, z, q: log_px_given_z(image, z), n_samples, chunk_size, "sum"
        )
        / n_samples
    )
    if isinstance(posterior, GaussianProposal):
        kl = jax.vmap(lambda m, v: losses.gaussian_kl(m[None], v[None]))(posterior.mean, posterior.log_var)
    else:
        kl = jnp.sum(relax.categorical_kl_uniform(posterior.log_probs), axis=-1)
    return reconstruction - kl


# ----------------------------------------------------------------------------- proposal choice


def proposal_grid_estimates(
    key: jax.Array,
    x: chex.Array,
    proposals: Proposal,
    log_prior: LogDensityFn,
    log_px_given_z: LogLikelihoodFn,
    *,
    k: int,
    chunk_size: int = 1000,
) -> chex.Array:
    """Mean over the images of log p_hat(x) for each of G candidate proposals: (G,).

    ``proposals`` is a proposal whose arrays carry a leading grid axis (G, B, ...), e.g. Gaussian
    proposals at several scales or categorical proposals at several temperatures. Every candidate
    uses the same key, hence the same noise (common random numbers), so differences between
    candidates are not drowned by sampling noise. Candidates are evaluated one after another
    (lax.map), so memory is that of one estimate.
    """

    def estimate(q):
        return jnp.mean(
            importance_sampled_log_likelihood(key, x, q, log_prior, log_px_given_z, k=k, chunk_size=chunk_size)
        )

    return lax.map(estimate, proposals)


def select_proposal_scale(
    key: jax.Array,
    x_train: chex.Array,
    codes_train: chex.Array,
    log_prior: LogDensityFn,
    log_px_given_z: LogLikelihoodFn,
    scales,
    *,
    k: int = 100,
    chunk_size: int = 1000,
):
    """Pick s for q(z | x) = N(E(x), s^2 I) from a grid by the mean estimate on training images.

    For every s in ``scales`` the mean of log p_hat(x) over a training subset (``x_train`` with
    its codes E(x_train)); returns (the s with the largest mean, the (G,) means). Since
    E[log p_hat(x)] <= log p(x) for every proposal, the largest mean is the tightest estimate: a
    scale too small misses the posterior mass away from E(x), one too large wastes samples where
    p(x | z) is negligible. Choosing on training images keeps the test set untouched; a few
    hundred images and k ~ 100 are enough to rank a log-spaced grid such as 0.01 ... 1.
    """
    scales = np.asarray(scales, dtype=float)
    require(
        scales.ndim == 1 and scales.size >= 1 and bool(np.all(scales > 0)),
        "scales",
        scales.tolist(),
        "must be a non-empty list of numbers > 0",
    )
    codes_train = jnp.asarray(codes_train)
    chex.assert_rank(codes_train, 2)
    grid = jnp.asarray(scales, codes_train.dtype)
    log_var = 2.0 * jnp.log(grid)[:, None, None] * jnp.ones((1,) + codes_train.shape, codes_train.dtype)
    proposals = GaussianProposal(jnp.broadcast_to(codes_train, log_var.shape), log_var)
    means = proposal_grid_estimates(key, x_train, proposals, log_prior, log_px_given_z, k=k, chunk_size=chunk_size)
    return grid[jnp.argmax(means)], means


# ----------------------------------------------------------------------------- units


class NllUnits(NamedTuple):
    """A negative log-likelihood in nats per image and in bits per dimension."""

    nats: jax.Array
    bits_per_dim: jax.Array


def nll_units(log_px: chex.Array, n_dims: int) -> NllUnits:
    """NLL = -log p(x) in nats, and bits per dimension = NLL / (D ln 2), D = pixels x channels.

    The per-image conversion (e.g. Theis et al. 2016, "A note on the evaluation of generative
    models"); average over the images afterwards. For binary pixels both are negative
    log-probabilities; for a Gaussian decoder they are a density on [0, 1]^D, comparable only
    between continuous models (add D log 256 after rescaling to compare with 8-bit data).
    """
    require(
        isinstance(n_dims, (int, np.integer)) and not isinstance(n_dims, bool) and n_dims >= 1,
        "n_dims",
        n_dims,
        "must be an integer >= 1",
    )
    nll = -jnp.asarray(log_px)
    return NllUnits(nll, nll / (n_dims * math.log(2.0)))


# ----------------------------------------------------------------------------- checks


def _require_positive(field, value):
    try:
        concrete = np.asarray(value, dtype=float)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return  # traced inside a caller's jit or vmap: cannot be inspected
    require(
        bool(np.all(concrete > 0)) and bool(np.all(np.isfinite(concrete))), field, value, "must be a finite number > 0"
    )


def _require_in_unit_interval(field, value):
    try:
        concrete = np.asarray(value, dtype=float)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    require(bool(np.all((concrete >= 0) & (concrete < 1))), field, value, "must be in [0, 1)")


def _check_positive_int(field, value):
    require(
        isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1,
        field,
        value,
        "must be an integer >= 1",
    )


def _check_proposal_type(proposal):
    require(
        isinstance(proposal, (GaussianProposal, CategoricalProposal)),
        "proposal",
        type(proposal).__name__,
        "must be a GaussianProposal or a CategoricalProposal",
    )


def _check_estimator_args(x, proposal, *, k, chunk_size, k_field="k"):
    """k and chunk_size are integers >= 1; the proposal is one of ours with one row per image."""
    _check_positive_int(k_field, k)
    _check_positive_int("chunk_size", chunk_size)
    _check_proposal_type(proposal)
    require(x.ndim >= 1 and x.shape[0] >= 1, "x", tuple(x.shape), "must be a batch of images (B, ...) with B >= 1")
    if isinstance(proposal, GaussianProposal):
        mean = jnp.asarray(proposal.mean)
        require(
            mean.ndim == 2 and mean.shape[0] == x.shape[0],
            "proposal.mean",
            tuple(mean.shape),
            f"must have shape (B, d) with B = {x.shape[0]} rows, one per image of x",
        )
        log_var_shape = tuple(jnp.shape(proposal.log_var))
        require(
            _broadcastable(log_var_shape, mean.shape),
            "proposal.log_var",
            log_var_shape,
            f"must broadcast to the mean's shape {tuple(mean.shape)}",
        )
    else:
        log_probs = jnp.asarray(proposal.log_probs)
        require(
            log_probs.ndim == 3 and log_probs.shape[0] == x.shape[0],
            "proposal.log_probs",
            tuple(log_probs.shape),
            f"must have shape (B, N, K) with B = {x.shape[0]} rows, one per image of x",
        )


def _broadcastable(shape, target):
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def _broadcast_proposal(proposal: Proposal) -> Proposal:
    """Give every field the full batch shape (a CV-VAE's scalar log variance becomes (B, d))."""
    if isinstance(proposal, GaussianProposal):
        mean = jnp.asarray(proposal.mean)
        return GaussianProposal(mean, jnp.broadcast_to(jnp.asarray(proposal.log_var, mean.dtype), mean.shape))
    return CategoricalProposal(jnp.asarray(proposal.log_probs))
