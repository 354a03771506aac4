"""Preset weights for the data at hand: Ghosh et al.'s per-pixel weights, stated at 784 pixels, are
resolved for the image size training sees (w(P) = w_784 * P / 784); weights a user sets are kept."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrae import methods
from jaxrae.compare import row_config, row_weights
from jaxrae.config import TrainConfig
from jaxrae.errors import ConfigError
from jaxrae.experiment import Experiment
from jaxrae.train import default_hparams, make_train, train

MNIST, DIGITS = (28, 28, 1), (8, 8, 1)

#: TrainConfig(method=name).beta/.lam before the weights depended on the image size (main at
#: 1759062): the numbers every 784-pixel run trained with, which must not move by a bit.
BEFORE = {
    "ae": (0.0, 0.0),
    "vae": (0.312, 0.0),
    "cv-vae": (0.039, 0.0),
    "rae": (0.049, 0.0),
    "rae-l2": (0.0098, 7.84e-05),
    "rae-gp": (0.0098, 3.92e-05),
    "rae-sn": (0.8819999999999999, 0.0),
    "wae": (23.52, 0.0),
    "dae": (0.0, 0.0),
    "dvae": (0.312, 0.0),
    "dvae-st": (0.312, 0.0),
    "drae": (0.01, 0.0),
    "drae-noise": (0.01, 0.0),
    "drae-l2": (0.01, 7.84e-05),
    "drae-gp": (0.01, 3.92e-05),
    "drae-sn": (0.01, 0.0),
    "vqvae": (1.0, 0.0),
    "fsq": (0.0, 0.0),
}
#: Presets converted from per-pixel losses (and the discrete RAEs, on rae-l2's scale)
SCALED = {"rae", "rae-l2", "rae-gp", "rae-sn", "wae", "drae", "drae-noise", "drae-l2", "drae-gp", "drae-sn"}


def test_every_preset_is_listed():
    assert set(BEFORE) == set(methods.names())
    assert {n for n in methods.names() if methods.get(n).weight_pixels} == SCALED


@pytest.mark.parametrize("name", list(BEFORE))
def test_784_pixel_configs_are_bitwise_unchanged(name):
    config = TrainConfig(method=name).for_images(MNIST)
    assert (config.beta, config.lam) == BEFORE[name]  # == on floats: bit for bit
    assert config.weights_resolved and config.weight_pixels is None
    # the config that trains, and what records and checkpoint headers hold, as before the change
    assert config == TrainConfig(method=name, beta=BEFORE[name][0], lam=BEFORE[name][1])
    assert "weight_pixels" not in config.to_dict()


@pytest.mark.parametrize("name", list(BEFORE))
def test_64_pixel_weights_are_the_784_pixel_ones_times_64_over_784(name):
    at_784 = TrainConfig(method=name).for_images(MNIST)
    at_64 = TrainConfig(method=name).for_images(DIGITS)
    factor = 64 / 784 if name in SCALED else 1.0
    assert at_64.beta == at_784.beta * factor and at_64.lam == at_784.lam * factor
    if name in SCALED and at_784.beta:
        assert at_64.beta == pytest.approx(at_784.beta / 12.25, rel=1e-15)


def test_the_formula_of_the_docstring():
    # beta_here = beta_official * 2 * P / d, lambda_here = lambda_official * P, d = 16
    for pixels, shape in ((784, MNIST), (64, DIGITS), (3072, (32, 32, 3))):
        config = TrainConfig(method="rae-l2").for_images(shape)
        assert config.beta == pytest.approx(1e-4 * 2 * pixels / 16, rel=1e-14)
        assert config.lam == pytest.approx(1e-7 * pixels, rel=1e-14)
    assert TrainConfig(method="wae").for_images(DIGITS).beta == pytest.approx(3e-2 * 64, rel=1e-14)


def test_user_set_weights_are_taken_as_given():
    config = TrainConfig(method="rae-l2", beta=0.5).for_images(DIGITS)
    assert config.beta == 0.5  # given: kept
    assert config.lam == BEFORE["rae-l2"][1] * (64 / 784)  # left to the preset: resolved
    both = TrainConfig(method="rae-gp", beta=0.25, lam=1e-3)
    assert both.weights_resolved and both.for_images(DIGITS) is both
    # a size-independent method is resolved at once, and its weights do not move
    assert TrainConfig(method="vae").weights_resolved and TrainConfig(method="vae").beta == 0.312


def test_a_weight_given_with_its_image_size_is_scaled_like_a_presets():
    config = TrainConfig(method="rae", beta=0.0098, weight_pixels=784)
    assert config.beta == 0.0098 and not config.weights_resolved
    assert config.weight_sizes() == {"beta": 784, "lam": 784}
    resolved = config.for_images(DIGITS)
    assert resolved.beta == TrainConfig(method="rae-l2").for_images(DIGITS).beta  # follows rae-l2
    assert resolved.weight_pixels is None and resolved.for_images(MNIST) is resolved  # resolving twice: no-op
    assert TrainConfig(method="vae", beta=1.0, weight_pixels=64).for_images(MNIST).beta == 784 / 64
    assert TrainConfig(method="rae-l2", beta=0.5).weight_sizes() == {"beta": None, "lam": 784}
    for bad in (0, -3, 2.5, True, "784"):
        with pytest.raises(ConfigError, match="weight_pixels"):
            TrainConfig(method="rae", beta=0.1, weight_pixels=bad)
    with pytest.raises(ConfigError, match="set beta or lam"):
        TrainConfig(method="rae", weight_pixels=784)
    with pytest.raises(ConfigError, match="image_shape"):
        TrainConfig(method="rae").for_images((8, 0, 1))


def test_unresolved_configs_round_trip_and_refuse_to_train_blind():
    config = TrainConfig(method="rae-gp")
    assert config.beta is None and config.lam is None and not config.weights_resolved
    assert TrainConfig.from_dict(config.to_dict()) == config
    given = TrainConfig(method="rae", beta=0.1, weight_pixels=784)
    assert TrainConfig.from_dict(given.to_dict()) == given
    with pytest.raises(ConfigError, match="not resolved"):
        default_hparams(config)


def test_custom_methods_keep_their_weights_unless_they_state_a_size():
    custom = methods.Method("mine", "deterministic", "identity", "l2", "l2", beta=0.3, lam=1e-4)
    assert (
        TrainConfig(method=custom).beta == 0.3 and "weight_pixels" not in TrainConfig(method=custom).to_dict()["method"]
    )
    sized = dataclasses.replace(custom, weight_pixels=784)
    assert sized.weights(64) == (0.3 * (64 / 784), 1e-4 * (64 / 784))
    assert TrainConfig(method=sized).for_images(DIGITS).beta == 0.3 * (64 / 784)
    assert TrainConfig.from_dict(TrainConfig(method=sized).to_dict()) == TrainConfig(method=sized)


def test_training_uses_the_resolved_weights(digits):
    config = TrainConfig(method="rae-l2", steps=2, chunk_size=2, batch_size=16, latent_dim=4)
    runs = train(config, digits, seeds=[0], progress=False)
    expected = BEFORE["rae-l2"]
    assert runs.config.beta == expected[0] * (64 / 784) and runs.config.lam == expected[1] * (64 / 784)
    assert runs.runs[0]["beta"] == runs.config.beta
    np.testing.assert_array_equal(runs.state.hparams.beta, jnp.float32(runs.config.beta))
    assert make_train(config, digits).config == runs.config


def test_experiment_rows_resolve_against_the_data(digits):
    experiment = Experiment(
        methods=("rae", "vae"),
        variants={
            "rae-beta": {"method": "rae", "beta": 0.0098},
            "rae-beta784": {"method": "rae", "beta": 0.0098, "weight_pixels": 784},
        },
    )
    assert row_config(experiment, "rae", digits).beta == BEFORE["rae"][0] * (64 / 784)
    assert row_config(experiment, "vae", digits).beta == 0.312
    assert row_config(experiment, "rae-beta", digits).beta == 0.0098  # a variant overriding beta keeps it
    assert row_config(experiment, "rae-beta784", digits).beta == 0.0098 * (64 / 784)
    assert row_weights(experiment, "rae", digits) == {
        "pixels": 64,
        "beta": BEFORE["rae"][0] * (64 / 784),
        "lam": 0.0,
        "stated_pixels": {"beta": 784, "lam": 784},
    }
    assert row_weights(experiment, "rae-beta", digits)["stated_pixels"] == {"beta": None, "lam": 784}
