"""Controls of the spectral-norm results: spectral norm on the encoder too (the official RAE
configuration, ``spec_norm_on_dec_only: False``) and batch norm in the decoder, as config choices
whose defaults leave every preset's network and loss as they were."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrae import grid, methods
from jaxrae.config import TrainConfig
from jaxrae.errors import ConfigError
from jaxrae.nets import AutoEncoder
from jaxrae.train import default_hparams, make_train

SHAPE = (8, 8, 1)
TINY = dict(latent_dim=4, n_classes=3, code_dim=2, fsq_levels=(3, 4), batch_size=16)


def _init(config, shape=SHAPE, model=None):
    model = grid.build_model(config, shape) if model is None else model
    z = jnp.zeros((1, grid.code_spec(config).decoder_in))
    return model, model.init(jax.random.key(0), jnp.zeros((1, *shape)), z, False)


def _tree(variables) -> dict:
    return {jax.tree_util.keystr(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_leaves_with_path(variables)}


def _loss(config, model, variables):
    x = jax.random.uniform(jax.random.key(1), (4, *SHAPE))
    loss_fn = grid.make_loss_fn(config, model)
    loss, (batch_stats, _) = loss_fn(
        variables["params"],
        variables.get("batch_stats", {}),
        jax.random.key(2),
        x,
        default_hparams(config.for_images(SHAPE)),
        0,
    )
    return loss, batch_stats


# ------------------------------------------------------------------ defaults are today's networks


def test_defaults_are_filled_from_the_method_and_left_to_the_architecture():
    assert TrainConfig(method="rae-sn").spectral_norm == "decoder"
    assert TrainConfig(method="drae-sn").spectral_norm == "decoder"
    assert TrainConfig(method="rae").spectral_norm == "none"
    assert TrainConfig(method="rae-sn").decoder_norm is None  # the architecture's own
    config = TrainConfig(method="rae-sn", spectral_norm="encoder+decoder", decoder_norm="batch")
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["spectral_norm"] == "encoder+decoder" and config.to_dict()["decoder_norm"] == "batch"


@pytest.mark.parametrize("method", methods.names())
def test_defaults_are_left_out_of_the_dict_so_older_runs_still_resume(method):
    """Headers written before the two switches existed lack them: at their defaults they are not
    written, and a dict without them reads back as the same config."""
    config = TrainConfig(method=method)
    written = config.to_dict()
    assert "spectral_norm" not in written and "decoder_norm" not in written
    assert TrainConfig.from_dict(written) == config


@pytest.mark.parametrize("arch", ["mlp", "conv-small"])
def test_every_preset_at_the_defaults_builds_the_network_and_loss_it_built_before(arch):
    """The new switches at their defaults: the same variables (tree and values) and the same loss
    as the AutoEncoder built from the fields that existed before them."""
    for name in methods.names():
        config = TrainConfig(method=name, arch=arch, **TINY)
        method = config.method_spec
        path = grid.CODE_PATHS[method.encoder]
        before = AutoEncoder(
            arch=arch,
            image_shape=SHAPE,
            encoder_out=path.spec(config).encoder_out,
            spectral_norm=grid.DECODER_REGS[method.decoder_reg].spectral_norm,
            codebook_shape=path.codebook_shape(config),
            sigmoid_output=grid.LIKELIHOODS[config.likelihood].sigmoid_output,
        )
        model, variables = _init(config)
        _, old_variables = _init(config, model=before)
        assert _tree(variables) == _tree(old_variables), name
        same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), variables, old_variables)
        assert all(jax.tree.leaves(same)), name
        assert float(_loss(config, model, variables)[0]) == float(_loss(config, before, old_variables)[0]), name


def test_rae_sn_default_network_is_pinned():
    """rae-sn's MLP as it was before the switches existed: spectral norm on the three decoder
    layers only, no batch norm (pinned, so a changed default cannot pass by changing both sides)."""
    _, variables = _init(TrainConfig(method="rae-sn", **TINY))
    sn = "['batch_stats']['decoder']['SpectralNorm_{i}']['Dense_{i}/kernel/{v}']"
    expected = {sn.format(i=i, v="sigma"): () for i in range(3)}
    expected |= {sn.format(i=i, v="u"): (1, width) for i, width in enumerate((256, 512, 64))}
    for net, widths in (("encoder", (64, 512, 256, 4)), ("decoder", (4, 256, 512, 64))):
        for i in range(3):
            expected[f"['params']['{net}']['Dense_{i}']['kernel']"] = (widths[i], widths[i + 1])
            expected[f"['params']['{net}']['Dense_{i}']['bias']"] = (widths[i + 1],)
    assert _tree(variables) == expected


def test_conv_paper_keeps_its_decoder_batch_norm_unless_asked():
    shape = (16, 16, 1)  # one stride-2 transposed convolution, so one hidden conv layer
    own = _tree(_init(TrainConfig(method="rae", arch="conv-paper", latent_dim=4), shape)[1])
    asked = _tree(_init(TrainConfig(method="rae", arch="conv-paper", latent_dim=4, decoder_norm="batch"), shape)[1])
    assert own == asked
    assert "['batch_stats']['decoder']['BatchNorm_1']['mean']" in own
    assert "['params']['decoder']['ConvTranspose_0']['bias']" not in own  # batch norm would cancel it
    none = _tree(_init(TrainConfig(method="rae", arch="conv-paper", latent_dim=4, decoder_norm="none"), shape)[1])
    assert not any("['decoder']['BatchNorm" in k for k in none)
    assert "['params']['decoder']['ConvTranspose_0']['bias']" in none


def test_invalid_choices_are_named_config_errors():
    with pytest.raises(ConfigError, match="spectral_norm='everywhere' is invalid: choose one of none, decoder"):
        TrainConfig(method="rae-sn", spectral_norm="everywhere")
    with pytest.raises(ConfigError, match="spectral_norm='encoder\\+decoder' is invalid: method 'rae' has"):
        TrainConfig(method="rae", spectral_norm="encoder+decoder")
    with pytest.raises(ConfigError, match="spectral_norm='none' is invalid: method 'rae-sn'.*decoder or encoder"):
        TrainConfig(method="rae-sn", spectral_norm="none")
    with pytest.raises(ConfigError, match="decoder_norm='layer' is invalid: choose one of none, batch"):
        TrainConfig(decoder_norm="layer")


def test_your_own_modules_cannot_take_the_built_in_switches():
    import flax.linen as nn

    from jaxrae.nets import Arch

    class Body(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            return nn.Dense(8 * 8)(x.reshape((x.shape[0], -1))).reshape((x.shape[0], *SHAPE))

    arch = Arch(Body(), Body())
    with pytest.raises(ConfigError, match="decoder_norm='batch' is invalid: batch norm is added to the built-in"):
        TrainConfig(method="rae", arch=arch, decoder_norm="batch")
    config = TrainConfig(method="rae-sn", arch=arch, spectral_norm="encoder+decoder", **TINY)
    with pytest.raises(ConfigError, match="cannot reach into arch.encoder"):
        _init(config)


# ------------------------------------------------------------------ spectral norm on the encoder


def _power_iterations(model, variables, x, n: int):
    """n training-mode encoder passes at fixed weights: n power-iteration steps of every u."""

    def one(batch_stats, _):
        _, updates = model.apply(
            {"params": variables["params"], "batch_stats": batch_stats},
            x,
            True,
            method=AutoEncoder.encode,
            mutable=["batch_stats"],
        )
        return updates["batch_stats"], None

    return jax.jit(lambda bs: jax.lax.scan(one, bs, None, length=n)[0])(variables["batch_stats"])


def _with_spectrum(seed: int, shape, top: float, rest: float) -> np.ndarray:
    """A random (m, n) matrix with largest singular value ``top`` and the others in [0.1, rest]."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(shape[0], shape[0])))
    v, _ = np.linalg.qr(rng.normal(size=(shape[1], shape[1])))
    s = rng.uniform(0.1, rest, size=min(shape))
    s[0] = top
    return (u[:, : s.size] * s) @ v[:, : s.size].T


