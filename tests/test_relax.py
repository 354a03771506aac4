"""Tests of jaxrae.relax: sampling distributions, estimator gradients against their formulas,
the Concrete density, and the quantizers. Shapes are tiny so that compile time stays small."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrae.errors import ConfigError
from jaxrae.relax import (
    ESTIMATORS,
    GRADIENT_ESTIMATORS,
    GradientMoments,
    categorical_kl_uniform,
    conditional_gumbel,
    constant_temperature,
    discrete_code,
    estimator_gradient_moments,
    expected_objective_gradient,
    exponential_temperature,
    finite_scalar_quantize,
    fsq_codes_from_index,
    gumbel_rao,
    gumbel_softmax,
    reinmax,
    relaxed_bernoulli,
    relaxed_one_hot_log_prob,
    straight_through,
    straight_through_sample,
    vector_quantize,
)

EULER_GAMMA = 0.5772156649015329


def rng(seed):
    """A PRNG key of the "rbg" implementation.

    The functions under test take any key. On CPU, every jitted function that draws from a
    threefry key spends about a second compiling threefry, which would dominate this file;
    XLA's RngBitGenerator compiles in a fraction of that. One test keeps the default impl.
    """
    return jax.random.key(seed, impl="rbg")


def normal(seed, shape):
    """Fixed test data, drawn with NumPy so that it costs no compilation."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


N_DRAWS = 20_000
SIGMAS = 5.0  # tolerance of frequency tests, in standard errors


def softmax_jacobian(p):
    return jnp.diag(p) - jnp.outer(p, p)


def assert_frequencies_match(one_hot_samples, probs, name=""):
    """Column means of (S, K) one-hot samples match probs within SIGMAS binomial std errors."""
    probs = np.asarray(probs)
    freq = np.asarray(one_hot_samples).mean(axis=0)
    std_err = np.sqrt(probs * (1 - probs) / one_hot_samples.shape[0])
    np.testing.assert_array_less(np.abs(freq - probs), SIGMAS * std_err + 1e-12, err_msg=name)


LOGITS_5 = jnp.array([1.0, -0.5, 0.3, 2.0, -1.5])


# ----------------------------------------------------------------------------- forward values


class OneHotForwardTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_binary_codes_are_exactly_one_hot(self):
        logits = 3.0 * normal(2, (4, 3, 2))  # K = 2 goes through the same functions

        def codes(key):
            keys = jax.random.split(key, len(ESTIMATORS) + 1)
            out = [discrete_code(k, logits, name, 0.5, n_samples=3) for k, name in zip(keys, ESTIMATORS)]
            out.append(gumbel_softmax(keys[-1], logits, 0.3, hard=True))
            return jnp.stack(out)

        out = np.asarray(self.variant(codes)(rng(1)))
        chex.assert_shape(out, (len(ESTIMATORS) + 1, 4, 3, 2))
        assert set(np.unique(out)) <= {0.0, 1.0}
        np.testing.assert_array_equal(out.sum(-1), 1.0)
        np.testing.assert_array_equal(out[0], jax.nn.one_hot(jnp.argmax(logits, -1), 2))


def test_samples_follow_softmax_and_are_one_hot():
    logits = jnp.broadcast_to(LOGITS_5, (N_DRAWS, 5))

    @jax.jit
    def draws(key):
        keys = jax.random.split(key, 5)
        relaxed = gumbel_softmax(keys[0], logits, 0.5)
        return relaxed, {
            "argmax of gumbel_softmax": jax.nn.one_hot(jnp.argmax(relaxed, -1), 5),
            "st-gumbel": discrete_code(keys[1], logits, "st-gumbel", 0.5),
            "gumbel-rao": discrete_code(keys[2], logits, "gumbel-rao", 0.5, n_samples=2),
            "reinmax": discrete_code(keys[3], logits, "reinmax", 0.5),
            "straight_through_sample": straight_through_sample(keys[4], logits),
        }

    relaxed, codes = draws(rng(0))
    np.testing.assert_allclose(relaxed.sum(-1), 1.0, rtol=1e-5)
    for name, code in codes.items():
        code = np.asarray(code)
        assert set(np.unique(code)) <= {0.0, 1.0}, name
        np.testing.assert_array_equal(code.sum(-1), 1.0, err_msg=name)
        assert_frequencies_match(code, jax.nn.softmax(LOGITS_5), name)


