"""The trainer: every preset trains, seeds are independent of their batch, chunks and resumes
do not change results, and a diverging run is frozen without touching the others."""

import dataclasses
import importlib

import chex
import jax
import numpy as np
import optax
import pytest

from jaxrae import methods
from jaxrae.config import TrainConfig
from jaxrae.errors import CheckpointError, ConfigError
from jaxrae.optim import make_optimizer
from jaxrae.train import default_hparams, make_train, train

FAST = {"batch_size": 32, "chunk_size": 30}


@pytest.mark.parametrize("name", methods.names())
def test_every_preset_trains_with_finite_decreasing_loss(digits, name):
    runs = train(TrainConfig(method=name, steps=30, **FAST), digits, seeds=[0, 1], progress=False)
    assert runs.losses.shape == (2, 30)
    assert np.all(np.isfinite(runs.losses)), name
    decreasing = lambda h: np.all(h[:, -5:].mean(axis=1) < h[:, :5].mean(axis=1))
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


def test_seed_gives_the_same_run_bitwise_in_any_batch_of_the_same_shape(digits):
    # vae is stochastic (reparameterization noise and batch sampling both read the key); the
    # same program shape (4 runs) computes every run with the same arithmetic, wherever it sits
    cfg = TrainConfig(method="vae", steps=50, batch_size=32, chunk_size=50)
    a = train(cfg, digits, seeds=[0, 1, 2, 3], progress=False)
    b = train(cfg, digits, seeds=[5, 6, 2, 7], progress=False)
    run = lambda runs, i: jax.tree.map(lambda leaf: leaf[i], (runs.state, runs.metrics))
    chex.assert_trees_all_equal(run(a, 2), run(b, 2))
    assert not np.allclose(a.losses[1], a.losses[2])  # seeds differ


def _rounding_tolerance(cfg: TrainConfig, data) -> np.ndarray:
    """Relative tolerance per step for a run computed in programs of different batch shapes.

    A batched matmul may sum in another order than an unbatched one. Summing n products in
    float32 in any order errs by at most gamma_n = n u / (1 - n u) of sum |a_i b_i| (Higham 2002,
    Sec. 3.1; u = 2^-24), so one forward pass of the loss, a chain of reductions of lengths
    n_1, n_2, ... (every layer's fan-in, the pixels, the batch), differs between the two programs
    by at most about u * sum_l n_l relative (condition numbers near 1: the terms are mostly
    squares and ReLU sums of one sign). That is the step-0 bound, where both programs start from
    the same parameters. Each step then adds a rounding difference of the same size to the
    parameters, and to first order (Adam's steps are lr-sized, lr * t << 1 over the test)
    the differences add up instead of multiplying: the bound at step t is (t + 1) times the
    step-0 bound. Measured: below 1e-6 at every step of this 50-step VAE on a 2-core x86 CPU,
    1.2e-5 on another machine, against a bound of 1e-4 at step 0 and 5e-3 at step 49; another
    seed's run differs by about 1e-2.
    """
    image_pixels = int(np.prod(data.train_images_u8.shape[1:]))
    fan_ins = [image_pixels, 512, 256, cfg.latent_dim, 256, 512]  # the MLP's reductions, forward
    step0 = np.finfo(np.float32).eps / 2 * (sum(fan_ins) + image_pixels + cfg.batch_size)
    return step0 * (1 + np.arange(cfg.steps))


def test_seed_alone_equals_seed_inside_a_batch_to_float_rounding(digits):
    cfg = TrainConfig(method="vae", steps=50, batch_size=32, chunk_size=50)
    together = train(cfg, digits, seeds=[0, 1, 2, 3], progress=False)
    alone = train(cfg, digits, seeds=[2], progress=False)
    rtol = _rounding_tolerance(cfg, digits)
    relative = np.abs(alone.losses[0] - together.losses[2]) / np.abs(together.losses[2])
    assert np.all(relative <= rtol), (relative / rtol).max()
    # the bound is tight enough to tell runs apart: another seed's run leaves it at the first
    # step and at most later ones (two runs' losses may cross by chance at a step)
    other = np.abs(together.losses[1] - together.losses[2]) / np.abs(together.losses[2])
    assert other[0] > rtol[0] and np.mean(other > rtol) > 0.5, other / rtol


