"""Tests of jaxrae.metrics: closed forms and constructed sets with known answers.

The feature-network tests share one tiny synthetic data set per target (class labels, binary
attributes) and one step count, so the training scan compiles once per target for the module.
"""

import hashlib

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxrae import metrics
from jaxrae.data import Dataset, make_dataset
from jaxrae.errors import DataError

# ------------------------------------------------------------------------------------------
# Frechet distance


def textbook_frechet_distance(feats_a, feats_b):
    """Heusel et al.'s formula as usually written: tr(S_a + S_b - 2 sqrtm(S_a S_b))."""
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    cov_a = np.atleast_2d(np.cov(feats_a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(feats_b, rowvar=False))
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * covmean))


@pytest.mark.parametrize("dim", [1, 5, 16])
def test_frechet_distance_matches_textbook_formula(dim):
    rng = np.random.default_rng(dim)
    feats_a = rng.normal(size=(200, dim)) @ rng.normal(size=(dim, dim))
    feats_b = 0.5 + rng.normal(size=(300, dim)) @ rng.normal(size=(dim, dim))
    expected = textbook_frechet_distance(feats_a, feats_b)
    assert metrics.frechet_distance(feats_a, feats_b) == pytest.approx(expected, rel=1e-7, abs=1e-9)


def test_frechet_distance_is_zero_for_identical_sets():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(100, 32)).astype(np.float32)
    assert metrics.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)
    # Rank-deficient covariance (n < d, and ReLU-like zero columns): still 0, no complex values.
    sparse = np.maximum(rng.normal(size=(20, 64)), 0.0)
    sparse[:, :10] = 0.0
    assert metrics.frechet_distance(sparse, sparse) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_is_symmetric():
    rng = np.random.default_rng(1)
    feats_a = rng.normal(size=(150, 8))
    feats_b = rng.gamma(2.0, size=(120, 8))
    d_ab = metrics.frechet_distance(feats_a, feats_b)
    d_ba = metrics.frechet_distance(feats_b, feats_a)
    assert d_ab > 0
    assert d_ab == pytest.approx(d_ba, rel=1e-9)


def test_frechet_distance_of_diagonal_gaussians_has_closed_form():
    # W2^2(N(m1, diag a), N(m2, diag b)) = ||m1 - m2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.0])
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    got = metrics.frechet_distance_from_stats(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    assert got == pytest.approx(expected, rel=1e-12)


def test_gaussian_stats_and_bad_inputs():
    feats = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    mu, cov = metrics.gaussian_stats(feats)
    np.testing.assert_allclose(mu, feats.mean(0))
    np.testing.assert_allclose(cov, np.cov(feats, rowvar=False))
    assert np.isnan(metrics.frechet_distance(feats, np.full_like(feats, np.nan)))
    with pytest.raises(ValueError, match="feature sizes differ"):
        metrics.frechet_distance(feats, feats[:, :1])
    with pytest.raises(ValueError, match="at least 2"):
        metrics.gaussian_stats(feats[:1])


# ------------------------------------------------------------------------------------------
# Precision and recall


def clusters(rng, centers, n_per_cluster, scale=0.1):
    return np.concatenate([c + scale * rng.normal(size=(n_per_cluster, len(c))) for c in centers])


CENTERS = 10.0 * np.eye(4)


def test_precision_recall_identical_sets_are_perfect():
    real = clusters(np.random.default_rng(0), CENTERS, 50)
    assert metrics.precision_recall(real, real, k=3) == (1.0, 1.0)


def test_precision_recall_disjoint_sets_are_zero():
    rng = np.random.default_rng(1)
    real = clusters(rng, CENTERS, 50)
    fake = clusters(rng, CENTERS + 100.0, 50)
    assert metrics.precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_precision_recall_half_the_modes():
    rng = np.random.default_rng(2)
    real = clusters(rng, CENTERS, 100)
    # A subset of the real samples: exactly precision 1, recall 1/2.
    assert metrics.precision_recall(real, real[:200], k=3) == (1.0, 0.5)
    # Fresh samples from the first two modes: nearly so (tails may fall outside the k-NN balls).
    precision, recall = metrics.precision_recall(real, clusters(rng, CENTERS[:2], 200), k=3)
    assert precision > 0.9
    assert recall == pytest.approx(0.5, abs=0.05)


def test_precision_recall_batching_does_not_change_the_answer():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(97, 6)), 0.3 + rng.normal(size=(83, 6))
    whole = metrics.precision_recall(real, fake, k=3, batch_size=1000)
    assert metrics.precision_recall(real, fake, k=3, batch_size=7) == whole
    assert 0.0 < whole[0] < 1.0 and 0.0 < whole[1] < 1.0