def test_relaxed_bernoulli_matches_binary_concrete_cdf():
    stats = pytest.importorskip("scipy.stats")
    logit, tau = 0.7, 0.6
    y = np.asarray(relaxed_bernoulli(rng(2), jnp.full((5000,), logit), tau), np.float64)
    assert np.all((y > 0) & (y < 1))

    def cdf(x):  # P(sigmoid((logit + L)/tau) <= x) = sigmoid(tau * logit(x) - logit)
        return 1 / (1 + np.exp(-(tau * np.log(x / (1 - x)) - logit)))

    assert stats.kstest(y, cdf).pvalue > 1e-3


# ----------------------------------------------------------------------------- gradients


def test_straight_through_gradient_is_softmax_jacobian():
    logits = jnp.array([0.2, -1.0, 1.3, 0.1])
    code, jacobian, sample_jacobian = jax.jit(
        lambda lg: (
            straight_through(lg),
            jax.jacobian(straight_through)(lg),
            jax.jacobian(lambda m: straight_through_sample(rng(3), m))(lg),
        )
    )(logits)
    expected = softmax_jacobian(jax.nn.softmax(logits))
    np.testing.assert_array_equal(code, jax.nn.one_hot(2, 4))
    np.testing.assert_allclose(jacobian, expected, atol=1e-6)
    np.testing.assert_allclose(sample_jacobian, expected, atol=1e-6)


def test_hard_gumbel_softmax_gradient_is_relaxed_gradient():
    # The default (threefry) key impl, once.
    logits, key, tau = jnp.array([0.2, -1.0, 1.3, 0.1]), jax.random.key(4), 0.7
    hard, soft, relaxed = jax.jit(
        lambda lg: (
            jax.jacobian(lambda m: gumbel_softmax(key, m, tau, hard=True))(lg),
            jax.jacobian(lambda m: gumbel_softmax(key, m, tau))(lg),
            gumbel_softmax(key, lg, tau),
        )
    )(logits)
    np.testing.assert_allclose(hard, soft, atol=1e-6)
    np.testing.assert_allclose(soft, softmax_jacobian(relaxed) / tau, atol=1e-6)


def _direct_conditional_gumbel_noise(key_noise, logits, index, n_samples):
    """Truncated Gumbels by inverse CDF (exponential form), independently of the library's."""
    exponentials = jnp.exp(-jax.random.gumbel(key_noise, (n_samples, *logits.shape)))
    top = jax.nn.logsumexp(logits) - jnp.log(exponentials[:, index])
    perturbed = logits - jnp.log(exponentials + jnp.exp(logits - top[:, None]))
    perturbed = perturbed.at[:, index].set(top)
    return perturbed - logits


