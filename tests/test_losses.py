"""Every loss term against a value computed by hand or by an independent implementation."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrae import losses


def test_reconstruction_loss_sums_each_image_and_averages_the_batch():
    x = jnp.zeros((2, 3, 4, 3))
    x_hat = jnp.ones((2, 3, 4, 3)) * 0.5
    # each image: 3 * 4 * 3 values of 0.25 = 9
    assert float(losses.reconstruction_loss(x, x_hat)) == pytest.approx(9.0)
    x_hat = x_hat.at[0].set(0.0)  # first image perfect: mean over images halves
    assert float(losses.reconstruction_loss(x, x_hat)) == pytest.approx(4.5)


def test_reconstruction_loss_equals_the_reported_metric():
    from jaxrae.metrics import reconstruction_error

    rng = np.random.default_rng(1)
    x, x_hat = rng.uniform(size=(5, 4, 4, 1)), rng.uniform(size=(5, 4, 4, 1))
    assert float(losses.reconstruction_loss(jnp.asarray(x), jnp.asarray(x_hat))) == pytest.approx(
        reconstruction_error(x, x_hat), rel=1e-5
    )


def test_rae_latent_penalty_is_half_squared_norm():
    z = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    assert float(losses.rae_latent_penalty(z)) == pytest.approx((0.5 * 25 + 0) / 2)


def test_gaussian_kl_closed_form():
    mean = jnp.array([[1.0, 0.0]])
    log_var = jnp.log(jnp.array([[2.0, 1.0]]))
    expected = 0.5 * ((1 + 2 - np.log(2) - 1) + 0.0)
    assert float(losses.gaussian_kl(mean, log_var)) == pytest.approx(expected, rel=1e-6)
    # a scalar (fixed) log variance broadcasts: CV-VAE
    assert float(losses.gaussian_kl(jnp.zeros((1, 3)), jnp.asarray(0.0))) == pytest.approx(0.0, abs=1e-7)


def test_gaussian_kl_matches_monte_carlo():
    key = jax.random.PRNGKey(0)
    mean, log_var = jnp.array([[0.3, -1.2]]), jnp.array([[0.4, -0.7]])
    z = losses.reparameterize(key, jnp.broadcast_to(mean, (200000, 2)), jnp.broadcast_to(log_var, (200000, 2)))
    std = jnp.exp(0.5 * log_var)
    log_q = jnp.sum(-0.5 * ((z - mean) / std) ** 2 - jnp.log(std), axis=-1)
    log_p = jnp.sum(-0.5 * z**2, axis=-1)
    assert float(jnp.mean(log_q - log_p)) == pytest.approx(float(losses.gaussian_kl(mean, log_var)), abs=0.01)


def test_decoder_l2_penalty_counts_kernels_only():
    params = {
        "Dense_0": {"kernel": jnp.array([[1.0, 2.0]]), "bias": jnp.array([100.0])},
        "SpectralNorm_0": {"layer_instance": {"kernel": jnp.array([3.0])}},
    }
    assert float(losses.decoder_l2_penalty(params)) == pytest.approx(1 + 4 + 9)


def test_gradient_penalty_of_a_linear_decoder():
    # D(z) = W z  =>  d/dz sum_p D_p^2 = 2 W^T W z, penalty = mean over (b, j) of its square
    w = jnp.array([[1.0, 2.0], [0.5, -1.0], [0.0, 3.0]])
    z = jnp.array([[0.2, -0.4], [1.0, 0.5]])
    decode = lambda c: c @ w.T
    grads = 2.0 * z @ (w.T @ w)
    assert float(losses.decoder_gradient_penalty(decode, z)) == pytest.approx(
        float(np.mean(np.square(grads))), rel=1e-6
    )


def _mmd_by_loops(z, p, scales):
    n, d = z.shape
    total = 0.0
    for s in scales:
        c = s * 2.0 * d
        k = lambda a, b, c=c: c / (c + np.sum((a - b) ** 2))
        zz = sum(k(z[i], z[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
        pp = sum(k(p[i], p[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
        zp = sum(k(z[i], p[j]) for i in range(n) for j in range(n)) / (n * n)
        total += zz + pp - 2 * zp
    return total


def test_imq_mmd_against_loops():
    rng = np.random.default_rng(0)
    z, p = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) + 1.0
    scales = (0.5, 1.0, 2.0)
    got = float(losses.imq_kernel_mmd(jnp.asarray(z), jnp.asarray(p), scales))
    assert got == pytest.approx(_mmd_by_loops(z, p, scales), rel=1e-5)
    # the unbiased estimate of identical distributions is near zero, of shifted ones positive
    assert got > 0.05