def test_chunked_program_equals_one_chunk_bitwise(digits):
    # 7 + 7 + 6 steps; at rae-gp's weights for 784 pixels, where this test's rounding margin was set (at
    # the digits weights, 12x weaker, the two programs' rounding grows to 1.5e-4 in 20 steps)
    cfg = TrainConfig(method="rae-gp", steps=20, batch_size=32, chunk_size=7, beta=0.0098, lam=3.92e-5)
    chunked = train(cfg, digits, seeds=[5, 6], progress=False)
    whole = train(cfg.replace(chunk_size=20), digits, seeds=[5, 6], progress=False)
    chex.assert_trees_all_equal((chunked.state, chunked.metrics), (whole.state, whole.metrics))


def test_pure_train_function_equals_chunked_program(digits):
    # 7 + 7 + 6 steps; at rae-gp's weights for 784 pixels, where this test's rounding margin was set (at
    # the digits weights, 12x weaker, the two programs' rounding grows to 1.5e-4 in 20 steps)
    cfg = TrainConfig(method="rae-gp", steps=20, batch_size=32, chunk_size=7, beta=0.0098, lam=3.92e-5)
    trainer = make_train(cfg, digits)
    state, metrics = jax.jit(trainer)(jax.random.key(5))
    runs = train(cfg, digits, seeds=[5], progress=False)
    assert int(state.step) == 20
    # one unbatched run against a program over a run axis: equal to float rounding
    np.testing.assert_allclose(np.asarray(metrics["loss"]), runs.losses[0], rtol=1e-5, atol=1e-7)


def test_vmapped_pure_train_over_keys(digits):
    trainer = make_train(TrainConfig(method="ae", steps=5, batch_size=16), digits)
    keys = jax.random.split(jax.random.key(0), 3)
    states, metrics = jax.jit(jax.vmap(trainer))(keys)
    chex.assert_shape(metrics["loss"], (3, 5))
    chex.assert_tree_shape_prefix(states.params, (3,))
    # every key gave its own run: pairwise different losses and parameters ...
    params = np.concatenate([np.asarray(leaf).reshape(3, -1) for leaf in jax.tree.leaves(states.params)], axis=1)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert not np.allclose(metrics["loss"][i], metrics["loss"][j])
        assert not np.allclose(params[i], params[j])
    # ... and run i is the run of key i alone
    _, metrics_1 = jax.jit(trainer)(keys[1])
    np.testing.assert_allclose(metrics["loss"][1], metrics_1["loss"], rtol=1e-5)


def test_equal_configs_share_one_traced_program(digits, monkeypatch):
    """train()'s compile caches: an equal config (a new but equal TrainConfig) with as many runs
    traces its chunk program once and compiles it once, and evaluation traces encode once."""
    T = importlib.import_module("jaxrae.train")  # the module (the package re-exports train, the function)
    cached, wrapped = T._training_functions, {}

    def counting(config, image_shape, dynamic=False):
        model, codec, init, step, run = cached(config, image_shape, dynamic)
        if run not in wrapped:  # a new function object per cache miss, one trace counter for all
            wrapped[run] = (
                chex.assert_max_traces(run, n=1),
                codec._replace(encode=chex.assert_max_traces(codec.encode, n=1)),
            )
        return model, wrapped[run][1], init, step, wrapped[run][0]

    chex.clear_trace_counter()
    monkeypatch.setattr(T, "_training_functions", counting)
    T._vmapped_programs.cache_clear()
    try:
        make = lambda: TrainConfig(method="ae", steps=8, batch_size=16, chunk_size=4)
        for seeds in ([0, 1], [2, 3]):
            runs = train(make(), digits, seeds=seeds, progress=False)
            for _ in range(2):
                runs.encode(digits.test_images[:10])
        assert len(T._vmapped_programs(make(), digits.train_images_u8.shape[1:], False)[2]) == 1  # one compiled chunk
    finally:
        T._vmapped_programs.cache_clear()