def test_gumbel_rao_matches_direct_computation():
    logits, key, tau = jnp.array([0.5, -0.3, 1.1, 0.0]), rng(5), 0.8
    key_sample, key_noise = jax.random.split(key)
    index = jax.random.categorical(key_sample, logits)

    @jax.jit
    def library_and_direct(logits):
        out = []
        for n_samples in (1, 3):
            noise = _direct_conditional_gumbel_noise(key_noise, logits, index, n_samples)

            def surrogate(lg, noise=noise):
                return jnp.mean(jax.nn.softmax((lg + noise) / tau, axis=-1), axis=0)

            def estimator(lg, n_samples=n_samples):
                return gumbel_rao(key, lg, tau, n_samples)

            jacobians = jax.jacobian(estimator)(logits), jax.jacobian(surrogate)(logits)
            out.append((noise, estimator(logits), *jacobians))
        return out

    for noise, code, got, expected in library_and_direct(logits):
        assert np.all(np.argmax(logits + noise, -1) == index)
        np.testing.assert_array_equal(code, jax.nn.one_hot(index, 4))
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_conditional_gumbel_argmax_and_marginal():
    logits = jnp.array([0.5, -1.0, 1.5])

    @jax.jit
    def draw(key):
        key_sample, key_noise = jax.random.split(key)
        sample = jax.nn.one_hot(jax.random.categorical(key_sample, logits, shape=(N_DRAWS,)), 3)
        batch = jnp.broadcast_to(logits, (N_DRAWS, 3))
        return sample, conditional_gumbel(key_noise, batch, sample, 1)[0]

    sample, perturbed = draw(rng(6))
    np.testing.assert_array_equal(jnp.argmax(perturbed, -1), jnp.argmax(sample, -1))
    # Averaged over the class drawn from softmax(logits), logits + G is unconditionally Gumbel:
    # mean logits + gamma, std pi / sqrt(6).
    std_err = math.pi / math.sqrt(6 * N_DRAWS)
    np.testing.assert_array_less(np.abs(perturbed.mean(0) - (logits + EULER_GAMMA)), SIGMAS * std_err)


def test_gumbel_rao_mean_gradient_equals_st_gumbel_mean_gradient():
    # Rao-Blackwellization keeps the expectation of the ST Gumbel-softmax gradient.
    logits, tau = jnp.array([0.4, -0.2, 0.9]), 0.5
    weights = jnp.array([1.0, -2.0, 0.5])
    keys = jax.random.split(rng(7), N_DRAWS)

    def per_key_grads(estimator):
        def grad_one(key):
            return jax.grad(lambda lg: jnp.dot(weights, discrete_code(key, lg, estimator, tau, n_samples=1)))(logits)

        return jax.vmap(grad_one)(keys)

    rao, st_gumbel = jax.jit(lambda: (per_key_grads("gumbel-rao"), per_key_grads("st-gumbel")))()
    rao, st_gumbel = np.asarray(rao), np.asarray(st_gumbel)
    std_err = np.sqrt((rao.var(0) + st_gumbel.var(0)) / N_DRAWS)
    np.testing.assert_array_less(np.abs(rao.mean(0) - st_gumbel.mean(0)), SIGMAS * std_err)


def test_reinmax_gradient_matches_algorithm():
    key = rng(8)

    @jax.jit
    def library_and_algorithm(logits, cotangent, tau):
        num_classes = logits.shape[-1]
        code, vjp = jax.vjp(lambda lg: reinmax(key, lg, tau), logits)
        # Liu et al. 2023, Algorithm 2, differentiated by hand: 2 J(pi1) g - J(pi0) g / 2.
        pi0 = jax.nn.softmax(logits)
        sample = jax.nn.one_hot(jax.random.categorical(key, logits), num_classes)
        pi1 = 0.5 * (sample + jax.nn.softmax(logits / tau))
        expected = 2.0 * softmax_jacobian(pi1) @ cotangent - 0.5 * softmax_jacobian(pi0) @ cotangent
        return code, sample, vjp(cotangent)[0], expected

    for tau in (1.0, 2.0, 0.1):  # a traced tau: one compilation
        logits, cotangent = 2.0 * normal(int(10 * tau), (6,)), normal(9, (6,))
        code, sample, got, expected = library_and_algorithm(logits, cotangent, tau)
        np.testing.assert_array_equal(code, sample)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_reinmax_is_unbiased_for_quadratic_objectives_at_tau_one():
    # Heun's method is exact on quadratics: with tau = 1, E[ReinMax gradient] equals the exact
    # gradient of E[f(b)] for f quadratic in the one-hot codes (Liu et al. 2023, sec. 4).
    logits = normal(20, (2, 3))
    quadratic = normal(21, (6, 6))

    def objective(code):
        flat = code.reshape(-1)
        return flat @ quadratic @ flat

    moments = jax.jit(lambda key: estimator_gradient_moments(key, logits, objective, "reinmax", 1.0, N_DRAWS))(rng(22))
    std_err = np.sqrt(np.asarray(moments.variance) / N_DRAWS)
    np.testing.assert_array_less(np.abs(moments.mean - moments.exact), SIGMAS * std_err + 1e-6)


