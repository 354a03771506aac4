"""Open training: learning-rate schedules read back per step against their formulas (and a frozen
run stays frozen under every schedule), your own Flax modules as encoder and decoder, and a
Dataset from your own arrays."""

import math

import chex
import flax.linen as nn
import jax
import numpy as np
import pytest

import jaxrae
from jaxrae.cli import build_parser, config_from_args
from jaxrae.config import TrainConfig
from jaxrae.errors import ConfigError, DataError
from jaxrae.nets import Arch
from jaxrae.train import make_train, train

FAST = {"batch_size": 32, "chunk_size": 10}
STEPS = 20
PEAKS = (1e-3, 1e30)  # the second run diverges and must stay frozen


def _expected_lr(schedule: str, peak: float, t: int, steps: int, warmup: int, f: float) -> float:
    """The schedules' formulas written out in float64 (not through optax)."""
    cosine = lambda u, n: f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(u, n) / n))
    if schedule == "constant":
        return peak
    if schedule == "cosine":
        return peak * cosine(t, steps)
    if schedule == "warmup-cosine":
        return peak * (t / warmup if t < warmup else cosine(t - warmup, steps - warmup))
    assert schedule == "exponential"
    return peak * f ** (t / steps)


@pytest.mark.parametrize(
    ("schedule", "warmup", "fraction"),
    [("constant", 0, None), ("cosine", 0, 0.1), ("warmup-cosine", 5, 0.0), ("exponential", 0, 0.01)],
)
def test_learning_rate_per_step_follows_the_schedule_and_a_frozen_run_stays_frozen(digits, schedule, warmup, fraction):
    cfg = TrainConfig(
        method="rae", steps=STEPS, lr_schedule=schedule, warmup_steps=warmup, final_lr_fraction=fraction, **FAST
    )
    runs = train(cfg, digits, seeds=[0], sweep={"lr": list(PEAKS)}, progress=False)
    f = cfg.final_lr_fraction if cfg.final_lr_fraction is not None else 0.0
    expected = np.array([[_expected_lr(schedule, peak, t, STEPS, warmup, f) for t in range(STEPS)] for peak in PEAKS])
    for got, want, peak in zip(runs.metrics["lr"], expected, PEAKS):  # float32 cos(pi t / T): ~1e-7 of the peak
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6 * peak)
    if schedule == "constant":  # the peak itself, bit for bit: constant training is unchanged
        assert np.all(runs.metrics["lr"] == np.float32(PEAKS)[:, None])
    assert runs.diverged_at[0] == -1 and 0 <= runs.diverged_at[1] < FAST["chunk_size"]
    # Frozen inside the first chunk: the second chunk does not move it by a bit.
    half = train(cfg, digits, seeds=[0], sweep={"lr": list(PEAKS)}, progress=False, stop_after_chunks=1)
    frozen = lambda r: jax.tree.map(lambda leaf: leaf[1], (r.state.params, r.state.opt_state))
    chex.assert_trees_all_equal(frozen(half), frozen(runs))
    chex.assert_tree_all_finite(frozen(runs)[0])


def test_a_schedule_changes_the_trajectory(digits):
    constant = train(TrainConfig(method="rae", steps=STEPS, **FAST), digits, progress=False)
    cosine = train(TrainConfig(method="rae", steps=STEPS, lr_schedule="cosine", **FAST), digits, progress=False)
    np.testing.assert_array_equal(constant.losses[:, 0], cosine.losses[:, 0])  # step 0: lr equal, same batch
    assert not np.array_equal(constant.losses[:, 2:], cosine.losses[:, 2:])


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"lr_schedule": "cosine", "warmup_steps": 3}, "warmup_steps"),
        ({"lr_schedule": "warmup-cosine"}, "warmup_steps"),
        ({"lr_schedule": "warmup-cosine", "warmup_steps": 20, "steps": 20}, "warmup_steps"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"final_lr_fraction": 0.1}, "final_lr_fraction"),
        ({"lr_schedule": "exponential"}, "final_lr_fraction"),
        ({"lr_schedule": "exponential", "final_lr_fraction": 0.0}, "final_lr_fraction"),
        ({"lr_schedule": "cosine", "final_lr_fraction": 1.5}, "final_lr_fraction"),
    ],
)
def test_invalid_schedule_settings_name_their_field(fields, field):
    with pytest.raises(ConfigError, match=f"^{field}="):
        TrainConfig(**fields)