def test_diverging_run_is_frozen_and_others_are_bitwise_unchanged(digits):
    cfg = TrainConfig(method="rae", steps=12, batch_size=32, chunk_size=6)
    with_bad = train(cfg, digits, seeds=[0, 1], sweep={"lr": [5e-4, 1e30]}, progress=False)
    without = train(cfg, digits, seeds=[0, 1], sweep={"lr": [5e-4, 1e-3]}, progress=False)
    assert list(with_bad.diverged_at[:2]) == [-1, -1]
    assert np.all(with_bad.diverged_at[2:] >= 0)
    first_two = lambda runs: jax.tree.map(lambda leaf: leaf[:2], (runs.state.params, runs.state.opt_state, runs.losses))
    chex.assert_trees_all_equal(first_two(with_bad), first_two(without))
    chex.assert_tree_all_finite(with_bad.state.params)  # the frozen runs keep their last finite parameters


def test_interrupted_run_resumes_to_the_same_result(digits, tmp_path):
    cfg = TrainConfig(method="drae-gp", estimator="gumbel-rao", steps=40, batch_size=32, chunk_size=20)
    path = tmp_path / "ckpt.msgpack"
    partial = train(cfg, digits, seeds=[0, 1], checkpoint_path=path, stop_after_chunks=1, progress=False)
    assert partial.losses.shape == (2, 20)
    resumed = train(cfg, digits, seeds=[0, 1], checkpoint_path=path, progress=False)
    straight = train(cfg, digits, seeds=[0, 1], progress=False)
    chex.assert_trees_all_equal((resumed.state, resumed.metrics), (straight.state, straight.metrics))
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
    chex.assert_trees_all_equal(a.state, b.state)


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
    gmm = runs.fit_ex_post(jax.random.key(0), digits.train_images[:500], n_components=3)
    assert gmm.means.shape == (2, 3, 16)
    samples = runs.sample_ex_post(jax.random.key(1), gmm, 5)
    assert samples.shape == (2, 5, 8, 8, 1)
    prior = runs.sample_prior(jax.random.key(1), 5)
    assert prior.shape == (2, 5, 8, 8, 1)
    # ex-post codes follow the fitted density: their mean is near the code mean, not 0
    codes = runs.sample_ex_post_codes(jax.random.key(2), gmm, 4000)
    train_codes = runs.encode(digits.train_images[:500])
    np.testing.assert_allclose(
        codes.mean(axis=1), train_codes.mean(axis=1), atol=0.15 * float(np.abs(train_codes).max())
    )


@pytest.fixture(scope="module")
def adam_problem():
    key = jax.random.key(3)
    params = {"w": jax.random.normal(key, (8, 4)), "b": jax.numpy.zeros(4)}
    grads = [
        jax.tree.map(lambda p, t=t: jax.random.normal(jax.random.fold_in(key, t), p.shape), params) for t in range(4)
    ]
    return params, grads


def _stepper(optimizer):
    """One jitted step p <- apply_updates(p, update(g, state, p, alive, lr)) of an optimizer."""

    @jax.jit
    def step(params, state, grads, lr, alive):
        updates, state = optimizer.update(grads, state, params, alive=alive, learning_rate=lr)
        return optax.apply_updates(params, updates), state

    return step


@pytest.mark.parametrize("name, reference", [("adam", optax.adam), ("sgd", optax.sgd)])
def test_freezing_optimizer_steps_match_optax(adam_problem, name, reference):
    """The freezing optimizers are optax's adam and sgd (up to float rounding) while alive."""
    params, grads = adam_problem
    lr = np.float32(3e-2)
    reference = optax.inject_hyperparams(reference)(learning_rate=lr)
    ref_params, ref_state = params, reference.init(params)
    optimizer = make_optimizer(name)
    ours_params, ours_state = params, optimizer.init(params)
    step = _stepper(optimizer)
    for g in grads:
        updates, ref_state = reference.update(g, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)
        ours_params, ours_state = step(ours_params, ours_state, g, lr, True)
    chex.assert_trees_all_close(ours_params, ref_params, rtol=1e-6, atol=1e-9)
    if name == "adam":
        ref_adam = ref_state.inner_state[0]
        chex.assert_trees_all_close((ours_state.mu, ours_state.nu), (ref_adam.mu, ref_adam.nu), rtol=1e-6, atol=1e-9)
        assert int(ours_state.count) == int(ref_adam.count) == len(grads)


