"""The method grid as registries: validation is read from the entries, the training and the
evaluation code paths agree, and a new encoder kind or regularizer is one entry each."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrae import grid, methods
from jaxrae.config import TrainConfig
from jaxrae.errors import ConfigError
from jaxrae.nets import AutoEncoder
from jaxrae.train import default_hparams, make_train, train


def test_which_latent_regularizers_fit_is_read_from_the_entries():
    # what each code path provides against what each regularizer reads
    assert {kind: grid.fitting_latent_regs(kind) for kind in grid.CODE_PATHS} == {
        "deterministic": ["none", "l2", "kl", "mmd"],  # kl at the fixed variance (CV-VAE)
        "gaussian": ["kl"],  # needs_latent_reg: "none" would leave the variance unconstrained
        "categorical": ["none", "kl-uniform", "logit-l2"],
        "vq": ["vq"],  # needs_latent_reg: the codebook learns only through its loss
        "fsq": ["none"],
    }
    for name in methods.names():  # every preset is a row the entries accept
        m = methods.get(name)
        assert m.code in grid.CODE_PATHS[m.encoder].codes and m.latent_reg in grid.fitting_latent_regs(m.encoder)
    with pytest.raises(ConfigError, match="latent_reg='l2' is invalid: does not fit encoder='categorical'"):
        methods.Method("bad", "categorical", "argmax", "l2", "none")
    with pytest.raises(ConfigError, match="encoder='nope' is invalid: choose one of deterministic, gaussian"):
        methods.Method("bad", "nope", "identity", "none", "none")
    # "noise" is the code path's own noise: it needs a code that draws some
    assert methods.Method("ok", "categorical", "argmax", "none", "noise", estimator="reinmax").stochastic
    with pytest.raises(ConfigError, match="decoder_reg='noise' is invalid: needs a code that draws noise"):
        methods.Method("bad", "categorical", "argmax", "none", "noise", estimator="st")


@pytest.mark.parametrize("name", ["ae", "drae", "vqvae", "fsq"])
def test_noise_free_training_code_is_the_decoder_input_of_the_evaluation_code(name):
    """For a code path without noise, what reaches the decoder in training (forward value) is
    decoder_input(encode(h)): the two halves of an entry describe one code."""
    config = TrainConfig(method=name, latent_dim=4, n_classes=5, code_dim=3, fsq_levels=(3, 4))
    path = grid.CODE_PATHS[config.method_spec.encoder]
    spec = grid.code_spec(config)
    h = 2.0 * jax.random.normal(jax.random.key(0), (6, spec.encoder_out))
    params = {"codebook": jax.random.normal(jax.random.key(1), (5, 3))}
    code = path.train_code(config, params, h, jax.random.key(2), jnp.float32(1.0))
    chex.assert_shape([code.decoder_in, code.penalty_point], (6, spec.decoder_in))
    codes = path.encode(config, params, h)
    chex.assert_shape(codes, (6, spec.n_vars) if path.discrete else (6, spec.decoder_in))
    decoder_in = path.decoder_input(config, params, codes).reshape((6, -1))
    np.testing.assert_allclose(code.decoder_in, decoder_in, rtol=1e-6, atol=1e-6)
    prior = path.sample_prior(spec, jax.random.key(3), 100)
    chex.assert_shape(prior, (100, spec.n_vars))
    if path.discrete:
        assert prior.dtype == jnp.int32 and 0 <= int(prior.min()) and int(prior.max()) < spec.n_classes


# ---- a new encoder kind and two new regularizers, registered here and nowhere else ----------


def _bounded_train_code(config, params, h, key, tau):
    z = jnp.tanh(h)
    return grid.TrainCode(z, z, {"z": z}, {})


BOUNDED = grid.CodePath(
    codes=("tanh",),
    provides=frozenset({"z"}),
    discrete=False,
    spec=lambda config: grid.CodeSpec(config.latent_dim, config.latent_dim, config.latent_dim, 0),
    train_code=_bounded_train_code,
    encode=lambda config, params, h: jnp.tanh(h),
    decoder_input=lambda config, params, z: z,
    sample_prior=lambda spec, key, n: jax.random.uniform(key, (n, spec.n_vars), minval=-1.0, maxval=1.0),
    stochastic=lambda code, estimator: False,
)
L1 = grid.LatentReg(frozenset({"z"}), lambda code, key: jnp.mean(jnp.sum(jnp.abs(code.latent["z"]), axis=-1)))
DECODER_L1 = grid.DecoderReg(
    lambda params, decode, point: sum(jnp.sum(jnp.abs(w)) for w in jax.tree.leaves(params["decoder"]))
)


@pytest.fixture
def toy_entries(monkeypatch):
    """The toy entries, registered for one test (monkeypatch restores the registries after it)."""
    monkeypatch.setitem(grid.CODE_PATHS, "bounded", BOUNDED)
    monkeypatch.setitem(grid.LATENT_REGS, "l1", L1)
    monkeypatch.setitem(grid.DECODER_REGS, "l1-weights", DECODER_L1)


def test_a_new_encoder_kind_and_regularizers_are_one_entry_each(digits, toy_entries):
    method = methods.Method("bounded-l1", "bounded", "tanh", "l1", "l1-weights", beta=0.5, lam=1e-3)
    config = TrainConfig(method=method, steps=24, batch_size=32, chunk_size=12)
    # validation reads the new entries: the new kind takes the existing "l2" (it provides z),
    # not "kl" (no variance), and the new "l1" does not fit a categorical code
    methods.Method("bounded-l2", "bounded", "tanh", "l2", "gp")
    with pytest.raises(ConfigError, match="does not fit"):
        methods.Method("bad", "bounded", "tanh", "kl", "none")
    with pytest.raises(ConfigError, match="does not fit"):
        methods.Method("bad", "categorical", "argmax", "l1", "none")

    # one step's loss is rec + beta * L1(tanh(E(x))) + lambda * |decoder weights|_1, computed here
    trainer = make_train(config, digits)
    state = trainer.init(jax.random.key(0), default_hparams(trainer.config))
    batch = digits.train_images_u8[:32]
    _, metrics = jax.jit(trainer.step)(state, jax.random.key(1), batch)
    x = batch.astype(np.float32) / 255.0
    variables = {"params": state.params}
    z = np.tanh(np.asarray(trainer.model.apply(variables, x, True, method=AutoEncoder.encode)))
    x_hat = trainer.model.apply(variables, z, True, method=AutoEncoder.decode)
    rec = np.mean(np.sum(np.square(x - np.asarray(x_hat)), axis=(1, 2, 3)))
    latent = np.mean(np.sum(np.abs(z), axis=-1))
    dec = sum(np.abs(np.asarray(w, np.float64)).sum() for w in jax.tree.leaves(state.params["decoder"]))
    np.testing.assert_allclose(metrics["rec"], rec, rtol=1e-5)
    np.testing.assert_allclose(metrics["latent_reg"], latent, rtol=1e-5)
    np.testing.assert_allclose(metrics["decoder_reg"], dec, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], rec + 0.5 * latent + 1e-3 * dec, rtol=1e-5)

    # and the normal many-seed path trains it, with its codec and prior
    runs = train(config, digits, seeds=[0, 1], progress=False)
    assert np.all(runs.ok) and np.all(runs.losses[:, -4:].mean(1) < runs.losses[:, :4].mean(1))
    codes = runs.encode(digits.test_images[:5])
    assert codes.shape == (2, 5, 16) and np.all(np.abs(codes) <= 1)
    prior = runs.sample_prior_codes(jax.random.key(2), 7)
    assert prior.shape == (2, 7, 16) and np.all(np.abs(prior) <= 1)
    assert runs.sample_prior(jax.random.key(2), 3).shape == (2, 3, 8, 8, 1)


@pytest.mark.parametrize("name,arch", [("ae", "mlp"), ("fsq", "mlp"), ("vqvae", "mlp"), ("rae", "conv-small")])
def test_bernoulli_reconstruction_term_is_the_binary_cross_entropy_of_the_decoder_logits(digits, name, arch):
    """With likelihood="bernoulli" the decoder returns logits l and L_rec is
    mean_b sum_p -[x log sigmoid(l) + (1 - x) log(1 - sigmoid(l))], computed here by hand in float64
    from the decoder's output at the training code (noise-free code paths, so it is decode(encode(x)))."""
    config = TrainConfig(
        method=name,
        arch=arch,
        likelihood="bernoulli",
        latent_dim=4,
        n_classes=5,
        code_dim=3,
        fsq_levels=(3, 4),
        batch_size=16,
    )
    trainer = make_train(config, digits.train_images_u8[:64])
    state = trainer.init(jax.random.key(0), default_hparams(trainer.config))
    x = (digits.train_images[:16] > 0.5).astype(np.float32)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    loss, (_, metrics) = grid.make_loss_fn(config, trainer.model)(
        state.params, state.batch_stats, jax.random.key(1), jnp.asarray(x), state.hparams, jnp.int32(0)
    )
    logits = np.asarray(trainer.codec.decode_output(variables, trainer.codec.encode(variables, x)), np.float64)
    assert logits.min() < 0.0 or logits.max() > 1.0 or name != "ae"  # raw logits, not sigmoid outputs
    p = 1.0 / (1.0 + np.exp(-logits))
    by_hand = np.mean(np.sum(-(x * np.log(p) + (1 - x) * np.log1p(-p)), axis=(1, 2, 3)))
    np.testing.assert_allclose(float(metrics["rec"]), by_hand, rtol=1e-5)
    np.testing.assert_allclose(
        float(loss),
        float(
            metrics["rec"] + trainer.config.beta * metrics["latent_reg"] + trainer.config.lam * metrics["decoder_reg"]
        ),
        rtol=1e-6,
    )
    # evaluation decodes to the decoder's mean image sigmoid(l) in [0, 1]
    np.testing.assert_allclose(
        np.asarray(trainer.codec.decode(variables, trainer.codec.encode(variables, x))), p, rtol=1e-5, atol=1e-6
    )


