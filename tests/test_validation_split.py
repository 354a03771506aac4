"""The validation split carved from the training images (jaxrae.data.validation, load_data(validation=...)).

Fast: numpy only, except one 5-step training that checks validation=0 leaves training bitwise as it was.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxrae.config import TrainConfig
from jaxrae.data import (
    VALIDATION_SEED,
    binarize_static,
    carve_validation,
    fingerprint,
    load_data,
    validation_indices,
    validation_view,
)
from jaxrae.errors import ConfigError, DataError
from jaxrae.train import make_train, train


@pytest.fixture(scope="module")
def full():
    return load_data("digits")


@pytest.fixture(scope="module")
def carved():
    return load_data("digits", validation=0.1)


def test_split_is_disjoint_complete_and_keeps_order(full, carved):
    keep, held = validation_indices(full.n_train, 0.1)
    assert len(held) == int(0.1 * full.n_train) == carved.n_val == 143
    assert carved.n_train + carved.n_val == full.n_train
    assert not set(keep) & set(held) and sorted([*keep, *held]) == list(range(full.n_train))
    assert np.all(np.diff(keep) > 0) and np.all(np.diff(held) > 0)
    np.testing.assert_array_equal(carved.train_images_u8, full.train_images_u8[keep])
    np.testing.assert_array_equal(carved.validation_images_u8, full.train_images_u8[held])
    np.testing.assert_array_equal(carved.train_labels, full.train_labels[keep])
    np.testing.assert_array_equal(carved.validation_labels, full.train_labels[held])
    np.testing.assert_array_equal(carved.test_images_u8, full.test_images_u8)  # test untouched
    assert carved.validation_images.shape == (143, 8, 8, 1) and carved.validation_images.max() <= 1.0


def test_split_is_the_documented_philox_stream():
    """The floor(f n) smallest raw outputs of Philox(VALIDATION_SEED, 0); each image's key does not depend on n."""
    n = 50
    keys = np.random.Philox(key=np.array([VALIDATION_SEED, 0], np.uint64)).random_raw(n)
    _, held = validation_indices(n, 0.2)
    np.testing.assert_array_equal(held, np.sort(np.argsort(keys)[:10]))
    _, held_more = validation_indices(2 * n, 0.5)  # a larger split: the same keys for the first n images
    keys_more = np.random.Philox(key=np.array([VALIDATION_SEED, 0], np.uint64)).random_raw(2 * n)
    np.testing.assert_array_equal(keys_more[:n], keys)
    np.testing.assert_array_equal(held_more, np.sort(np.argsort(keys_more)[:n]))


def test_split_is_fixed_across_calls_and_processes(carved):
    again = load_data("digits", validation=0.1)
    assert again.fingerprint == carved.fingerprint
    code = (
        "from jaxrae.data import validation_indices; import hashlib;"
        "print(hashlib.sha256(validation_indices(1438, 0.1)[1].astype('<i8').tobytes()).hexdigest())"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    held = validation_indices(1438, 0.1)[1].astype("<i8")
    assert other == hashlib.sha256(held.tobytes()).hexdigest()


def test_validation_zero_changes_nothing(full):
    for zero in (0, 0.0, None, "digits@validation=0"):
        data = load_data(zero) if isinstance(zero, str) else load_data("digits", validation=zero)
        assert data.fingerprint == full.fingerprint and data.name == "digits"
        assert data.validation is None and data.n_val == 0 and data.validation_images_u8 is None
        np.testing.assert_array_equal(data.train_images_u8, full.train_images_u8)
    assert carve_validation(full, 0) is full


def test_validation_zero_trains_bitwise_the_same(full):
    config = TrainConfig(method="rae", steps=5, chunk_size=5, batch_size=16, latent_dim=4)
    a = train(config, full, (0,), progress=False)
    b = train(config, load_data("digits", validation=0.0), (0,), progress=False)
    for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(a.losses, b.losses)


def test_training_sees_only_the_rest(full, carved):
    trainer = make_train(TrainConfig(method="ae", steps=1, batch_size=16, latent_dim=4), carved)
    keep, held = validation_indices(full.n_train, 0.1)
    np.testing.assert_array_equal(trainer.images_u8, full.train_images_u8[keep])
    assert trainer.images_u8.shape[0] == full.n_train - len(held)


def test_fingerprint_covers_the_validation_split(full, carved):
    assert carved.fingerprint != full.fingerprint
    assert load_data("digits", validation=0.2).fingerprint != carved.fingerprint
    # the same arrays without the validation split digest as a data set without one
    bare = fingerprint(carved.train_images_u8, carved.train_labels, carved.test_images_u8, carved.test_labels)
    assert bare != carved.fingerprint


def test_spec_suffix_is_canonical_and_reloads(carved):
    assert carved.name == "digits@validation=0.1"
    assert load_data("digits@validation=0.1").fingerprint == carved.fingerprint
    both = load_data("digits@binarize=static,validation=0.1")
    assert both.name == "digits@binarize=static,validation=0.1"
    assert load_data(both.name).fingerprint == both.fingerprint
    with pytest.raises(ConfigError, match="validation is given twice"):
        load_data("digits@validation=0.1", validation=0.2)


def test_binarization_composes(full):
    static = load_data("digits@binarize=static")
    static_val = load_data("digits@binarize=static,validation=0.1")
    keep, held = validation_indices(full.n_train, 0.1)
    # static: the split of the binarized images (each keeps the draw of its place in the whole split)
    np.testing.assert_array_equal(static_val.validation_images_u8, static.train_images_u8[held])
    np.testing.assert_array_equal(static_val.train_images_u8, static.train_images_u8[keep])
    # dynamic: training stays grey, validation gets the static draw of its place, like test images
    dynamic = load_data("digits@binarize=dynamic,validation=0.1")
    np.testing.assert_array_equal(dynamic.train_images_u8, full.train_images_u8[keep])
    np.testing.assert_array_equal(dynamic.validation_images_u8, binarize_static(full.train_images_u8, "train")[held])
    assert set(np.unique(dynamic.validation_images_u8)) <= {0, 255}


def test_validation_view_puts_validation_where_test_was(carved):
    view = validation_view(carved)
    assert view.test_images_u8 is carved.validation_images_u8 and view.n_test == carved.n_val
    assert view.train_images_u8 is carved.train_images_u8 and view.n_val == 0
    assert view.name == "digits@validation=0.1#validation" and view.fingerprint != carved.fingerprint
    with pytest.raises(ConfigError, match="no validation split"):
        validation_view(load_data("digits"))


@pytest.mark.parametrize(
    ("value", "error"),
    [(-0.1, ConfigError), (1.0, ConfigError), (True, ConfigError), ("a", ConfigError), (0.0001, DataError)],
)
def test_bad_fractions_are_named_errors(value, error):
    with pytest.raises(error, match="validation"):
        load_data("digits", validation=value)


def test_carving_twice_is_refused(carved):
    with pytest.raises(ConfigError, match="already holds a validation split"):
        carve_validation(carved, 0.1)
