"""TrainConfig and the method grid: defaults, validation, custom rows."""

import dataclasses

import pytest

from jaxrae import methods
from jaxrae.config import TrainConfig
from jaxrae.errors import ConfigError


def test_presets_cover_the_grid():
    continuous = ["ae", "vae", "cv-vae", "rae", "rae-l2", "rae-gp", "rae-sn", "wae"]
    discrete = ["dae", "dvae", "dvae-st", "drae", "drae-noise", "drae-l2", "drae-gp", "drae-sn", "vqvae", "fsq"]
    assert methods.names() == continuous + discrete
    assert not any(methods.get(n).discrete for n in continuous)
    assert all(methods.get(n).discrete for n in discrete)


def test_defaults_are_the_paper_settings():
    cfg = TrainConfig(method="rae-l2").for_images((28, 28, 1))
    assert (cfg.latent_dim, cfg.batch_size, cfg.lr) == (16, 100, 5e-4)
    # official: beta 1e-4 on mean_j z_j^2 next to a per-pixel error; here 0.5 * ||z||^2 next to a
    # per-image error of P = 784 pixels, d = 16: 1e-4 * 2 * 784 / 16; lambda 1e-7 * 784
    assert cfg.beta == pytest.approx(0.0098) and cfg.lam == pytest.approx(7.84e-5)
    assert TrainConfig(method="rae-gp").for_images((28, 28, 1)).lam == pytest.approx(0.5e-7 * 784)
    assert TrainConfig(method="vae").beta == pytest.approx(0.312)  # official losses already sum
    assert TrainConfig(method="ae").beta == 0.0
    # explicit values win over the preset's
    assert TrainConfig(method="rae-l2", beta=0.5).beta == 0.5


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"method": "nope"}, "nope"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"beta": -1.0}, "beta"),
        ({"lam": -1e-3}, "lam"),
        ({"lr": 0.0}, "lr"),
        ({"steps": 0}, "steps"),
        ({"tau": 0.0}, "tau"),
        ({"n_classes": 1}, "n_classes"),
        ({"gumbel_rao_samples": 0}, "gumbel_rao_samples"),
        ({"arch": "resnet"}, "arch"),
        ({"method": "drae", "estimator": "magic"}, "estimator"),
        ({"method": "rae", "estimator": "reinmax"}, "estimator"),
        ({"fsq_levels": (8, 1)}, "fsq_levels"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"optimizer": "lbfgs"}, "optimizer='lbfgs' is invalid: choose one of adam, sgd"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"max_grad_norm": float("nan")}, "max_grad_norm"),
        ({"max_grad_norm": float("inf")}, "max_grad_norm"),
        ({"steps": 10**12}, "steps=1000000000000 is invalid: must be at most 100,000,000"),
        ({"steps": 10**23}, "steps=.* is invalid: must be at most"),
        ({"latent_dim": 10**8}, "latent_dim=100000000 is invalid: must be at most 1,048,576"),
        ({"gumbel_rao_samples": 10**6}, "gumbel_rao_samples"),
    ],
)
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**changes)


def test_config_is_frozen_and_round_trips():
    cfg = TrainConfig(method="drae-gp", estimator="gumbel-rao", tau=0.7, optimizer="sgd", max_grad_norm=2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="learning_rate=1.0 is invalid: unknown config key"):
        TrainConfig.from_dict({**cfg.to_dict(), "learning_rate": 1.0})


def test_custom_row_of_the_grid():
    custom = methods.Method("rae-mmd-gp", "deterministic", "identity", "mmd", "gp", beta=1e-2, lam=1e-7)
    cfg = TrainConfig(method=custom)
    assert cfg.beta == 1e-2 and cfg.method_spec is custom
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="noise"):
        methods.Method("bad", "deterministic", "identity", "l2", "noise")
    with pytest.raises(ConfigError, match="does not fit"):
        methods.Method("bad", "categorical", "reparameterize", "kl", "none")