def test_encoder_and_decoder_spectral_norm_normalizes_every_encoder_kernel():
    config = TrainConfig(method="rae-sn", spectral_norm="encoder+decoder", **TINY)
    model, variables = _init(config)
    assert "encoder" not in _init(TrainConfig(method="rae-sn", **TINY))[1]["batch_stats"]  # decoder only
    # Kernels with a known spectrum (s_1 = 3, s_2 <= 1.5), so the power iteration's error bound is known.
    params = jax.tree.map(lambda a: a, variables["params"])
    encoder = params["encoder"]
    assert len(encoder) == 3  # every layer, the code layer included
    for i, name in enumerate(sorted(encoder)):
        shape = encoder[name]["kernel"].shape
        encoder[name]["kernel"] = jnp.asarray(_with_spectrum(10 + i, shape, 3.0, 1.5), jnp.float32)
    variables = {"params": params, "batch_stats": variables["batch_stats"]}
    x = jax.random.uniform(jax.random.key(3), (16, *SHAPE))
    n = 30
    batch_stats = _power_iterations(model, variables, x, n)
    for i, name in enumerate(sorted(encoder)):
        kernel = np.asarray(encoder[name]["kernel"], np.float64)
        s = np.linalg.svd(kernel, compute_uv=False)
        sigma = float(batch_stats["encoder"][f"SpectralNorm_{i}"][f"{name}/kernel/sigma"])
        # After n power-iteration steps the estimate of s_1 is off by at most tan^2(angle of the
        # random start to the top singular vector) * (s_2 / s_1)^(2n), the tangent of the order of
        # the dimension; float32 matmuls add about 1e-6.
        tol = max(1e-5, max(kernel.shape) * (s[1] / s[0]) ** (2 * n))
        assert s[0] / sigma == pytest.approx(1.0, abs=tol), name  # the normalized kernel's largest singular value
    # ... and the normalized kernels are what the encoder applies: dense layers divided by sigma
    # and ReLUs compose to a 1-Lipschitz map, which the raw kernels (s_1 = 3 each) would not give.
    trained = {"params": params, "batch_stats": batch_stats}
    a, b = jax.random.uniform(jax.random.key(4), (2, 64, *SHAPE))
    encode = lambda v, x: model.apply(v, x, False, method=AutoEncoder.encode)
    ratio = np.linalg.norm(encode(trained, a) - encode(trained, b), axis=1) / np.linalg.norm(
        (a - b).reshape(64, -1), axis=1
    )
    assert ratio.max() <= 1.0 + 1e-4