# ------------------------------------------------------------------------------------------
# Code usage and reconstruction


def test_code_usage_uniform_collapsed_and_distinct():
    n_classes = 4
    uniform = np.stack([np.arange(8) % 4, (np.arange(8) // 2) % 4], axis=1)
    usage = metrics.code_usage(uniform, n_classes)
    np.testing.assert_allclose(usage.perplexity_per_variable, [4.0, 4.0])
    assert usage.mean_perplexity == pytest.approx(4.0)
    assert usage.n_distinct_codes == 8

    collapsed = np.zeros((10, 3), dtype=np.int32)
    usage = metrics.code_usage(collapsed, n_classes)
    np.testing.assert_allclose(usage.perplexity_per_variable, [1.0, 1.0, 1.0])
    assert usage.n_distinct_codes == 1

    # One variable uniform over 2 of 4 classes, the other collapsed: perplexities 2 and 1.
    half = np.stack([np.arange(6) % 2, np.zeros(6, dtype=int)], axis=1)
    usage = metrics.code_usage(half, n_classes)
    np.testing.assert_allclose(usage.perplexity_per_variable, [2.0, 1.0])
    assert usage.mean_perplexity == pytest.approx(1.5)
    assert usage.n_distinct_codes == 2

    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        metrics.code_usage(np.array([[4]]), n_classes)


def test_reconstruction_error_is_mean_of_per_image_sums():
    x = np.zeros((2, 2, 2, 1))
    x_hat = np.zeros_like(x)
    x_hat[0] = 1.0  # image 0: 4 pixels off by 1 -> 4; image 1: exact -> 0
    assert metrics.reconstruction_error(x, x_hat) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.reconstruction_error(x, x_hat[:1])


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
            images[i, 4 * row:4 * row + 4, 4 * col:4 * col + 4] += 150
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
    return metrics.train_feature_network(dataset, steps=TRAIN_STEPS)


def test_feature_network_learns_and_gives_features(dataset, trained_net):
    assert trained_net.test_accuracy >= 0.95
    assert trained_net.fingerprint == dataset.fingerprint
    feats = trained_net.features(dataset.test_images)
    assert feats.shape == (dataset.n_test, trained_net.model.n_features)
    assert feats.dtype == np.float32 and np.all(np.isfinite(feats))
    # Batching pads the last batch: features must not depend on the batch a row lands in.
    np.testing.assert_allclose(trained_net.features(dataset.test_images[:7]), feats[:7], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(trained_net.features(dataset.test_images_u8[:7]), trained_net.features(dataset.test_images[:7]))
    # Train and test images of the same distribution are close; a shifted class mix is far.
    same = trained_net.frechet_distance(dataset.train_images, dataset.test_images)
    one_class = dataset.test_images[dataset.test_labels == 0]
    assert same < trained_net.frechet_distance(dataset.train_images, one_class)
    assert trained_net.metric_label.startswith("FD in classifier features (test acc")
    with pytest.raises(DataError, match="expects images of shape"):
        trained_net.features(np.zeros((3, 28, 28, 1), np.float32))


def test_feature_network_training_is_deterministic(dataset, trained_net):
    again = metrics.train_feature_network(dataset, steps=TRAIN_STEPS)
    for leaf_a, leaf_b in zip(jax.tree.leaves(trained_net.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(leaf_a, leaf_b)
    assert again.test_accuracy == trained_net.test_accuracy


def test_feature_network_cache_hit_and_corrupt_file(dataset, trained_net, tmp_path, monkeypatch):
    calls = []

    def counting_trainer(ds, *, steps=None):
        calls.append(steps)
        return trained_net

    monkeypatch.setattr(metrics, "train_feature_network", counting_trainer)
    first = metrics.feature_network(dataset, cache_dir=tmp_path, steps=TRAIN_STEPS)
    assert calls == [TRAIN_STEPS]
    (cache_file,) = (tmp_path / "feature_nets").iterdir()
    assert dataset.fingerprint in cache_file.name and metrics.FEATURE_NET_VERSION in cache_file.name

    def refuse_to_train(ds, *, steps=None):
        raise AssertionError("cache hit expected, but the network was retrained")

    monkeypatch.setattr(metrics, "train_feature_network", refuse_to_train)
    cached = metrics.feature_network(dataset, cache_dir=tmp_path, steps=TRAIN_STEPS)
    for leaf_a, leaf_b in zip(jax.tree.leaves(first.params), jax.tree.leaves(cached.params)):
        np.testing.assert_array_equal(leaf_a, leaf_b)
    assert cached.test_accuracy == first.test_accuracy
    np.testing.assert_array_equal(cached.features(dataset.test_images[:5]), first.features(dataset.test_images[:5]))

    # A truncated file (e.g. a crash of an old non-atomic writer) is ignored and replaced.
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    monkeypatch.setattr(metrics, "train_feature_network", counting_trainer)
    with pytest.warns(RuntimeWarning, match="retraining"):
        retrained = metrics.feature_network(dataset, cache_dir=tmp_path, steps=TRAIN_STEPS)
    assert calls == [TRAIN_STEPS, TRAIN_STEPS]
    assert retrained.test_accuracy == first.test_accuracy
    assert [p.name for p in (tmp_path / "feature_nets").iterdir()] == [cache_file.name]  # no temp left
    monkeypatch.setattr(metrics, "train_feature_network", refuse_to_train)
    metrics.feature_network(dataset, cache_dir=tmp_path, steps=TRAIN_STEPS)  # the rewrite is valid


def test_feature_network_other_image_sizes():
    # 28x28 gray and 32x32 RGB go through the same architecture (odd maps are padded).
    # Shapes only (eval_shape): no compilation needed.
    model = metrics.FeatureClassifier(n_classes=10)
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
            images[:, 4 * row:4 * row + 4, 4 * col:4 * col + 4] += 150 * attributes[:, q, None, None, None]
        return images.clip(0, 255).astype(np.uint8), np.zeros(n, np.int32), attributes

    train_x, train_y, train_a = split(n_train)
    test_x, test_y, test_a = split(n_test)
    return make_dataset("attrs", train_x, train_y, test_x, test_y, train_attributes=train_a, test_attributes=test_a,
                        attribute_names=["top_left", "top_right", "bottom_left", "bottom_right"])


@pytest.fixture(scope="module")
def attr_dataset():
    return attribute_dataset()


@pytest.fixture(scope="module")
def attr_net(attr_dataset):
    return metrics.train_feature_network(attr_dataset, steps=TRAIN_STEPS)


def test_attribute_network_learns_and_says_what_it_measures(attr_dataset, attr_net):
    assert metrics.feature_target(attr_dataset) == "attributes"
    assert attr_net.target == "attributes" and attr_net.version == metrics.FEATURE_NET_VERSIONS["attributes"]
    assert attr_net.version != metrics.FEATURE_NET_VERSION
    assert attr_net.model.n_classes == 4  # one logit per attribute
    # mean attribute accuracy, recomputed from the predictions, and well above the majority rule
    predicted = attr_net.predict(attr_dataset.test_images_u8)
    assert predicted.shape == (attr_dataset.n_test, 4) and set(np.unique(predicted)) <= {0, 1}
    assert attr_net.test_accuracy == pytest.approx(np.mean(predicted == attr_dataset.test_attributes))
    majority = (attr_dataset.train_attributes.mean(0) >= 0.5).astype(np.uint8)
    assert attr_net.majority_accuracy == pytest.approx(np.mean(attr_dataset.test_attributes == majority))
    assert attr_net.test_accuracy >= 0.95 > 0.7 > attr_net.majority_accuracy
    assert attr_net.accuracy_name == "test mean attribute accuracy"
    assert attr_net.metric_label.startswith("FD in classifier features (test mean attribute accuracy ")
    assert "majority rule" in attr_net.metric_label
    # the features separate image sets as for a label network
    lit = attr_dataset.test_images[attr_dataset.test_attributes[:, 0] == 1]
    same = attr_net.frechet_distance(attr_dataset.train_images, attr_dataset.test_images)
    assert same < attr_net.frechet_distance(attr_dataset.train_images, lit)


def test_label_network_is_unchanged_by_attributes(dataset, trained_net):
    assert trained_net.target == "labels" and trained_net.version == metrics.FEATURE_NET_VERSION == "fdnet-v1"
    assert trained_net.accuracy_name == "test accuracy"
    assert 0.2 < trained_net.majority_accuracy < 0.4  # 4 roughly balanced classes
    # labels win over attributes when a data set has both
    attrs = np.zeros((dataset.n_train, 2), np.uint8)
    both = make_dataset("both", dataset.train_images_u8, dataset.train_labels, dataset.test_images_u8,
                        dataset.test_labels, train_attributes=attrs, test_attributes=attrs[:dataset.n_test])
    assert metrics.feature_target(both) == "labels"


def test_attribute_network_cache_round_trip(attr_dataset, attr_net, tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "train_feature_network", lambda ds, *, steps=None: attr_net)
    first = metrics.feature_network(attr_dataset, cache_dir=tmp_path, steps=TRAIN_STEPS)
    (cache_file,) = (tmp_path / "feature_nets").iterdir()
    assert cache_file.name.startswith(metrics.FEATURE_NET_VERSIONS["attributes"] + "-" + attr_dataset.fingerprint)

    def refuse_to_train(ds, *, steps=None):
        raise AssertionError("cache hit expected, but the network was retrained")

    monkeypatch.setattr(metrics, "train_feature_network", refuse_to_train)
    cached = metrics.feature_network(attr_dataset, cache_dir=tmp_path, steps=TRAIN_STEPS)
    assert (cached.target, cached.version, cached.test_accuracy) == (first.target, first.version, first.test_accuracy)
    assert cached.majority_accuracy == first.majority_accuracy
    few = attr_dataset.test_images_u8[:5]
    np.testing.assert_array_equal(cached.features(few), first.features(few))
    # a label record under the attribute network's name is rejected (with a warning) and retrained
    record = flax.serialization.msgpack_restore(cache_file.read_bytes())
    del record["target"]
    cache_file.write_bytes(flax.serialization.msgpack_serialize(record))
    monkeypatch.setattr(metrics, "train_feature_network", lambda ds, *, steps=None: attr_net)
    with pytest.warns(RuntimeWarning, match="'target' is 'labels', expected 'attributes'"):
        metrics.feature_network(attr_dataset, cache_dir=tmp_path, steps=TRAIN_STEPS)


def test_no_labels_and_no_attributes_is_a_data_error(tmp_path):
    x = np.zeros((6, 8, 8, 1), np.uint8)
    unlabelled = make_dataset("tfds:unlabelled", x, np.zeros(6, np.int32), x, np.zeros(6, np.int32))
    for call in (metrics.feature_target, metrics.train_feature_network,
                 lambda ds: metrics.feature_network(ds, cache_dir=tmp_path)):
        with pytest.raises(DataError, match=r"tfds:unlabelled: cannot train the feature network"
                                            r".*class labels.*attributes.*make_dataset"):
            call(unlabelled)
    assert not (tmp_path / "feature_nets").exists()
