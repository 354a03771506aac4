"""Tests of binarized data: the ``@binarize=static|dynamic`` spec option and jaxrae.data.binarize.

Frequencies are checked against their binomial law: a count k of on-pixels among n pixels that are
each on with probability p has mean n p and standard deviation sqrt(n p (1 - p)); a correct draw
lands within ``Z_TOL`` of those deviations except with probability below 1e-6 (normal tail at
5 sigma, 5.7e-7), while a wrong formula (p = 1 - x/255, x/256, a coin per image instead of per
pixel) misses by many. The static draw is fixed, so its checks give the same verdict every time.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_data import write_idx_dir

from jaxrae.data import (
    BINARIZE_MODES,
    DYNAMIC_BINARIZE_STREAM,
    STATIC_BINARIZE_SEED,
    area_resize,
    binarize_batch,
    binarize_static,
    center_crop,
    fingerprint,
    load_data,
    make_dataset,
)
from jaxrae.errors import ConfigError, DataError
from jaxrae.features import feature_network

#: Binomial tolerance in standard deviations (see the module docstring).
Z_TOL = 5.0

#: The fingerprint of ``digits@binarize=static``, pinned: the static draw must be the same on every
#: machine, process and numpy version, so a change here must be deliberate.
DIGITS_STATIC_FINGERPRINT = "a2b7a84af5bc32129cdc2a6f196565840bbb5afe5aa2fae637d270ffa2f42e80"


def assert_binomial(on: np.ndarray, grey: np.ndarray, what: str) -> None:
    """Per grey level v: the count of on-pixels among the n pixels of level v is n v/255 within
    ``Z_TOL`` binomial deviations (exactly 0 for v = 0 and n for v = 255); and the same for all
    pixels together (sum of p_i, variance sum of p_i (1 - p_i))."""
    on = np.asarray(on).reshape(-1).astype(np.int64)
    grey = np.asarray(grey).reshape(-1)
    p = grey.astype(np.float64) / 255.0
    for v in np.unique(grey):
        sel = grey == v
        n, k, q = int(sel.sum()), int(on[sel].sum()), v / 255.0
        sd = np.sqrt(n * q * (1 - q))
        assert abs(k - n * q) <= Z_TOL * sd, f"{what}: level {v}: {k} of {n} on, expected {n * q:.1f} +- {sd:.1f}"
    total_sd = np.sqrt(np.sum(p * (1 - p)))
    assert abs(on.sum() - p.sum()) <= Z_TOL * total_sd, (
        f"{what}: {on.sum()} on, expected {p.sum():.1f} +- {total_sd:.1f}"
    )


# --------------------------------------------------------------------------------------------
# Static: one fixed draw


def test_static_is_the_same_across_loads_and_processes_and_pinned():
    a, b = load_data("digits@binarize=static"), load_data("digits", binarize="static")
    chex.assert_trees_all_equal((a.train_images_u8, a.test_images_u8), (b.train_images_u8, b.test_images_u8))
    assert a.name == b.name == "digits@binarize=static" and a.binarize == b.binarize == "static"
    assert a.fingerprint == b.fingerprint == DIGITS_STATIC_FINGERPRINT
    # the name is a spec that reloads the same data
    assert load_data(a.name).fingerprint == a.fingerprint
    code = (
        "import hashlib; from jaxrae.data import load_data; ds = load_data('digits@binarize=static'); "
        "print(hashlib.sha256(ds.train_images_u8.tobytes() + ds.test_images_u8.tobytes()).hexdigest(), ds.fingerprint)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    here = hashlib.sha256(a.train_images_u8.tobytes() + a.test_images_u8.tobytes()).hexdigest()
    assert out == [here, DIGITS_STATIC_FINGERPRINT]


def test_static_values_differ_from_grey_and_follow_the_grey_levels(digits):
    ds = load_data("digits@binarize=static")
    for split in ("train", "test"):
        grey, binary = getattr(digits, f"{split}_images_u8"), getattr(ds, f"{split}_images_u8")
        assert binary.dtype == np.uint8 and binary.shape == grey.shape
        assert set(np.unique(binary)) == {0, 255}
        assert not np.array_equal(binary, grey)
        assert_binomial(binary == 255, grey, f"digits {split}")
        # the float view every consumer reads is exactly {0, 1}
        assert set(np.unique(getattr(ds, f"{split}_images"))) == {0.0, 1.0}
    chex.assert_trees_all_equal((ds.train_labels, ds.test_labels), (digits.train_labels, digits.test_labels))
    # train and test have draws of their own (different Philox keys): the same image gets other bits
    both = np.concatenate([digits.train_images_u8[:50]] * 2)
    assert not np.array_equal(binarize_static(both, "train"), binarize_static(both, "test"))


def test_static_equals_an_independent_reference():
    # numpy's Generator.random() is (raw >> 11) * 2**-53 of the same Philox stream: compared in
    # float64 with x / 255, the same decision as binarize_static's integer test (ties have
    # probability ~2**-53 per pixel).
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(7, 3, 3, 2), dtype=np.uint8)
    for index, split in enumerate(("train", "test")):
        u = np.random.Generator(np.random.Philox(key=np.array([STATIC_BINARIZE_SEED, index], np.uint64))).random(x.size)
        expected = np.where(u.reshape(x.shape) < x / 255.0, 255, 0).astype(np.uint8)
        np.testing.assert_array_equal(binarize_static(x, split), expected)


def test_static_does_not_depend_on_subsetting_or_chunking(monkeypatch):
    full = load_data("digits@binarize=static")
    small = load_data("digits@binarize=static", n_train=100, n_test=30)
    np.testing.assert_array_equal(small.train_images_u8, full.train_images_u8[:100])
    np.testing.assert_array_equal(small.test_images_u8, full.test_images_u8[:30])
    # 9 pixels per image (not a multiple of Philox's 4 outputs per block), 7 draws per chunk:
    # pieces starting anywhere give the bytes of one pass
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(13, 3, 3, 1), dtype=np.uint8)
    whole = binarize_static(x, "train")
    monkeypatch.setattr("jaxrae.data.binarize._STATIC_CHUNK_DRAWS", 7)
    np.testing.assert_array_equal(binarize_static(x, "train"), whole)
    for cut in (1, 3, 4, 10):
        pieces = np.concatenate([binarize_static(x[:cut], "train"), binarize_static(x[cut:], "train", start=cut)])
        np.testing.assert_array_equal(pieces, whole, err_msg=f"cut at {cut}")
    # binary images are fixed points
    np.testing.assert_array_equal(binarize_static(whole, "test"), whole)


# --------------------------------------------------------------------------------------------
# Dynamic: fixed test split, grey training split


def test_dynamic_keeps_train_grey_and_test_static(digits):
    static, dynamic = load_data("digits@binarize=static"), load_data("digits@binarize=dynamic")
    assert dynamic.name == "digits@binarize=dynamic" and dynamic.binarize == "dynamic" and digits.binarize is None
    np.testing.assert_array_equal(dynamic.test_images_u8, static.test_images_u8)
    np.testing.assert_array_equal(dynamic.train_images_u8, digits.train_images_u8)


def test_fingerprint_differs_between_grey_static_and_dynamic(digits):
    static, dynamic = load_data("digits@binarize=static"), load_data("digits@binarize=dynamic")
    assert len({digits.fingerprint, static.fingerprint, dynamic.fingerprint}) == 3
    # grey and static digests are their bytes'; dynamic adds its mode (the stored train bytes are grey)
    assert static.fingerprint == fingerprint(
        static.train_images_u8, static.train_labels, static.test_images_u8, static.test_labels
    )
    args = (dynamic.train_images_u8, dynamic.train_labels, dynamic.test_images_u8, dynamic.test_labels)
    assert dynamic.fingerprint == fingerprint(*args, binarize="dynamic") != fingerprint(*args)
    # already-binary data: static changes nothing, so the content and the fingerprint stay
    again = make_dataset(
        "b", static.train_images_u8, static.train_labels, static.test_images_u8, static.test_labels, binarize="static"
    )
    assert again.fingerprint == static.fingerprint


# --------------------------------------------------------------------------------------------
# Composition with the other options and every source


def test_composes_with_crop_and_resize():
    raw = load_data("digits", n_train=40, n_test=20)
    ds = load_data("digits@crop=6,image_size=3,binarize=static", n_train=40, n_test=20)
    assert ds.name == "digits@crop=6,image_size=3,binarize=static" and ds.image_shape == (3, 3, 1)
    # binarized last, after crop and resize
    for split in ("train", "test"):
        grey = area_resize(center_crop(getattr(raw, f"{split}_images_u8"), 6), 3)
        np.testing.assert_array_equal(getattr(ds, f"{split}_images_u8"), binarize_static(grey, split))
    # any key order, suffix or arguments: one canonical name, the same data
    for other in (
        load_data("digits@binarize=static,image_size=3,crop=6", n_train=40, n_test=20),
        load_data("digits@crop=6", n_train=40, n_test=20, image_size=3, binarize="static"),
        load_data(ds.name, n_train=40, n_test=20),
    ):
        assert other.name == ds.name and other.fingerprint == ds.fingerprint
    assert (
        load_data("digits@image_size=4,binarize=dynamic", n_train=5, n_test=5).name
        == "digits@image_size=4,binarize=dynamic"
    )


def test_composes_with_idx(tmp_path, digits):
    arrays = (
        digits.train_images_u8[..., 0],
        digits.train_labels.astype(np.uint8),
        digits.test_images_u8[..., 0],
        digits.test_labels.astype(np.uint8),
    )
    d = write_idx_dir(tmp_path / "digits_idx", arrays, gz=True)
    for mode in BINARIZE_MODES:
        via_idx = load_data(f"idx:{d}@binarize={mode}")
        embedded = load_data(f"digits@binarize={mode}")
        assert via_idx.name == f"idx:{d}@binarize={mode}" and via_idx.binarize == mode
        np.testing.assert_array_equal(via_idx.train_images_u8, embedded.train_images_u8)
        np.testing.assert_array_equal(via_idx.test_images_u8, embedded.test_images_u8)
        assert via_idx.fingerprint == embedded.fingerprint  # same content from another source


def test_composes_with_tfds_mock():
    tfds = pytest.importorskip("tensorflow_datasets", reason="tfds:<name> is the optional extra jaxrae[tfds]")
    with tfds.testing.mock_data(num_examples=4):
        grey = load_data("tfds:mnist")
        static = load_data("tfds:mnist@binarize=static")
        dynamic = load_data("mnist@binarize=dynamic", n_train=3)
        celeb_grey = load_data("tfds:celeb_a@crop=140,image_size=64", n_train=2, n_test=2)
        celeb = load_data("tfds:celeb_a@crop=140,image_size=64,binarize=static", n_train=2, n_test=2)
    np.testing.assert_array_equal(static.train_images_u8, binarize_static(grey.train_images_u8, "train"))
    np.testing.assert_array_equal(static.test_images_u8, binarize_static(grey.test_images_u8, "test"))
    np.testing.assert_array_equal(dynamic.train_images_u8, grey.train_images_u8[:3])
    np.testing.assert_array_equal(dynamic.test_images_u8, static.test_images_u8)
    assert celeb.name == "tfds:celeb_a@crop=140,image_size=64,binarize=static" and celeb.image_shape == (64, 64, 3)
    np.testing.assert_array_equal(celeb.train_images_u8, binarize_static(celeb_grey.train_images_u8, "train"))
    np.testing.assert_array_equal(celeb.train_attributes, celeb_grey.train_attributes)


@pytest.mark.parametrize(
    "spec, kw, match",
    [
        ("digits@binarize=foo", {}, "binarize='foo' is invalid: choose one of static, dynamic"),
        ("digits@crop=6,binarize=Static", {}, "binarize='Static' is invalid: choose one of static, dynamic"),
        ("digits", {"binarize": "none"}, "binarize='none' is invalid: choose one of static, dynamic"),
        ("digits", {"binarize": True}, "binarize=True is invalid: choose one of static, dynamic"),
        ("digits@binarize=", {}, r"cannot read 'binarize=' in its @ suffix.*binarize static or dynamic"),
        ("digits@binarize=static,binarize=dynamic", {}, "binarize is given twice"),
        ("digits@binarize=static", {"binarize": "static"}, "binarize is given twice.*keep one"),
    ],
)
def test_bad_binarize_is_config_error(spec, kw, match):
    with pytest.raises(ConfigError, match=match):
        load_data(spec, n_train=5, n_test=5, **kw)


def test_bad_arguments_of_the_functions():
    x = np.zeros((2, 3, 3, 1), np.uint8)
    with pytest.raises(ConfigError, match="binarize='yes' is invalid"):
        make_dataset("m", x, np.zeros(2, np.int32), x, np.zeros(2, np.int32), binarize="yes")
    with pytest.raises(ConfigError, match="binarize='foo' is invalid"):
        fingerprint(x, np.zeros(2, np.int32), x, np.zeros(2, np.int32), binarize="foo")
    with pytest.raises(ConfigError, match="split='valid' is invalid: choose one of train, test"):
        binarize_static(x, "valid")
    with pytest.raises(ConfigError, match="start=-1 is invalid"):
        binarize_static(x, "train", start=-1)
    with pytest.raises(DataError, match="expected uint8 images of shape"):
        binarize_static(x.astype(np.float32), "train")


# --------------------------------------------------------------------------------------------
# binarize_batch: a fresh draw per key


def _all_levels(copies: int) -> np.ndarray:
    """Every grey level 0..255, ``copies`` pixels each, as a batch of 16x16 images."""
    return np.tile(np.arange(256, dtype=np.uint8), copies).reshape(copies, 16, 16, 1)


class BinarizeBatchTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_bernoulli_of_the_grey_level_deterministic_per_key(self):
        fn = self.variant(binarize_batch)
        x = _all_levels(2000)  # 2,000 pixels per level
        key = jax.random.key(0)
        a, b = fn(key, x), fn(key, x)
        chex.assert_trees_all_equal(a, b)
        chex.assert_shape(a, x.shape)
        chex.assert_type(a, jnp.uint8)
        a = np.asarray(a)
        assert set(np.unique(a)) == {0, 255}
        assert_binomial(a == 255, x, "binarize_batch")
        other = np.asarray(fn(jax.random.key(1), x))
        assert not np.array_equal(a, other)
        assert_binomial(other == 255, x, "binarize_batch, key 1")

    def test_vmap_over_runs_equals_each_run_alone(self):
        x = jnp.asarray(load_data("digits", n_train=32, n_test=1).train_images_u8)
        keys = jax.random.split(jax.random.key(7), 4)
        batched = jax.jit(jax.vmap(binarize_batch, in_axes=(0, None)))(keys, x)
        alone = [binarize_batch(k, x) for k in keys]
        chex.assert_trees_all_equal(list(batched), alone)
        assert len({np.asarray(b).tobytes() for b in alone}) == 4  # each run its own draw
        # per-run batches (vmapped over images too), as a trainer gathers them
        xs = jnp.stack([x, x[::-1], x, x[::-1]])
        chex.assert_trees_all_equal(
            list(jax.vmap(binarize_batch)(keys, xs)), [binarize_batch(k, xi) for k, xi in zip(keys, xs)]
        )

    def test_per_step_keys_give_different_draws(self):
        x = jnp.asarray(load_data("digits", n_train=32, n_test=1).train_images_u8)
        run_key = jax.random.key(3)
        steps = [
            binarize_batch(jax.random.fold_in(jax.random.fold_in(run_key, t), DYNAMIC_BINARIZE_STREAM), x)
            for t in range(3)
        ]
        assert len({np.asarray(s).tobytes() for s in steps}) == 3

    def test_rejects_non_uint8_or_wrong_rank(self):
        with pytest.raises(AssertionError):
            binarize_batch(jax.random.key(0), jnp.zeros((2, 3, 3, 1), jnp.float32))
        with pytest.raises(AssertionError):
            binarize_batch(jax.random.key(0), jnp.zeros((3, 3), jnp.uint8))


# --------------------------------------------------------------------------------------------
# Downstream: the FD feature network on binarized digits


def test_feature_network_learns_binarized_digits(tmp_path):
    ds = load_data("digits@binarize=static")
    net = feature_network(ds, cache_dir=tmp_path, steps=150)
    assert net.fingerprint == ds.fingerprint  # cached apart from the grey digits' network
    print(
        f"feature network on digits@binarize=static, 150 steps: test accuracy {net.test_accuracy:.3f}, "
        f"majority {net.majority_accuracy:.3f}"
    )
    assert net.test_accuracy > 0.8 > net.majority_accuracy
