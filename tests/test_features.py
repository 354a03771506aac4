"""Tests of jaxrae.features: the FD feature network (training, accuracy, cache, targets).

The tests share one tiny synthetic data set per target (class labels, binary attributes) and one
step count, so the training scan compiles once per target for the module.
"""

import hashlib

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrae import features
from jaxrae.data import Dataset, make_dataset
from jaxrae.errors import ConfigError, DataError

# ------------------------------------------------------------------------------------------
# Feature network

TRAIN_STEPS = 150


def synthetic_dataset(n_train=320, n_test=160, n_classes=4, seed=0):
    """8x8 gray images: class c lights up quadrant c, plus pixel noise."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, n_classes, size=n)
        images = rng.uniform(0, 80, size=(n, 8, 8, 1))
        for i, c in enumerate(labels):
            row, col = divmod(int(c), 2)
            images[i, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4] += 150
        return images.clip(0, 255).astype(np.uint8), labels.astype(np.int32)

    train_x, train_y = split(n_train)
    test_x, test_y = split(n_test)
    digest = hashlib.sha256()
    for array in (train_x, train_y, test_x, test_y):
        digest.update(array.tobytes())
    return Dataset("synthetic", train_x, train_y, test_x, test_y, digest.hexdigest())


@pytest.fixture(scope="module")
def dataset():
    return synthetic_dataset()


@pytest.fixture(scope="module")
def trained_net(dataset):
    return features.train_feature_network(dataset, steps=TRAIN_STEPS)


def test_feature_network_learns_and_gives_features(dataset, trained_net):
    assert trained_net.test_accuracy >= 0.95
    assert trained_net.fingerprint == dataset.fingerprint
    feats = trained_net.features(dataset.test_images)
    assert feats.shape == (dataset.n_test, trained_net.model.n_features)
    assert feats.dtype == np.float32 and np.all(np.isfinite(feats))
    # Batching pads the last batch: features must not depend on the batch a row lands in.
    np.testing.assert_allclose(trained_net.features(dataset.test_images[:7]), feats[:7], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        trained_net.features(dataset.test_images_u8[:7]), trained_net.features(dataset.test_images[:7])
    )
    # Train and test images of the same distribution are close; a shifted class mix is far.
    same = trained_net.frechet_distance(dataset.train_images, dataset.test_images)
    one_class = dataset.test_images[dataset.test_labels == 0]
    assert same < trained_net.frechet_distance(dataset.train_images, one_class)
    assert trained_net.metric_label.startswith("FD in classifier features (test acc")
    with pytest.raises(
        DataError, match=r"images.shape=\(3, 28, 28, 1\) is invalid: the feature network expects images of shape"
    ):
        trained_net.features(np.zeros((3, 28, 28, 1), np.float32))
    nan_images = dataset.test_images[:3].copy()
    nan_images[1, 2, 3, 0] = np.nan
    with pytest.raises(DataError, match="images must be finite"):
        trained_net.frechet_distance(dataset.test_images, nan_images)
    with pytest.raises(ConfigError, match="steps=0 is invalid"):
        features.train_feature_network(dataset, steps=0)


def test_features_compile_once_whatever_the_number_of_images(dataset, trained_net, monkeypatch):
    # The last batch is padded to the evaluation batch size, so one compiled shape serves every call.
    once = jax.jit(chex.assert_max_traces(features._apply_classifier.__wrapped__, n=1), static_argnames=("model",))
    monkeypatch.setattr(features, "_apply_classifier", once)
    for images in (dataset.test_images[:1], dataset.test_images[:7], dataset.test_images_u8, dataset.train_images):
        assert trained_net.features(images).shape == (images.shape[0], trained_net.model.n_features)


def test_feature_network_training_is_deterministic(dataset, trained_net):
    again = features.train_feature_network(dataset, steps=TRAIN_STEPS)
    chex.assert_trees_all_equal(trained_net.params, again.params)
    assert again.test_accuracy == trained_net.test_accuracy


def test_feature_network_cache_hit_and_corrupt_file(dataset, trained_net, tmp_path, monkeypatch):
    calls = []

    def counting_trainer(ds, *, steps=None):
        calls.append(steps)
        return trained_net

    monkeypatch.setattr(features, "train_feature_network", counting_trainer)
    first = features.feature_network(dataset, cache_dir=tmp_path, steps=TRAIN_STEPS)
    assert calls == [TRAIN_STEPS]
    (cache_file,) = (tmp_path / "feature_nets").iterdir()
    assert dataset.fingerprint in cache_file.name and features.FEATURE_NET_VERSION in cache_file.name

    def refuse_to_train(ds, *, steps=None):
        raise AssertionError("cache hit expected, but the network was retrained")

    monkeypatch.setattr(features, "train_feature_network", refuse_to_train)
    cached = features.feature_network(dataset, cache_dir=tmp_path, steps=TRAIN_STEPS)
    chex.assert_trees_all_equal(first.params, cached.params)
    assert cached.test_accuracy == first.test_accuracy
    np.testing.assert_array_equal(cached.features(dataset.test_images[:5]), first.features(dataset.test_images[:5]))

    # A truncated file (e.g. a crash of an old non-atomic writer) is ignored and replaced.
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    monkeypatch.setattr(features, "train_feature_network", counting_trainer)
    with pytest.warns(RuntimeWarning, match="retraining"):
        retrained = features.feature_network(dataset, cache_dir=tmp_path, steps=TRAIN_STEPS)
    assert calls == [TRAIN_STEPS, TRAIN_STEPS]
    assert retrained.test_accuracy == first.test_accuracy
    assert [p.name for p in (tmp_path / "feature_nets").iterdir()] == [cache_file.name]  # no temp left
    monkeypatch.setattr(features, "train_feature_network", refuse_to_train)
    features.feature_network(dataset, cache_dir=tmp_path, steps=TRAIN_STEPS)  # the rewrite is valid


def test_majority_warning_is_the_proportional_reduction_in_error():
    m = 0.25
    boundary = m + features.NEAR_MAJORITY_FRACTION * (1 - m)  # removes exactly that fraction of the errors
    assert "majority rule 25.0%" in features.majority_warning(boundary, m)
    assert features.majority_warning(m, m) is not None and features.majority_warning(m - 0.05, m) is not None
    assert features.majority_warning(boundary + 1e-9, m) is None
    assert features.majority_warning(float("nan"), m) is None and features.majority_warning(0.5, float("nan")) is None
    # CelebA-like imbalance: 85% mean attribute accuracy is near a majority rule of 84%, 90% is not
    assert features.majority_warning(0.85, 0.84, "test mean attribute accuracy").startswith(
        "the FD feature network is at or near the majority rule (test mean attribute accuracy 85.0%"
    )
    assert features.majority_warning(0.90, 0.84) is None


def test_constant_images_give_a_network_at_the_majority_rule(trained_net):
    # All-zero images: no classifier can beat the majority rule, and the network says so.
    rng = np.random.default_rng(3)
    labels = rng.choice(4, size=480, p=[0.4, 0.2, 0.2, 0.2]).astype(np.int32)
    zeros = np.zeros((480, 8, 8, 1), np.uint8)
    constant = make_dataset("zeros", zeros[:320], labels[:320], zeros[320:], labels[320:])
    net = features.train_feature_network(constant, steps=30)
    assert net.test_accuracy <= net.majority_accuracy + 1e-12
    assert net.warning is not None and "at or near the majority rule" in net.warning
    assert trained_net.warning is None  # a network that learned its classes (>= 95%) is not flagged


def test_feature_network_other_image_sizes():
    # 28x28 gray and 32x32 RGB go through the same architecture (odd maps are padded).
    # Shapes only (eval_shape): no compilation needed.
    model = features.FeatureClassifier(n_classes=10)
    for shape in [(28, 28, 1), (32, 32, 3), (7, 9, 1)]:
        images = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
        variables = jax.eval_shape(model.init, jax.random.key(0), images)
        logits, feats = jax.eval_shape(model.apply, variables, images)
        assert logits.shape == (3, 10) and feats.shape == (3, model.n_features)


# ------------------------------------------------------------------------------------------
# Feature network for data without class labels: binary attributes (CelebA's case)


def attribute_dataset(n_train=320, n_test=160, seed=1):
    """8x8 gray images without classes (label 0) whose attribute q says "quadrant q is lit"."""
    rng = np.random.default_rng(seed)

    def split(n):
        attributes = rng.integers(0, 2, size=(n, 4)).astype(np.uint8)
        images = rng.uniform(0, 80, size=(n, 8, 8, 1))
        for q in range(4):
            row, col = divmod(q, 2)
            images[:, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4] += 150 * attributes[:, q, None, None, None]
        return images.clip(0, 255).astype(np.uint8), np.zeros(n, np.int32), attributes

    train_x, train_y, train_a = split(n_train)
    test_x, test_y, test_a = split(n_test)
    return make_dataset(
        "attrs",
        train_x,
        train_y,
        test_x,
        test_y,
        train_attributes=train_a,
        test_attributes=test_a,
        attribute_names=["top_left", "top_right", "bottom_left", "bottom_right"],
    )


@pytest.fixture(scope="module")
def attr_dataset():
    return attribute_dataset()


@pytest.fixture(scope="module")
def attr_net(attr_dataset):
    return features.train_feature_network(attr_dataset, steps=TRAIN_STEPS)


def test_attribute_network_learns_and_says_what_it_measures(attr_dataset, attr_net):
    assert features.feature_target(attr_dataset) == "attributes"
    assert attr_net.target == "attributes" and attr_net.version == features.FEATURE_NET_VERSIONS["attributes"]
    assert attr_net.version != features.FEATURE_NET_VERSION
    assert attr_net.model.n_classes == 4  # one logit per attribute
    # mean attribute accuracy, recomputed from the predictions, and well above the majority rule
    predicted = attr_net.predict(attr_dataset.test_images_u8)
    assert predicted.shape == (attr_dataset.n_test, 4) and set(np.unique(predicted)) <= {0, 1}
    assert attr_net.test_accuracy == pytest.approx(np.mean(predicted == attr_dataset.test_attributes))
    majority = (attr_dataset.train_attributes.mean(0) >= 0.5).astype(np.uint8)
    assert attr_net.majority_accuracy == pytest.approx(np.mean(attr_dataset.test_attributes == majority))
    assert attr_net.test_accuracy >= 0.95 and attr_net.majority_accuracy < 0.7
    assert attr_net.accuracy_name == "test mean attribute accuracy"
    assert attr_net.metric_label.startswith("FD in classifier features (test mean attribute accuracy ")
    assert "majority rule" in attr_net.metric_label
    # the features separate image sets as for a label network
    lit = attr_dataset.test_images[attr_dataset.test_attributes[:, 0] == 1]
    same = attr_net.frechet_distance(attr_dataset.train_images, attr_dataset.test_images)
    assert same < attr_net.frechet_distance(attr_dataset.train_images, lit)


def test_label_network_version_and_labels_winning_over_attributes(dataset, trained_net):
    assert trained_net.target == "labels" and trained_net.version == features.FEATURE_NET_VERSION == "fdnet-v1"
    assert trained_net.accuracy_name == "test accuracy"
    assert 0.2 < trained_net.majority_accuracy < 0.4  # 4 roughly balanced classes
    # labels win over attributes when a data set has both
    attrs = np.zeros((dataset.n_train, 2), np.uint8)
    both = make_dataset(
        "both",
        dataset.train_images_u8,
        dataset.train_labels,
        dataset.test_images_u8,
        dataset.test_labels,
        train_attributes=attrs,
        test_attributes=attrs[: dataset.n_test],
    )
    assert features.feature_target(both) == "labels"


def test_attribute_network_cache_round_trip(attr_dataset, attr_net, tmp_path, monkeypatch):
    monkeypatch.setattr(features, "train_feature_network", lambda ds, *, steps=None: attr_net)
    first = features.feature_network(attr_dataset, cache_dir=tmp_path, steps=TRAIN_STEPS)
    (cache_file,) = (tmp_path / "feature_nets").iterdir()
    assert cache_file.name.startswith(features.FEATURE_NET_VERSIONS["attributes"] + "-" + attr_dataset.fingerprint)

    def refuse_to_train(ds, *, steps=None):
        raise AssertionError("cache hit expected, but the network was retrained")

    monkeypatch.setattr(features, "train_feature_network", refuse_to_train)
    cached = features.feature_network(attr_dataset, cache_dir=tmp_path, steps=TRAIN_STEPS)
    assert (cached.target, cached.version, cached.test_accuracy) == (first.target, first.version, first.test_accuracy)
    assert cached.majority_accuracy == first.majority_accuracy
    few = attr_dataset.test_images_u8[:5]
    np.testing.assert_array_equal(cached.features(few), first.features(few))
    # a label record under the attribute network's name is rejected (with a warning) and retrained
    record = flax.serialization.msgpack_restore(cache_file.read_bytes())
    del record["target"]
    cache_file.write_bytes(flax.serialization.msgpack_serialize(record))
    monkeypatch.setattr(features, "train_feature_network", lambda ds, *, steps=None: attr_net)
    with pytest.warns(RuntimeWarning, match=r"record\['target'\]='labels' is invalid: expected 'attributes'"):
        features.feature_network(attr_dataset, cache_dir=tmp_path, steps=TRAIN_STEPS)


def test_no_labels_and_no_attributes_is_a_data_error(tmp_path):
    x = np.zeros((6, 8, 8, 1), np.uint8)
    unlabelled = make_dataset("tfds:unlabelled", x, np.zeros(6, np.int32), x, np.zeros(6, np.int32))
    for call in (
        features.feature_target,
        features.train_feature_network,
        lambda ds: features.feature_network(ds, cache_dir=tmp_path),
    ):
        with pytest.raises(
            DataError,
            match=r"dataset='tfds:unlabelled' is invalid: cannot train the feature network"
            r".*class labels.*attributes.*make_dataset",
        ):
            call(unlabelled)
    assert not (tmp_path / "feature_nets").exists()