def test_schedule_flags_and_round_trip():
    args = build_parser().parse_args(
        [
            "train",
            "--out",
            "x",
            "--lr-schedule",
            "warmup-cosine",
            "--warmup-steps",
            "100",
            "--final-lr-fraction",
            "0.05",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.lr_schedule, cfg.warmup_steps, cfg.final_lr_fraction) == ("warmup-cosine", 100, 0.05)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig(lr_schedule="cosine").final_lr_fraction == 0.0  # the cosine's default, recorded


# --------------------------------------------------------------------------------------------
# Bring your own encoder. README.md's section "Bring your own encoder" holds the same text as
# this test's body (between the markers); keep them in step.


def test_readme_bring_your_own_encoder():
    # The README holds this text verbatim: the formatter leaves it alone.
    # fmt: off
    # --- README snippet: bring your own encoder ---
    import flax.linen as nn
    import jax

    import jaxrae
    from jaxrae.nets import Arch

    class ConvEncoder(nn.Module):
        """Images (B, H, W, C) in [0, 1] -> features (B, F); jaxrae adds a linear layer to the code."""

        features: tuple[int, ...] = (16, 32)  # tuples, not lists: modules must be hashable

        @nn.compact
        def __call__(self, x, train: bool):
            for width in self.features:
                x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2))(x))
            return x.reshape((x.shape[0], -1))

    class ConvDecoder(nn.Module):
        """Codes (B, D) -> (B, 8, 8, 1) before the sigmoid, which jaxrae applies."""

        @nn.compact
        def __call__(self, z, train: bool):
            h = nn.relu(nn.Dense(4 * 4 * 32)(z)).reshape((z.shape[0], 4, 4, 32))
            h = nn.relu(nn.ConvTranspose(16, (3, 3), strides=(2, 2))(h))  # 4x4 -> 8x8
            return nn.Conv(1, (3, 3))(h)

    # Your own arrays: uint8 in [0, 255] or float in [0, 1], (N, H, W) or (N, H, W, C), checked
    # as files are. Here, the 8x8 digits that ship with jaxrae, as floats.
    digits = jaxrae.load_data("digits")
    data = jaxrae.make_dataset("my-digits", digits.train_images, digits.train_labels,
                               digits.test_images, digits.test_labels)

    config = jaxrae.TrainConfig(method="rae", arch=Arch(ConvEncoder(), ConvDecoder(), name="my-conv"),
                                steps=60, batch_size=32, chunk_size=30, lr_schedule="cosine")  # lr decays to 0
    runs = jaxrae.train(config, data, seeds=[0, 1, 2])  # three seeds, one vmapped program
    codes = runs.encode(data.test_images[:10])  # (3 seeds, 10, latent_dim 16)
    images = runs.decode(codes)  # (3, 10, 8, 8, 1), in [0, 1]
    samples = runs.sample_ex_post(jax.random.key(0), runs.fit_ex_post(jax.random.key(1), data.train_images), 10)
    # --- end of README snippet ---
    # fmt: on

    assert codes.shape == (3, 10, 16) and images.shape == (3, 10, 8, 8, 1) and samples.shape == (3, 10, 8, 8, 1)
    assert np.all((images >= 0) & (images <= 1))
    assert np.all(runs.ok) and np.all(runs.losses[:, -10:].mean(1) < runs.losses[:, :10].mean(1))
    params = runs.state.params
    assert set(params["encoder"]) == {"body", "head"} and set(params["decoder"]) == {"body"}
    assert params["encoder"]["head"]["kernel"].shape[-1] == 16  # the code path set the width
    # the seeds differ, and each equals the pure trainer vmapped over its keys
    assert not np.allclose(codes[0], codes[1])
    trainer = make_train(config, data)
    state, _ = jax.jit(jax.vmap(trainer))(jax.vmap(jax.random.key)(np.arange(3)))
    chex.assert_trees_all_close(state.params, params, rtol=1e-5, atol=1e-6)
    # equal modules make equal configs, which share the compiled programs
    again = jaxrae.TrainConfig(
        method="rae",
        arch=Arch(ConvEncoder(), ConvDecoder(), name="my-conv"),
        steps=60,
        batch_size=32,
        chunk_size=30,
        lr_schedule="cosine",
    )
    assert again == config and hash(again) == hash(config)