def test_gaussian_likelihood_is_the_summed_squared_error_of_sigmoid_outputs(digits):
    """The default ``gaussian`` entry: sigmoid outputs in [0, 1], L_rec = sum_p (x - x_hat)^2, which is
    -log N(x; x_hat, I/2) - (D/2) log(pi) (the registry's GAUSSIAN_TRAINING_VARIANCE)."""
    config = TrainConfig(method="ae", latent_dim=4, batch_size=16)
    assert config.likelihood == "gaussian" and grid.GAUSSIAN_TRAINING_VARIANCE == 0.5
    trainer = make_train(config, digits.train_images_u8[:64])
    state = trainer.init(jax.random.key(0), default_hparams(trainer.config))
    x = digits.train_images[:16]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    _, (_, metrics) = grid.make_loss_fn(config, trainer.model)(
        state.params, state.batch_stats, jax.random.key(1), jnp.asarray(x), state.hparams, jnp.int32(0)
    )
    x_hat = np.asarray(trainer.codec.decode_output(variables, trainer.codec.encode(variables, x)), np.float64)
    assert 0.0 <= x_hat.min() and x_hat.max() <= 1.0
    np.testing.assert_allclose(float(metrics["rec"]), np.mean(np.sum((x - x_hat) ** 2, axis=(1, 2, 3))), rtol=1e-5)
    log_n = grid.LIKELIHOODS["gaussian"].log_prob(x, x_hat.astype(np.float32), grid.GAUSSIAN_TRAINING_VARIANCE)
    np.testing.assert_allclose(
        np.asarray(-log_n - 32 * np.log(np.pi)), np.sum((x - x_hat) ** 2, axis=(1, 2, 3)), rtol=1e-4
    )


def test_which_rows_have_a_posterior():
    """VAEs (code noise as the decoder regularizer + a KL to the prior) get ELBO/IWAE bounds; the
    other rows are deterministic and are evaluated through their ex-post density."""
    variational = {name for name in methods.names() if grid.has_posterior(TrainConfig(method=name))}
    assert variational == {"vae", "cv-vae", "dvae", "dvae-st", "drae-noise"}
    with pytest.raises(ConfigError, match="likelihood='poisson' is invalid: choose one of gaussian, bernoulli"):
        TrainConfig(likelihood="poisson")