# ----------------------------------------------------------------------------- densities


def test_log_prob_binary_matches_closed_form_and_normalizes():
    logit, tau = 0.8, 0.7
    logits = jnp.array([logit, 0.0])
    u = np.linspace(-60.0, 60.0, 24_001)  # x = sigmoid(u) spreads the density over R
    x = 1 / (1 + np.exp(-u))
    y = jnp.asarray(np.stack([x, 1 - x], -1), jnp.float32)
    log_p = np.asarray(jax.jit(relaxed_one_hot_log_prob)(y, jnp.broadcast_to(logits, y.shape), tau))
    chex.assert_shape(log_p, (u.size,))
    # Binary Concrete density (Maddison et al. 2017, eq. 23), alpha = exp(logit), in float64.
    log_x, log_1mx = -np.logaddexp(0, -u), -np.logaddexp(0, u)
    closed = (
        math.log(tau) + logit - (tau + 1) * (log_x + log_1mx) - 2 * np.logaddexp(logit - tau * log_x, -tau * log_1mx)
    )
    inner = np.abs(u) < 15  # where float32 y still resolves both coordinates
    np.testing.assert_allclose(log_p[inner], closed[inner], rtol=1e-4, atol=1e-3)
    integral = np.trapezoid(np.exp(closed + log_x + log_1mx), u)  # dx = x (1 - x) du
    np.testing.assert_allclose(integral, 1.0, atol=1e-4)
    integral_lib = np.trapezoid(np.exp(log_p + log_x + log_1mx)[inner], u[inner])
    np.testing.assert_allclose(integral_lib, 1.0, atol=2e-3)


def test_log_prob_normalizes_on_the_3_simplex():
    logits, tau = jnp.array([0.3, -0.6, 0.0]), 1.3
    grid = np.linspace(-25.0, 25.0, 501)
    u1, u2 = np.meshgrid(grid, grid, indexing="ij")
    u = jnp.asarray(np.stack([u1, u2, np.zeros_like(u1)], -1), jnp.float32)

    @jax.jit
    def log_density_of_u(u):
        y = jax.nn.softmax(u, axis=-1)
        log_p = relaxed_one_hot_log_prob(y, jnp.broadcast_to(logits, y.shape), tau)
        # y = softmax(u1, u2, 0) has Jacobian determinant y1 y2 y3 w.r.t. (u1, u2).
        return log_p + jnp.sum(jax.nn.log_softmax(u, axis=-1), -1)

    density = np.exp(np.asarray(log_density_of_u(u), np.float64))
    np.testing.assert_allclose(density.sum() * (grid[1] - grid[0]) ** 2, 1.0, atol=2e-3)


def test_log_prob_matches_tfp_relaxed_one_hot_categorical():
    tfp = pytest.importorskip("tensorflow_probability.substrates.jax")
    logits = normal(10, (2, 3, 5))

    @jax.jit
    def library_and_tfp(tau):
        y = gumbel_softmax(rng(11), logits, tau[..., None])
        expected = tfp.distributions.RelaxedOneHotCategorical(tau, logits=logits).log_prob(y)
        return relaxed_one_hot_log_prob(y, logits, tau), expected

    for tau in ([[0.7] * 3] * 2, [[0.5, 1.0, 2.0], [0.3, 0.9, 1.5]]):
        tau = jnp.asarray(tau, jnp.float32)  # TFP wants one dtype, also under jax_enable_x64
        got, expected = library_and_tfp(tau)
        chex.assert_shape(got, (2, 3))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_categorical_kl_uniform_hand_values():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]]))
    kl, kl_one_hot = jax.jit(lambda: (categorical_kl_uniform(logits), categorical_kl_uniform(jnp.array([0.0, 1e4]))))()
    chex.assert_shape(kl, (1, 2))
    np.testing.assert_allclose(kl, [[math.log(3) - 1.5 * math.log(2), 0.0]], atol=1e-6)
    np.testing.assert_allclose(kl_one_hot, math.log(2), atol=1e-6)