class _Flat(nn.Module):
    widths: tuple = (32,)

    @nn.compact
    def __call__(self, x, train: bool):
        return nn.relu(nn.Dense(self.widths[0])(x.reshape((x.shape[0], -1))))


class _Dense8x8(nn.Module):
    shape: tuple = (8, 8, 1)

    @nn.compact
    def __call__(self, z, train: bool):
        return nn.Dense(math.prod(self.shape))(z).reshape((z.shape[0], *self.shape))


def test_user_modules_serve_gaussian_and_categorical_code_paths(digits):
    arch = Arch(_Flat(), _Dense8x8())
    for method, width in (("vae", 2 * 4), ("dvae", 4 * 10)):
        cfg = TrainConfig(method=method, arch=arch, latent_dim=4, steps=4, batch_size=16, chunk_size=4)
        runs = train(cfg, digits, seeds=[0, 1], progress=False)
        assert runs.state.params["encoder"]["head"]["kernel"].shape[-1] == width
        assert np.all(np.isfinite(runs.losses))


def test_user_module_contracts_are_config_errors(digits):
    with pytest.raises(ConfigError, match="hashable"):
        Arch(_Flat(widths=[32]), _Dense8x8())
    with pytest.raises(ConfigError, match="^arch.encoder="):
        Arch("mlp", _Dense8x8())
    small = {"steps": 2, "batch_size": 16, "chunk_size": 2}
    with pytest.raises(ConfigError, match="arch.decoder output shape"):
        train(TrainConfig(arch=Arch(_Flat(), _Dense8x8(shape=(8, 8, 3))), **small), digits, progress=False)
    with pytest.raises(ConfigError, match="spectral norm"):
        train(TrainConfig(method="rae-sn", arch=Arch(_Flat(), _Dense8x8()), **small), digits, progress=False)
    cfg = TrainConfig(arch=Arch(_Flat(), _Dense8x8(), name="flat"))
    assert cfg.to_dict()["arch"]["name"] == "flat" and "_Flat" in cfg.to_dict()["arch"]["encoder"]
    with pytest.raises(ConfigError, match="^arch="):
        TrainConfig.from_dict(cfg.to_dict())


def test_dataset_from_uint8_or_float_arrays_is_the_same_and_validated(digits):
    u8 = jaxrae.make_dataset(
        "d", digits.train_images_u8, digits.train_labels, digits.test_images_u8, digits.test_labels
    )
    f = jaxrae.make_dataset("d", digits.train_images, digits.train_labels, digits.test_images, digits.test_labels)
    np.testing.assert_array_equal(u8.train_images_u8, f.train_images_u8)
    assert u8.fingerprint == f.fingerprint == digits.fingerprint
    with pytest.raises(DataError, match="range"):
        jaxrae.make_dataset(
            "d", digits.train_images * 255.0, digits.train_labels, digits.test_images, digits.test_labels
        )
