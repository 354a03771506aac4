"""Loss terms as pure functions, usable without the trainer.

Ghosh et al. (2020), "From Variational to Deterministic Autoencoders", Eq. (11):

    L_RAE = L_rec + beta * L_z + lambda * L_reg

with L_rec the reconstruction error, L_z a latent regularizer and L_reg a decoder regularizer.
Each term below is one entry of the method grid: :mod:`jaxrae.grid` picks a term per registry
entry and weights it. Every function returns a scalar averaged over the batch.

The reconstruction error is summed over an image's pixels (a log-likelihood, as in the official
VAE loss of Ghosh et al.); :mod:`jaxrae.methods` converts the paper's beta and lambda to it.
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp


def reconstruction_loss(x: chex.Array, x_hat: chex.Array) -> chex.Array:
    """Squared error summed over an image's pixels and channels, averaged over the batch:
    mean_b sum_{h,w,c} (x - x_hat)^2.

    The L2 reconstruction term of Ghosh et al. (2020); up to constants the negative
    log-likelihood of a Gaussian decoder with variance 1/2 (the form of the official VAE loss).
    Equal to :func:`jaxrae.metrics.reconstruction_error` on the same images.
    """
    chex.assert_equal_shape([x, x_hat])
    chex.assert_rank(x, 4)
    return jnp.mean(jnp.sum(jnp.square(x - x_hat), axis=(1, 2, 3)))


def rae_latent_penalty(z: chex.Array) -> chex.Array:
    """L_z^RAE = 0.5 * ||z||_2^2, averaged over the batch (Ghosh et al. 2020, Eq. 11)."""
    chex.assert_rank(z, 2)
    return jnp.mean(0.5 * jnp.sum(jnp.square(z), axis=-1))


def gaussian_kl(mean: chex.Array, log_var: chex.Array) -> chex.Array:
    """KL(N(mu, diag sigma^2) || N(0, I)) = 0.5 * sum_j (mu_j^2 + sigma_j^2 - log sigma_j^2 - 1).

    Kingma & Welling (2014), Appendix B; averaged over the batch. ``log_var`` broadcasts, so a
    fixed variance (CV-VAE) passes a scalar.
    """
    chex.assert_rank(mean, 2)
    log_var = jnp.broadcast_to(log_var, mean.shape)
    per_dim = jnp.square(mean) + jnp.exp(log_var) - log_var - 1.0
    return jnp.mean(0.5 * jnp.sum(per_dim, axis=-1))


def reparameterize(key: chex.PRNGKey, mean: chex.Array, log_var: chex.Array) -> chex.Array:
    """z = mu + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2014): the VAE's decoder noise."""
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * log_var) * eps


def decoder_l2_penalty(decoder_params) -> chex.Array:
    """L_reg^L2 = sum of squared decoder weight matrices and kernels (biases excluded).

    Ghosh et al. (2020), RAE-L2: L_REG = ||theta||_2^2 on the decoder; like the official code
    (Keras ``kernel_regularizer``) only kernels are penalised.
    """
    leaves = jax.tree_util.tree_leaves_with_path(decoder_params)
    kernels = [leaf for path, leaf in leaves if "kernel" in jax.tree_util.keystr(path)]
    return sum(jnp.sum(jnp.square(k)) for k in kernels)


def decoder_gradient_penalty(decode: Callable[[chex.Array], chex.Array], z: chex.Array) -> chex.Array:
    """L_reg^GP = mean_{b, j} ( d/dz_bj sum_p D(z_b)_p^2 )^2.

    Ghosh et al. (2020), RAE-GP: a penalty on the decoder's gradient at the codes, in the exact
    form of the official implementation (the gradient of the summed squared decoder output with
    respect to the code, squared and averaged over batch and code dimensions), which the
    paper's lambda is tuned for. One vector-Jacobian product, so it costs about one backward pass.
    ``decode`` maps a (B, D) code to images; each image depends only on its own code, so the
    gradient of the batch sum gives every row's own gradient.
    """
    chex.assert_rank(z, 2)
    grad = jax.grad(lambda codes: jnp.sum(jnp.square(decode(codes))))(z)
    return jnp.mean(jnp.square(grad))


def imq_kernel_mmd(z: chex.Array, z_prior: chex.Array, scales=(0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)) -> chex.Array:
    """Unbiased MMD^2 between codes and prior samples with inverse multiquadratic kernels.

    k_C(x, y) = C / (C + ||x - y||^2), summed over C = s * 2 * d * sigma_prior^2 for s in scales
    with sigma_prior = 1 (Tolstikhin et al. 2018, WAE-MMD, Sec. 4 and their code). With n codes,
    MMD^2 = 1/(n(n-1)) sum_{i!=j} [k(z_i, z_j) + k(p_i, p_j)] - 2/n^2 sum_{i,j} k(z_i, p_j).
    """
    chex.assert_equal_shape([z, z_prior])
    chex.assert_rank(z, 2)
    n, d = z.shape

    def sq_dists(a, b):
        return jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)

    d_zz, d_pp, d_zp = sq_dists(z, z), sq_dists(z_prior, z_prior), sq_dists(z, z_prior)
    off_diagonal = 1.0 - jnp.eye(n, dtype=z.dtype)
    total = 0.0
    for s in scales:
        c = s * 2.0 * d
        k_zz = c / (c + d_zz)
        k_pp = c / (c + d_pp)
        k_zp = c / (c + d_zp)
        total = total + (jnp.sum((k_zz + k_pp) * off_diagonal) / (n * (n - 1)) - 2.0 * jnp.sum(k_zp) / (n * n))
    return total


def binary_cross_entropy_with_logits(x: chex.Array, logits: chex.Array) -> chex.Array:
    """Elementwise -log Bernoulli(x; sigmoid(l)) = max(l, 0) - l * x + log1p(exp(-|l|)).

    Equal to -[x log sigmoid(l) + (1 - x) log(1 - sigmoid(l))], written in the form that never
    exponentiates a large positive number: exp(-|l|) <= 1, so the value and its gradient
    sigmoid(l) - x stay finite for any finite logit (the form of TensorFlow's
    ``sigmoid_cross_entropy_with_logits``). ``x`` may be grey levels in [0, 1] (the continuous
    Bernoulli's unnormalized cross-entropy) or binary pixels; ``x`` and ``logits`` broadcast.
    """
    return jnp.maximum(logits, 0.0) - logits * x + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def bernoulli_reconstruction_loss(x: chex.Array, logits: chex.Array) -> chex.Array:
    """Binary cross-entropy with logits summed over an image's pixels and channels, averaged over
    the batch: mean_b sum_{h,w,c} [max(l, 0) - l x + log1p(exp(-|l|))].

    The negative log-likelihood -log p(x | z) of a decoder with independent Bernoulli pixels
    p(x_p = 1 | z) = sigmoid(l_p), the observation model of the binarized-MNIST VAEs (Kingma &
    Welling 2014, Appendix C.1; Burda et al. 2016; Jang et al. 2017). The decoder outputs logits,
    not probabilities, so the loss stays finite when a pixel saturates. Summed over pixels like
    :func:`reconstruction_loss`, so the two decoder likelihoods are on the same per-image scale.
    """
    chex.assert_equal_shape([x, logits])
    chex.assert_rank(x, 4)
    return jnp.mean(jnp.sum(binary_cross_entropy_with_logits(x, logits), axis=(1, 2, 3)))
