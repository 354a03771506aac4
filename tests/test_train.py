"""The trainer: every preset trains, seeds are independent of their batch, chunks and resumes
do not change results, and a diverging run is frozen without touching the others."""

import jax
import numpy as np
import pytest

from jaxrae import methods
from jaxrae.config import TrainConfig
from jaxrae.errors import CheckpointError, ConfigError
from jaxrae.train import make_train, train

FAST = dict(batch_size=32, chunk_size=30)


@pytest.mark.parametrize("name", methods.names())
def test_every_preset_trains_with_finite_decreasing_loss(digits, name):
    runs = train(TrainConfig(method=name, steps=30, **FAST), digits, seeds=[0, 1], progress=False)
    assert runs.losses.shape == (2, 30)
    assert np.all(np.isfinite(runs.losses)), name
    decreasing = lambda h: np.all(h[:, -5:].mean(axis=1) < h[:, :5].mean(axis=1))  # noqa: E731
    assert decreasing(runs.metrics["rec"]), name
    # VQ-VAE's commitment and codebook terms start at ~0 (codebook initialised near the
    # encoder's first outputs) and grow while the encoder spreads out, so its total loss rises
    # before it falls; every other preset's total loss falls within 30 steps.
    if name != "vqvae":
        assert decreasing(runs.losses), name
    assert np.all(runs.ok)
    codes = runs.encode(digits.test_images[:7])
    assert codes.shape == (2, 7, 16)
    assert codes.dtype == (np.int32 if methods.get(name).discrete else np.float32)
    images = runs.decode(codes)
    assert images.shape == (2, 7, 8, 8, 1) and images.min() >= 0 and images.max() <= 1


def test_seed_alone_equals_seed_inside_a_batch(digits):
    # vae is stochastic (reparameterization noise and batch sampling both read the key)
    cfg = TrainConfig(method="vae", steps=50, batch_size=32, chunk_size=50)
    together = train(cfg, digits, seeds=[0, 1, 2, 3], progress=False)
    alone = train(cfg, digits, seeds=[2], progress=False)
    np.testing.assert_allclose(alone.losses[0], together.losses[2], rtol=1e-5, atol=1e-6)
    assert not np.allclose(together.losses[1], together.losses[2])  # seeds differ


def test_pure_train_function_equals_chunked_program(digits):
    cfg = TrainConfig(method="rae-gp", steps=20, batch_size=32, chunk_size=7)  # 7 + 7 + 6
    trainer = make_train(cfg, digits)
    state, metrics = jax.jit(trainer)(jax.random.PRNGKey(5))
    runs = train(cfg, digits, seeds=[5], progress=False)
    assert int(state.step) == 20
    np.testing.assert_allclose(np.asarray(metrics["loss"]), runs.losses[0], rtol=1e-5, atol=1e-7)


def test_vmapped_pure_train_over_keys(digits):
    trainer = make_train(TrainConfig(method="ae", steps=5, batch_size=16), digits)
    states, metrics = jax.jit(jax.vmap(trainer))(jax.random.split(jax.random.PRNGKey(0), 3))
    assert metrics["loss"].shape == (3, 5)
    assert jax.tree_util.tree_leaves(states.params)[0].shape[0] == 3


def test_diverging_run_is_frozen_and_others_are_bitwise_unchanged(digits):
    cfg = TrainConfig(method="rae", steps=12, batch_size=32, chunk_size=6)
    with_bad = train(cfg, digits, seeds=[0, 1], sweep={"lr": [5e-4, 1e30]}, progress=False)
    without = train(cfg, digits, seeds=[0, 1], sweep={"lr": [5e-4, 1e-3]}, progress=False)
    assert list(with_bad.diverged_at[:2]) == [-1, -1]
    assert np.all(with_bad.diverged_at[2:] >= 0)
    for a, b in zip(jax.tree_util.tree_leaves(with_bad.state.params), jax.tree_util.tree_leaves(without.state.params)):
        np.testing.assert_array_equal(a[:2], b[:2])
        assert np.all(np.isfinite(a))  # the frozen runs keep their last finite parameters
    np.testing.assert_array_equal(with_bad.losses[:2], without.losses[:2])


def test_interrupted_run_resumes_to_the_same_result(digits, tmp_path):
    cfg = TrainConfig(method="drae-gp", estimator="gumbel-rao", steps=40, batch_size=32, chunk_size=20)
    path = tmp_path / "ckpt.msgpack"
    partial = train(cfg, digits, seeds=[0, 1], checkpoint_path=path, stop_after_chunks=1, progress=False)
    assert partial.losses.shape == (2, 20)
    resumed = train(cfg, digits, seeds=[0, 1], checkpoint_path=path, progress=False)
    straight = train(cfg, digits, seeds=[0, 1], progress=False)
    np.testing.assert_array_equal(resumed.losses, straight.losses)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.state), jax.tree_util.tree_leaves(straight.state)):
        np.testing.assert_array_equal(a, b)
    # a checkpoint of another configuration is refused, not silently mixed in
    with pytest.raises(CheckpointError, match="another configuration"):
        train(cfg.replace(beta=0.5), digits, seeds=[0, 1], checkpoint_path=path, progress=False)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt|truncated"):
        train(cfg, digits, seeds=[0, 1], checkpoint_path=path, progress=False)