def test_no_nan_at_small_temperature_with_many_classes():
    tau, logits = 0.1, 5.0 * normal(12, (2, 512))
    key = rng(13)
    weights = normal(14, logits.shape)

    def objectives(lg):
        relaxed = gumbel_softmax(key, lg, tau)
        terms = [jnp.sum(weights * relaxed), jnp.sum(relaxed_one_hot_log_prob(relaxed, lg, tau))]
        terms += [jnp.sum(weights * discrete_code(key, lg, e, tau, n_samples=4)) for e in ESTIMATORS]
        terms.append(jnp.sum(categorical_kl_uniform(lg)))
        return jnp.stack(terms)

    # A NaN or inf in any term's gradient survives the sum, so one gradient checks them all.
    values, grad = jax.jit(lambda lg: (objectives(lg), jax.grad(lambda m: objectives(m).sum())(lg)))(logits)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_masked_class_gets_no_sample_and_no_gradient(estimator):
    """A logit of -inf (a masked class) behaves like a very negative finite one: never sampled,
    zero gradient, and the other classes' gradients are those of the finite mask (no NaN)."""
    logits = normal(15, (3, 4))
    weights = normal(16, logits.shape)
    key = rng(17)

    def grad_with(mask_value):
        masked = logits.at[:, 1].set(mask_value)

        def code(lg):
            return discrete_code(key, lg, estimator, 0.7, n_samples=4)

        return code(masked), jax.grad(lambda lg: jnp.sum(weights * code(lg)))(masked)

    code_inf, grad_inf = jax.jit(grad_with, static_argnums=0)(-jnp.inf)
    code_big, grad_big = jax.jit(grad_with, static_argnums=0)(-1e4)
    assert np.all(np.asarray(code_inf)[:, 1] == 0)
    np.testing.assert_array_equal(code_inf, code_big)
    assert np.all(np.isfinite(grad_inf)) and np.all(np.asarray(grad_inf)[:, 1] == 0)
    np.testing.assert_allclose(grad_inf, grad_big, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- validation


def test_bad_inputs_raise_config_error():
    key, logits = rng(0), jnp.zeros((3, 4))
    for tau in (0.0, -1.0, float("nan"), np.array([1.0, -0.5])):
        with pytest.raises(ConfigError, match="tau"):
            gumbel_softmax(key, logits, tau)
        with pytest.raises(ConfigError, match="tau"):
            discrete_code(key, logits, "reinmax", tau)
    with pytest.raises(ConfigError, match="K >= 2"):
        straight_through(jnp.zeros((3, 1)))
    with pytest.raises(ConfigError, match="K >= 2"):
        categorical_kl_uniform(jnp.zeros((3, 1)))
    for n_samples in (0, -2, 1.5):
        with pytest.raises(ConfigError, match="n_samples"):
            gumbel_rao(key, logits, 1.0, n_samples)
    with pytest.raises(ConfigError, match="st, st-gumbel, gumbel-rao, reinmax"):
        discrete_code(key, logits, "gumbel", 1.0)
    with pytest.raises(ConfigError, match="tau_min"):
        exponential_temperature(0, 1.0, 1e-3, 0.0)
    with pytest.raises(ConfigError, match="levels"):
        finite_scalar_quantize(jnp.zeros((2,)), [1, 4])
    # A traced tau cannot be checked (documented): it must not raise.
    jax.jit(lambda t: gumbel_softmax(key, logits, t))(-1.0)


def test_temperature_schedules_are_jit_friendly():
    steps = jnp.array([0, 1000, 10_000, 100_000])
    schedule = jax.jit(lambda s: exponential_temperature(s, 1.0, 1e-4, 0.5))
    expected = np.maximum(0.5, np.exp(-1e-4 * np.asarray(steps)))
    np.testing.assert_allclose(jax.vmap(schedule)(steps), expected, rtol=1e-6)
    np.testing.assert_allclose(constant_temperature(steps, 0.3), np.full(4, 0.3))
    assert jax.jit(constant_temperature)(7).shape == ()


# ----------------------------------------------------------------------------- quantizers


def test_vector_quantize_matches_brute_force():
    z_e = normal(15, (4, 3, 5))
    codebook = normal(16, (7, 5))
    weights = normal(17, z_e.shape)

    @jax.jit
    def quantize_and_grads(z_e, codebook):
        def grads(term):
            return jax.grad(lambda z, c: jnp.sum(term(vector_quantize(z, c))), argnums=(0, 1))(z_e, codebook)

        return vector_quantize(z_e, codebook), [
            grads(lambda out: weights * out.codes),
            grads(lambda out: out.codebook_loss),
            grads(lambda out: out.commitment_loss),
        ]

    out, (decoder_grads, codebook_grads, commitment_grads) = quantize_and_grads(z_e, codebook)
    distances = ((np.asarray(z_e)[..., None, :] - np.asarray(codebook)) ** 2).sum(-1)
    indices = distances.argmin(-1)
    np.testing.assert_array_equal(out.indices, indices)
    np.testing.assert_array_equal(out.codes, np.asarray(codebook)[indices])
    np.testing.assert_allclose(out.codebook_loss, distances.min(-1), rtol=1e-5)
    np.testing.assert_allclose(out.commitment_loss, distances.min(-1), rtol=1e-5)

    g_z, g_cb = decoder_grads
    np.testing.assert_allclose(g_z, weights)  # straight-through to the encoder
    np.testing.assert_array_equal(g_cb, 0.0)  # the decoder does not move the codebook
    g_z, g_cb = codebook_grads
    np.testing.assert_array_equal(g_z, 0.0)
    residual = np.asarray(codebook)[indices] - np.asarray(z_e)
    expected_cb = np.zeros((7, 5))
    np.add.at(expected_cb, indices.ravel(), 2 * residual.reshape(-1, 5))
    np.testing.assert_allclose(g_cb, expected_cb, rtol=1e-5, atol=1e-5)
    g_z, g_cb = commitment_grads
    np.testing.assert_allclose(g_z, -2 * residual, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(g_cb, 0.0)


def test_fsq_codes_lie_on_grid_and_index_is_a_bijection():
    levels = [3, 4, 5]
    grid = np.linspace(-4.0, 4.0, 41)
    z = jnp.asarray(np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3))
    point = jnp.array([0.3, -0.2, 0.1])

    @jax.jit
    def quantize(z):
        out = finite_scalar_quantize(z, levels)
        return (
            out,
            fsq_codes_from_index(out.index, levels),
            fsq_codes_from_index(jnp.arange(60), levels),
            finite_scalar_quantize(jnp.zeros(3), levels).codes,
            jax.grad(lambda v: jnp.sum(finite_scalar_quantize(v, levels).codes))(point),
        )

    out, codes_of_index, all_codes, codes_of_zero, grad = quantize(z)
    half_width = np.array([1, 2, 2])
    scaled = np.asarray(out.codes) * half_width
    np.testing.assert_allclose(scaled, np.round(scaled), atol=1e-6)
    assert np.all(np.abs(out.codes) <= 1.0)
    np.testing.assert_array_equal(out.digits, np.round(scaled) + half_width)
    assert np.all((out.digits >= 0) & (out.digits < np.array(levels)))
    assert set(np.asarray(out.index).tolist()) == set(range(60))  # every code is reached
    np.testing.assert_allclose(codes_of_index, out.codes)
    assert len({tuple(c) for c in np.asarray(all_codes)}) == 60  # distinct index, distinct code
    # Even levels use the half-offset: z = 0 maps to code 0, the grid is {-L/2, ..., L/2 - 1}.
    np.testing.assert_array_equal(codes_of_zero, 0.0)
    np.testing.assert_array_equal(np.unique(scaled[:, 1]), [-2, -1, 0, 1])
    # Straight-through rounding: the gradient is that of the bound, tanh' * half_l / (L // 2).
    half_l = (np.array(levels) - 1) * (1 - 1e-3) / 2
    shift = np.arctanh(np.array([0.0, 0.5, 0.0]) / half_l)
    expected = (1 - np.tanh(np.asarray(point) + shift) ** 2) * half_l / half_width
    np.testing.assert_allclose(grad, expected, rtol=1e-5)


def test_fsq_two_levels_is_a_finite_binary_quantizer():
    # At L = 2 no shift gives bound(0) = 0 (offset / half_l = 0.5 / 0.4995 > 1); the capped shift
    # must still give finite codes on the grid {-1, 0}, both reached, z = 0 on level 0.
    z = jnp.linspace(-6.0, 6.0, 241)[:, None]
    out = finite_scalar_quantize(z, [2])
    codes = np.asarray(out.codes)[:, 0]
    assert np.all(np.isfinite(codes))
    np.testing.assert_array_equal(np.unique(codes), [-1.0, 0.0])
    assert float(finite_scalar_quantize(jnp.zeros((1,)), [2]).codes[0]) == 0.0
    assert np.all(np.diff(codes) >= 0)  # monotone in z
    grad = jax.grad(lambda v: jnp.sum(finite_scalar_quantize(v, [2]).codes))(jnp.zeros((1,)))
    assert np.all(np.isfinite(grad)) and float(grad[0]) > 0


# ----------------------------------------------------------------------------- estimator diagnostics


def quadratic_objective(quadratic, linear):
    def objective(code):
        flat = code.reshape(-1)
        return flat @ quadratic @ flat + linear @ flat

    return objective


def expected_quadratic(logits, quadratic, linear):
    """E[b'Ab + c'b] over independent one-hot variables in closed form, without enumeration:
    E[b_i b_j] = p_i p_j for coordinates of different variables, p_i [i == j] within one."""
    num_variables, num_classes = logits.shape
    p = jax.nn.softmax(logits, axis=-1).reshape(-1)
    same_variable = jnp.kron(jnp.eye(num_variables), jnp.ones((num_classes, num_classes))) > 0
    second_moment = jnp.where(same_variable, jnp.diag(p), jnp.outer(p, p))
    return jnp.sum(quadratic * second_moment) + linear @ p


@pytest.mark.parametrize("shape", [(2, 3), (3, 2), (1, 4)])
def test_expected_objective_gradient_matches_closed_form(shape):
    size = shape[0] * shape[1]
    logits, quadratic, linear = normal(30, shape), normal(31, (size, size)), normal(32, (size,))
    got = expected_objective_gradient(logits, quadratic_objective(quadratic, linear))
    chex.assert_shape(got, shape)
    np.testing.assert_allclose(got, jax.grad(expected_quadratic)(logits, quadratic, linear), rtol=1e-5, atol=1e-6)


def test_gradient_moments_equal_mean_and_variance_of_per_key_gradients():
    logits, quadratic, linear = normal(33, (2, 3)), normal(34, (6, 6)), normal(35, (6,))
    objective, tau, n_draws = quadratic_objective(quadratic, linear), 0.5, 256

    @jax.jit
    def moments_and_draws(key):
        def one(k):  # straight-through Gumbel-softmax written out (Jang et al. 2017)
            def code_of(x):
                perturbed = x + jax.random.gumbel(k, x.shape)
                relaxed = jax.nn.softmax(perturbed / tau, axis=-1)
                return jax.lax.stop_gradient(jax.nn.one_hot(jnp.argmax(perturbed, -1), 3) - relaxed) + relaxed

            return jax.grad(lambda x: objective(code_of(x)))(logits)

        moments = estimator_gradient_moments(key, logits, objective, "st-gumbel", tau, n_draws)
        return moments, jax.vmap(one)(jax.random.split(key, n_draws))

    moments, draws = moments_and_draws(rng(36))
    draws = np.asarray(draws, np.float64)
    chex.assert_trees_all_close(
        moments,
        GradientMoments(draws.mean(0), draws.var(0), jax.grad(expected_quadratic)(logits, quadratic, linear)),
        rtol=1e-4,
        atol=1e-5,
    )


def test_straight_through_moments_are_deterministic_softmax_pullback():
    logits, quadratic, linear = normal(37, (3, 2)), normal(38, (6, 6)), normal(39, (6,))
    objective = quadratic_objective(quadratic, linear)
    moments = estimator_gradient_moments(rng(40), logits, objective, "st", n_draws=8)
    # Bengio et al. 2013: d f / d b at one_hot(argmax), pulled back through softmax's Jacobian.
    p = jax.nn.softmax(logits, axis=-1)
    df_db = jax.grad(objective)(jax.nn.one_hot(jnp.argmax(logits, -1), 2))
    expected = p * (df_db - jnp.sum(p * df_db, axis=-1, keepdims=True))
    np.testing.assert_array_equal(moments.variance, 0.0)  # exactly: every draw is the same code
    np.testing.assert_allclose(moments.mean, expected, rtol=1e-5, atol=1e-6)


def test_reinforce_moments_are_unbiased_and_vmap_over_temperatures():
    logits, quadratic, linear = normal(41, (2, 3)), normal(42, (6, 6)), normal(43, (6,))
    objective = quadratic_objective(quadratic, linear)

    @jax.jit
    def moments(tau):
        return estimator_gradient_moments(rng(44), logits, objective, "reinforce", tau, N_DRAWS)

    reinforce = moments(1.0)
    std_err = np.sqrt(np.asarray(reinforce.variance) / N_DRAWS)
    np.testing.assert_array_less(np.abs(reinforce.mean - reinforce.exact), SIGMAS * std_err)

    # One vmapped call over temperatures gives each temperature's own moments.
    taus = jnp.array([0.5, 2.0])
    soft = jax.jit(jax.vmap(lambda t: estimator_gradient_moments(rng(45), logits, objective, "gumbel-softmax", t, 64)))(
        taus
    )
    for i, tau in enumerate(taus):
        one = estimator_gradient_moments(rng(45), logits, objective, "gumbel-softmax", tau, 64)
        chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], soft), one, rtol=1e-5, atol=1e-6)


def test_gradient_moments_reject_bad_arguments():
    logits = jnp.zeros((2, 3))
    assert "gumbel-softmax" in GRADIENT_ESTIMATORS and "reinforce" in GRADIENT_ESTIMATORS
    with pytest.raises(ConfigError, match="estimator='score' is invalid"):
        estimator_gradient_moments(rng(0), logits, jnp.sum, "score")
    with pytest.raises(ConfigError, match="n_draws=0 is invalid"):
        estimator_gradient_moments(rng(0), logits, jnp.sum, "st", n_draws=0)
    with pytest.raises(ConfigError, match=r"logits.shape=\(2, 3, 4\) is invalid"):
        expected_objective_gradient(jnp.zeros((2, 3, 4)), jnp.sum)
    with pytest.raises(ConfigError, match=r"logits.shape=\(17, 2\) is invalid"):
        expected_objective_gradient(jnp.zeros((17, 2)), jnp.sum)