@pytest.mark.parametrize("steps_before", [0, 2])
@pytest.mark.parametrize("name, max_grad_norm", [("adam", None), ("adam", 0.5), ("sgd", None), ("sgd", 0.5)])
def test_frozen_step_returns_the_state_bitwise_even_for_nan_gradients(adam_problem, steps_before, name, max_grad_norm):
    """Alone or chained after optax's clipping (max_grad_norm), a frozen step returns params and
    the optimizer's whole state bit for bit, with NaN and infinite gradients."""
    params, grads = adam_problem
    optimizer = make_optimizer(name, max_grad_norm)
    step = _stepper(optimizer)
    state = optimizer.init(params)
    for g in grads[:steps_before]:
        params, state = step(params, state, g, np.float32(1e-2), True)
    nan_grads = jax.tree.map(lambda g: g.at[0].set(np.nan).at[-1].set(np.inf), grads[-1])
    frozen = step(params, state, nan_grads, np.float32(1e-2), False)
    chex.assert_trees_all_equal(frozen, (params, state))
    if max_grad_norm is not None:  # the chain did clip while alive: a large gradient moves p by lr * 0.5
        big = jax.tree.map(lambda g: 1e3 * g, grads[0])
        clipped_sgd = make_optimizer("sgd", max_grad_norm)
        moved, _ = _stepper(clipped_sgd)(params, clipped_sgd.init(params), big, np.float32(1.0), True)
        norm = optax.tree.norm(jax.tree.map(lambda a, b: a - b, moved, params))
        np.testing.assert_allclose(norm, max_grad_norm, rtol=1e-5)


def test_config_chooses_the_optimizer(digits):
    """TrainConfig.optimizer and max_grad_norm reach the trainer: SGD clipped to a global
    gradient norm c moves the parameters by at most c * lr per step, and a diverging clipped
    run still freezes."""
    cfg = TrainConfig(method="rae", steps=6, batch_size=32, chunk_size=6, optimizer="sgd", lr=1.0)
    adam = train(cfg.replace(optimizer="adam", lr=5e-4), digits, seeds=[0], progress=False)
    sgd = train(cfg, digits, seeds=[0], progress=False)
    clipped = train(cfg.replace(max_grad_norm=1e-3), digits, seeds=[0], sweep={"lr": [1.0, 1e30]}, progress=False)
    assert len(clipped.state.opt_state) == 2  # the chain's state: (clipping, sgd)
    assert not np.allclose(adam.losses[0, 1:], sgd.losses[0, 1:])
    trainer = make_train(cfg, digits)
    start = trainer.init(jax.random.key(0), default_hparams(trainer.config)).params
    moved = lambda runs: float(optax.tree.norm(jax.tree.map(lambda a, b: a[0] - b, runs.state.params, start)))
    assert 0 < moved(clipped) <= 6 * 1e-3 * (1 + 1e-5) < moved(sgd)
    # lr 1e30 times a gradient of norm 1e-3 still moves the parameters by 1e27: frozen, finite
    assert clipped.diverged_at[0] == -1 and clipped.diverged_at[1] >= 0
    chex.assert_tree_all_finite(clipped.state.params)