def test_same_seed_gives_bitwise_identical_parameters(digits):
    cfg = TrainConfig(method="rae-l2", steps=10, batch_size=32, chunk_size=10)
    a = train(cfg, digits, seeds=[3], progress=False)
    b = train(cfg, digits, seeds=[3], progress=False)
    for x, y in zip(jax.tree_util.tree_leaves(a.state.params), jax.tree_util.tree_leaves(b.state.params)):
        np.testing.assert_array_equal(x, y)


def test_sweep_is_one_program_with_results_per_value_and_seed(digits):
    cfg = TrainConfig(method="rae", steps=6, batch_size=32, chunk_size=6)
    runs = train(cfg, digits, seeds=[0, 1], sweep={"beta": [0.0, 1.0]}, progress=False)
    assert [(r["beta"], r["seed"]) for r in runs.runs] == [(0.0, 0), (0.0, 1), (1.0, 0), (1.0, 1)]
    np.testing.assert_allclose(np.asarray(runs.state.hparams.beta), [0, 0, 1, 1])
    assert runs.metrics["latent_reg"].shape == (4, 6)


def test_bad_training_input(digits):
    with pytest.raises(ConfigError, match="batch_size=5000"):
        train(TrainConfig(batch_size=5000), digits, progress=False)
    with pytest.raises(ConfigError, match="repeat"):
        train(TrainConfig(steps=1), digits, seeds=[1, 1], progress=False)
    with pytest.raises(ConfigError, match="sweep"):
        train(TrainConfig(steps=1), digits, sweep={"latent_dim": [1, 2]}, progress=False)
    with pytest.raises(ConfigError, match="beta"):
        train(TrainConfig(steps=1), digits, sweep={"beta": [-1.0]}, progress=False)


def test_ex_post_density_and_sampling(digits):
    cfg = TrainConfig(method="rae", steps=30, **FAST)
    runs = train(cfg, digits, seeds=[0, 1], progress=False)
    gmm = runs.fit_ex_post(jax.random.PRNGKey(0), digits.train_images[:500], n_components=3)
    assert gmm.means.shape == (2, 3, 16)
    samples = runs.sample_ex_post(jax.random.PRNGKey(1), gmm, 5)
    assert samples.shape == (2, 5, 8, 8, 1)
    prior = runs.sample_prior(jax.random.PRNGKey(1), 5)
    assert prior.shape == (2, 5, 8, 8, 1)
    # ex-post codes follow the fitted density: their mean is near the code mean, not 0
    codes = runs.sample_ex_post_codes(jax.random.PRNGKey(2), gmm, 4000)
    train_codes = runs.encode(digits.train_images[:500])
    np.testing.assert_allclose(codes.mean(axis=1), train_codes.mean(axis=1), atol=0.15 * float(np.abs(train_codes).max()))


@pytest.fixture(scope="module")
def adam_problem():
    key = jax.random.PRNGKey(3)
    params = {"w": jax.random.normal(key, (8, 4)), "b": jax.numpy.zeros(4)}
    grads = [jax.tree.map(lambda p: jax.random.normal(jax.random.fold_in(key, t), p.shape), params) for t in range(4)]
    return params, grads


def test_adam_step_matches_optax_adam(adam_problem):
    """The in-place Adam is optax's adam (the trainer's former optimizer) up to float rounding."""
    import optax

    from jaxrae.optim import adam_init, adam_step_or_freeze

    params, grads = adam_problem
    lr = np.float32(3e-2)
    reference = optax.inject_hyperparams(optax.adam)(learning_rate=lr)
    ref_params, ref_state = params, reference.init(params)
    ours_params, ours_state = params, adam_init(params)
    step = jax.jit(adam_step_or_freeze)
    for g in grads:
        updates, ref_state = reference.update(g, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)
        ours_params, ours_state = step(ours_params, ours_state, g, lr, True)
    ref_adam = ref_state.inner_state[0]
    for ours, ref in [(ours_params, ref_params), (ours_state.mu, ref_adam.mu), (ours_state.nu, ref_adam.nu)]:
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    assert int(ours_state.count) == int(ref_adam.count) == len(grads)


@pytest.mark.parametrize("steps_before", [0, 2])
def test_frozen_adam_step_returns_the_state_bitwise_even_for_nan_gradients(adam_problem, steps_before):
    from jaxrae.optim import adam_init, adam_step_or_freeze

    params, grads = adam_problem
    step = jax.jit(adam_step_or_freeze)
    state = adam_init(params)
    for g in grads[:steps_before]:
        params, state = step(params, state, g, np.float32(1e-2), True)
    nan_grads = jax.tree.map(lambda g: g.at[0].set(np.nan).at[-1].set(np.inf), grads[-1])
    frozen_params, frozen_state = step(params, state, nan_grads, np.float32(1e-2), False)
    for a, b in zip(jax.tree.leaves((frozen_params, frozen_state)), jax.tree.leaves((params, state))):
        np.testing.assert_array_equal(a, b)