# ------------------------------------------------------------------ batch norm in the decoder


def test_decoder_batch_norm_trains_its_statistics_and_evaluates_with_them(digits):
    config = TrainConfig(method="rae", decoder_norm="batch", steps=5, **TINY)
    trainer = make_train(config, digits)
    state = trainer.init(jax.random.key(0), default_hparams(trainer.config))
    before = state.batch_stats["decoder"]
    assert set(before) == {"BatchNorm_0", "BatchNorm_1"}  # after both hidden layers
    trained, _ = jax.jit(trainer.run, static_argnums=2)(state, jnp.asarray(digits.train_images_u8), 5)
    after = trained.batch_stats["decoder"]
    for bn in before:  # the running averages moved away from their initial 0 and 1
        assert not np.allclose(after[bn]["mean"], before[bn]["mean"])
        assert not np.allclose(after[bn]["var"], before[bn]["var"])
    variables = {"params": trained.params, "batch_stats": trained.batch_stats}
    z = jax.random.normal(jax.random.key(5), (8, 4))
    decode = lambda v, z, train: trainer.model.apply(v, z, train, method=AutoEncoder.decode, mutable=["batch_stats"])[0]
    # evaluation uses the running statistics: a code decodes the same alone or in any batch ...
    np.testing.assert_allclose(decode(variables, z, False)[:1], decode(variables, z[:1], False), rtol=1e-5, atol=1e-6)
    # ... and reads them: other running means give another image
    shifted = jax.tree.map(lambda a: a + 1.0, trained.batch_stats)
    assert not np.allclose(
        decode({"params": trained.params, "batch_stats": shifted}, z, False), decode(variables, z, False)
    )
    # training mode normalizes with the batch's own statistics, so the batch matters
    assert not np.allclose(decode(variables, z, True)[:2], decode(variables, z[:2], True), atol=1e-4)
    # and the codec (evaluation) agrees with the decoder in evaluation mode
    np.testing.assert_allclose(trainer.codec.decode(variables, z), decode(variables, z, False), rtol=1e-6)