@pytest.mark.parametrize("name,arch", [("rae", "mlp"), ("dvae", "mlp"), ("vqvae", "mlp"), ("rae", "conv-small")])
def test_bernoulli_rows_train_on_binarized_digits(name, arch):
    """A continuous, a discrete, a VQ and a convolutional row with a Bernoulli decoder: the loss
    falls and evaluation decodes the logits to probabilities in [0, 1]."""
    from jaxrae.data import load_data

    data = load_data("digits@binarize=static", n_train=400, n_test=20)
    runs = train(
        TrainConfig(method=name, arch=arch, likelihood="bernoulli", steps=30, **FAST), data, seeds=[0], progress=False
    )
    assert np.all(np.isfinite(runs.losses)) and np.all(runs.ok)
    assert runs.metrics["rec"][:, -5:].mean() < runs.metrics["rec"][:, :5].mean()
    images = runs.reconstruct(data.test_images)
    assert images.min() >= 0 and images.max() <= 1 and not np.all(np.isin(images, (0.0, 1.0)))


@pytest.fixture(scope="module")
def dynamic_digits():
    from jaxrae.data import load_data

    return load_data("digits@binarize=dynamic", n_train=500, n_test=20)


def test_dynamic_binarization_draws_each_batch_from_the_step_key(dynamic_digits):
    """The batch of step t is binarize_batch(fold_in(step_key_t, DYNAMIC_BINARIZE_STREAM), images[idx_t]),
    rebuilt here from the run key alone: the step's loss on it equals the trainer's, and the draw
    is {0, 255}, differs between steps and between run keys, and differs from the grey batch."""
    from jaxrae.data import DYNAMIC_BINARIZE_STREAM, binarize_batch

    config = TrainConfig(method="ae", steps=2, batch_size=32, chunk_size=2)
    trainer = make_train(config, dynamic_digits)
    images = jax.numpy.asarray(dynamic_digits.train_images_u8)

    def batches(run_key, t):
        state = trainer.init(run_key, default_hparams(trainer.config))
        batch_key, step_key = jax.random.split(jax.random.fold_in(state.key, t))
        grey = images[jax.random.randint(batch_key, (config.batch_size,), 0, images.shape[0])]
        return state, step_key, grey, binarize_batch(jax.random.fold_in(step_key, DYNAMIC_BINARIZE_STREAM), grey)

    state, step_key, grey, binary = batches(jax.random.key(0), 0)
    _, metrics = jax.jit(trainer.run, static_argnums=2)(state, images, 1)
    _, by_hand = jax.jit(trainer.step)(state, step_key, binary)
    _, on_grey = jax.jit(trainer.step)(state, step_key, grey)
    np.testing.assert_allclose(metrics["loss"][0], by_hand["loss"], rtol=1e-6)
    assert not np.isclose(metrics["loss"][0], on_grey["loss"], rtol=1e-3)
    assert set(np.unique(np.asarray(binary)).tolist()) == {0, 255} and len(np.unique(np.asarray(grey))) > 2
    # the same images drawn at another step, or under another run key, are binarized differently
    _, step_key_1, _, _ = batches(jax.random.key(0), 1)
    _, step_key_other, _, _ = batches(jax.random.key(1), 0)
    for other in (step_key_1, step_key_other):
        assert not np.array_equal(binary, binarize_batch(jax.random.fold_in(other, DYNAMIC_BINARIZE_STREAM), grey))


def test_dynamic_binarization_keeps_seeds_independent_of_their_batch(dynamic_digits):
    """Seed s trains to the same losses alone or among other seeds under dynamic binarization, and
    to other losses than on the grey images (same train bytes: only the draw differs)."""
    # rae's weight for 784 pixels, where this test's rounding margin was set
    config = TrainConfig(method="rae", steps=6, batch_size=32, chunk_size=3, beta=0.049)
    both = train(config, dynamic_digits, seeds=[0, 1], progress=False)
    alone = train(config, dynamic_digits, seeds=[1], progress=False)
    chex.assert_trees_all_close(alone.metrics["loss"][0], both.metrics["loss"][1], rtol=1e-5)
    chex.assert_trees_all_close(
        jax.tree.map(lambda a: a[0], alone.state.params),
        jax.tree.map(lambda a: a[1], both.state.params),
        rtol=1e-5,
        atol=1e-6,
    )
    grey = train(config, dataclasses.replace(dynamic_digits, binarize=None), seeds=[0, 1], progress=False)
    assert not np.any(np.isclose(grey.losses, both.losses, rtol=1e-3))
