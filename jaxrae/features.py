"""The feature network of the Frechet distance: a small classifier per data set, trained and cached.

The Frechet distances of jaxrae are computed in the penultimate features of a small classifier
trained per data set (:func:`feature_network`), not in Inception-v3 features: Inception weights
cannot be downloaded here, and Inception is the wrong network for 8x8 or 28x28 gray images
anyway. Report the number as "FD in classifier features" next to the classifier's test accuracy
(:attr:`FeatureNetwork.metric_label`), never as "FID (Inception)": values are not comparable
with published FIDs.

The classifier learns the data set's class labels; a data set without classes but with binary
attributes (CelebA's 40) gets a multi-label attribute classifier instead (sigmoid cross-entropy,
as in the attribute-prediction setting of Liu et al. 2015), and its accuracy is then the mean
attribute accuracy (:func:`feature_target`). Next to it, the accuracy of the majority rule (the
most frequent training class, or each attribute's most frequent value) is the floor to beat.

Training is deterministic (a fixed key, one ``jax.lax.scan`` over Adam steps); a trained network
is cached on disk under the data set's fingerprint, the recipe's version and the step count
(:func:`feature_network`). The statistics themselves live in :mod:`jaxrae.metrics`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
import warnings
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrae.data import Dataset
from jaxrae.errors import ConfigError, DataError, invalid, require
from jaxrae.io import atomic_write_bytes
from jaxrae.metrics import frechet_distance

__all__ = [
    "FD_METRIC_NAME",
    "FEATURE_NET_VERSION",
    "FEATURE_NET_VERSIONS",
    "NEAR_MAJORITY_FRACTION",
    "FeatureClassifier",
    "FeatureNetwork",
    "default_cache_dir",
    "default_feature_steps",
    "feature_network",
    "feature_target",
    "majority_warning",
    "train_feature_network",
]

FD_METRIC_NAME = "FD in classifier features"


# --------------------------------------------------------------------------------------------
# Recipe

# One version per training target. Bump a target's entry whenever FeatureClassifier, its training
# recipe or its cache format changes (the architecture is shared: bump both): the version is part
# of every cache key and of compare's resume header, so stale networks are never reused. A label
# record has no "target" field and an attribute record has target "attributes"; each target's
# cache files are named by its own version.
FEATURE_NET_VERSIONS = {"labels": "fdnet-v1", "attributes": "fdnet-attributes-v1"}
FEATURE_NET_VERSION = FEATURE_NET_VERSIONS["labels"]
FEATURE_BATCH_SIZE = 128
FEATURE_LEARNING_RATE = 2e-3
FEATURE_TRAIN_SEED = 0
# Default steps: about 5 epochs, at least 500 steps (small data sets need them to converge)
# and at most 2000 (Fashion-MNIST: ~4 epochs, ~90% test accuracy, ~50 CPU-seconds).
MIN_FEATURE_STEPS = 500
MAX_FEATURE_STEPS = 2000
_EVAL_BATCH_SIZE = 500
#: A feature network that removes less than this fraction of the majority rule's test errors is
#: "at or near the majority rule": its features barely separate the classes, and every FD,
#: precision and recall measured in them says little about the images (constant images, say).
NEAR_MAJORITY_FRACTION = 0.1


# --------------------------------------------------------------------------------------------
# Classifier and its training


def _space_to_depth(x):
    """(n, H, W, C) -> (n, ceil(H/2), ceil(W/2), 4C): each 2x2 patch becomes one pixel.

    Odd sizes are zero-padded, so any image size works.
    """
    n, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    h, w = x.shape[1] // 2, x.shape[2] // 2
    x = x.reshape(n, h, 2, w, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h, w, 4 * c)


class FeatureClassifier(nn.Module):
    """Small conv classifier whose penultimate activations are the Frechet-distance features.

    Two 2x2 stride-2 convolutions (patchify layers, as in a ViT/ConvNeXt stem) with
    ``conv_channels`` channels and ReLU, a dense layer of ``n_features`` ReLU units (the
    features), then a linear head of ``n_classes`` outputs: class logits, or one logit per
    attribute for a multi-label network. Works for any input size (8x8, 28x28, 64x64x3...).

    Each 2x2 stride-2 convolution is written as space-to-depth + Dense, which is the same
    linear map: XLA:CPU runs ``conv`` ops inside a ``lax.scan`` (a while loop) about 6x slower
    than outside it, while dense matmuls run at full speed, and training is one scan.
    """

    n_classes: int
    conv_channels: tuple[int, ...] = (32, 64)
    n_features: int = 128

    @nn.compact
    def __call__(self, images):
        """images: float32 (n, H, W, C) in [0, 1]. Returns (logits, features)."""
        x = images - 0.5  # centred inputs train faster with the default initializers
        for channels in self.conv_channels:
            x = nn.relu(nn.Dense(channels)(_space_to_depth(x)))
        x = x.reshape((x.shape[0], -1))
        features = nn.relu(nn.Dense(self.n_features)(x))
        logits = nn.Dense(self.n_classes)(features)
        return logits, features


@functools.partial(jax.jit, static_argnames=("model", "steps", "multilabel"))
def _train_classifier(model: FeatureClassifier, key, images_u8, labels, *, steps: int, multilabel: bool = False):
    """Adam, minibatches drawn with replacement, one scan over steps.

    Loss: softmax cross-entropy on integer labels (n,), or with ``multilabel`` the mean over
    attributes of the sigmoid cross-entropy on 0/1 attributes (n, A).
    """
    init_key, batch_key = jax.random.split(key)
    params = model.init(init_key, jnp.zeros((1, *images_u8.shape[1:]), jnp.float32))["params"]
    optimizer = optax.adam(FEATURE_LEARNING_RATE)

    def loss_fn(params, images, batch_labels):
        logits, _ = model.apply({"params": params}, images)
        if multilabel:
            return optax.sigmoid_binary_cross_entropy(logits, batch_labels.astype(jnp.float32)).mean()
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch_labels).mean()

    def step(carry, step_index):
        params, opt_state = carry
        idx = jax.random.randint(
            jax.random.fold_in(batch_key, step_index), (FEATURE_BATCH_SIZE,), 0, images_u8.shape[0]
        )
        images = images_u8[idx].astype(jnp.float32) / 255.0
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels[idx])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), jnp.arange(steps))
    return params, losses


@functools.partial(jax.jit, static_argnames=("model",))
def _apply_classifier(model: FeatureClassifier, params, images):
    return model.apply({"params": params}, images)


def _map_batches(model, params, images: np.ndarray, batch_size: int = _EVAL_BATCH_SIZE):
    """(logits, features) for all images, a fixed-size batch at a time.

    Padding the last batch keeps one compiled shape per network, and the fixed batch bounds
    memory whatever the number of images.
    """
    n = images.shape[0]
    logits_out, feats_out = [], []
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size]
        if batch.dtype == np.uint8:  # convert per batch: a uint8 test split is never held as float32
            batch = batch.astype(np.float32) / 255.0
        rows = batch.shape[0]
        if rows < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - rows, *batch.shape[1:]), batch.dtype)])
        logits, feats = _apply_classifier(model, params, jnp.asarray(batch))
        logits_out.append(np.asarray(logits)[:rows])
        feats_out.append(np.asarray(feats)[:rows])
    return np.concatenate(logits_out), np.concatenate(feats_out)


# --------------------------------------------------------------------------------------------
# The trained network


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureNetwork:
    """A trained :class:`FeatureClassifier` and what it was trained on.

    Attributes:
      model: the Flax module (architecture).
      params: its trained parameters.
      test_accuracy: on the data set's test split, the classification accuracy (``target ==
        "labels"``) or the mean attribute accuracy, ``mean_{i, a} 1[(logit_ia > 0) = attr_ia]``
        (``target == "attributes"``); report it next to every FD (:attr:`metric_label`).
      fingerprint: ``Dataset.fingerprint`` of the training data.
      image_shape: (H, W, C) of the images it accepts.
      steps: training steps.
      version: ``FEATURE_NET_VERSIONS[target]``, the recipe.
      target: ``"labels"`` (softmax classifier) or ``"attributes"`` (multi-label sigmoid).
      majority_accuracy: the same accuracy for the rule that predicts the most frequent
        training class (or each attribute's most frequent training value): the floor the
        network must beat (CelebA's attributes are imbalanced, about 80% there).
    """

    model: FeatureClassifier
    params: Any
    test_accuracy: float
    fingerprint: str
    image_shape: tuple[int, int, int]
    steps: int
    version: str = FEATURE_NET_VERSION
    target: str = "labels"
    majority_accuracy: float = float("nan")

    def _check_images(self, images) -> np.ndarray:
        """NHWC images of this network's shape; float images must be finite (NaN in, error out)."""
        images = np.asarray(images)
        require(
            images.ndim == 4 and tuple(images.shape[1:]) == tuple(self.image_shape),
            "images.shape",
            images.shape,
            f"the feature network expects images of shape (n, {', '.join(map(str, self.image_shape))})",
            DataError,
        )
        if images.dtype == np.uint8:
            return images
        images = images.astype(np.float32)
        n_bad = int(images.size - np.count_nonzero(np.isfinite(images)))
        require(
            n_bad == 0,
            "images",
            f"<{n_bad} NaN or inf values>",
            "images must be finite (a diverged run's outputs have no features)",
            DataError,
        )
        return images

    def features(self, images) -> np.ndarray:
        """Penultimate features, float32 (n, n_features), of NHWC images (float in [0, 1], or uint8)."""
        return _map_batches(self.model, self.params, self._check_images(images))[1]

    def predict(self, images) -> np.ndarray:
        """Predicted class of each image, int (n,); for an attribute network the 0/1 attributes (n, A)."""
        logits = _map_batches(self.model, self.params, self._check_images(images))[0]
        if self.target == "attributes":
            return (logits > 0).astype(np.uint8)
        return np.argmax(logits, axis=1)

    def frechet_distance(self, images_a, images_b) -> float:
        """FD in classifier features between two image sets (see :func:`frechet_distance`)."""
        return frechet_distance(self.features(images_a), self.features(images_b))

    @property
    def warning(self) -> str | None:
        """:func:`majority_warning` of this network's accuracies: a sentence, or None when it is fine."""
        return majority_warning(self.test_accuracy, self.majority_accuracy, self.accuracy_name)

    @property
    def accuracy_name(self) -> str:
        """What :attr:`test_accuracy` measures: "test accuracy" or "test mean attribute accuracy"."""
        return "test mean attribute accuracy" if self.target == "attributes" else "test accuracy"

    @property
    def metric_label(self) -> str:
        """For tables and captions: "FD in classifier features (test acc 97.8%)", or for an
        attribute network "FD in classifier features (test mean attribute accuracy 90.1%;
        majority rule 80.0%)"."""
        if self.target == "attributes":
            return (
                f"{FD_METRIC_NAME} ({self.accuracy_name} {self.test_accuracy:.1%}; "
                f"majority rule {self.majority_accuracy:.1%})"
            )
        return f"{FD_METRIC_NAME} (test acc {self.test_accuracy:.1%})"


# --------------------------------------------------------------------------------------------
# Targets, accuracies, training


def majority_warning(
    test_accuracy: float, majority_accuracy: float, accuracy_name: str = "test accuracy"
) -> str | None:
    """A warning when the feature network is at or near the majority rule, else None.

    With ``a`` the network's accuracy and ``m`` the majority rule's, the network removes the
    fraction ``(a - m) / (1 - m)`` of the majority rule's errors (the "proportional reduction in
    error" of Goodman & Kruskal's lambda, 1954); it is near the majority rule when
    ``a - m <= NEAR_MAJORITY_FRACTION * (1 - m)``. A NaN accuracy (unknown) gives no warning.
    """
    if not (math.isfinite(test_accuracy) and math.isfinite(majority_accuracy)):
        return None
    if test_accuracy - majority_accuracy > NEAR_MAJORITY_FRACTION * (1.0 - majority_accuracy):
        return None
    return (
        f"the FD feature network is at or near the majority rule ({accuracy_name} {test_accuracy:.1%}, "
        f"majority rule {majority_accuracy:.1%}): its features barely tell the classes apart, so FD, "
        "precision and recall say little about the images (constant or degenerate images or labels?)"
    )


def feature_target(dataset: Dataset) -> str:
    """What the feature network learns on ``dataset``: ``"labels"`` or ``"attributes"``.

    Class labels when there are at least 2 classes (a softmax classifier); otherwise
    the binary attributes if the data set has them (a multi-label classifier: sigmoid
    cross-entropy per attribute, the usual objective for CelebA's 40 attributes, Liu et al.
    2015). Labels win when both exist.

    Raises:
      DataError: neither (fewer than 2 classes and no attributes), naming what to do.
    """
    if dataset.n_classes >= 2:
        return "labels"
    if dataset.n_attributes > 0:
        return "attributes"
    raise invalid(
        "dataset",
        dataset.name,
        f"cannot train the feature network for the FD: it needs class labels (at least 2 classes; "
        f"this data set has {dataset.n_classes}) or binary attributes, and this data set has neither. "
        "Use a source that provides them (tfds:celeb_a provides 40 attributes), build the Dataset with "
        "labels or attributes (jaxrae.data.make_dataset(..., train_attributes=..., test_attributes=...)), "
        "or compute Frechet distances with a FeatureNetwork trained on a labelled data set of the same image shape",
        DataError,
    )


def _targets(dataset: Dataset, target: str, split: str) -> np.ndarray:
    if target == "attributes":
        return getattr(dataset, f"{split}_attributes")
    return np.asarray(getattr(dataset, f"{split}_labels"))


def _head_size(dataset: Dataset, target: str) -> int:
    return dataset.n_attributes if target == "attributes" else dataset.n_classes


def _majority_accuracy(dataset: Dataset, target: str) -> float:
    """Test accuracy of predicting the most frequent training value (per attribute)."""
    train, test = _targets(dataset, target, "train"), _targets(dataset, target, "test")
    if target == "attributes":
        majority = (2 * train.sum(axis=0, dtype=np.int64) >= train.shape[0]).astype(np.uint8)
        return float(np.mean(test == majority[None, :]))
    return float(np.mean(test == np.argmax(np.bincount(train))))


def default_feature_steps(dataset: Dataset) -> int:
    """``clip(ceil(5 * n_train / batch_size), MIN_FEATURE_STEPS, MAX_FEATURE_STEPS)``."""
    five_epochs = -(-5 * dataset.n_train // FEATURE_BATCH_SIZE)
    return int(min(max(five_epochs, MIN_FEATURE_STEPS), MAX_FEATURE_STEPS))


def train_feature_network(dataset: Dataset, *, steps: int | None = None) -> FeatureNetwork:
    """Train the feature classifier on ``dataset``'s train split, deterministically; no cache.

    Fixed key (seed ``FEATURE_TRAIN_SEED``), ``steps`` Adam steps (lr ``FEATURE_LEARNING_RATE``)
    of batch ``FEATURE_BATCH_SIZE`` drawn with replacement, float32, one ``lax.scan``: the same
    data set and steps give the same parameters on the same platform. ``steps=None`` means
    :func:`default_feature_steps`. The target (class labels, or binary attributes when there
    are no classes) is :func:`feature_target`'s, which raises DataError when there is neither.
    """
    target = feature_target(dataset)
    if steps is None:
        steps = default_feature_steps(dataset)
    require(
        isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) and steps >= 1,
        "steps",
        steps,
        "the feature network's training steps must be an integer >= 1",
        ConfigError,
    )
    model = FeatureClassifier(n_classes=_head_size(dataset, target))
    multilabel = target == "attributes"
    params, _ = _train_classifier(
        model,
        jax.random.key(FEATURE_TRAIN_SEED),
        jnp.asarray(dataset.train_images_u8),
        jnp.asarray(_targets(dataset, target, "train"), dtype=jnp.uint8 if multilabel else jnp.int32),
        steps=steps,
        multilabel=multilabel,
    )
    params = jax.tree.map(np.asarray, params)
    logits = _map_batches(model, params, dataset.test_images_u8)[0]
    predictions = (logits > 0) if multilabel else np.argmax(logits, axis=1)
    test_accuracy = float(np.mean(predictions == _targets(dataset, target, "test")))
    return _network_record(dataset, target, model, params, test_accuracy, steps)


def _network_record(dataset: Dataset, target: str, model, params, test_accuracy: float, steps: int) -> FeatureNetwork:
    """A FeatureNetwork tied to ``dataset`` (its fingerprint and image shape) and ``target``."""
    return FeatureNetwork(
        model=model,
        params=params,
        test_accuracy=test_accuracy,
        fingerprint=dataset.fingerprint,
        image_shape=tuple(dataset.image_shape),
        steps=steps,
        version=FEATURE_NET_VERSIONS[target],
        target=target,
        majority_accuracy=_majority_accuracy(dataset, target),
    )


# --------------------------------------------------------------------------------------------
# Disk cache


def default_cache_dir() -> pathlib.Path:
    """``$JAXRAE_CACHE`` if set, else ``~/.cache/jaxrae``."""
    env = os.environ.get("JAXRAE_CACHE")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "jaxrae"


def _cache_path(cache_dir: pathlib.Path, fingerprint: str, steps: int, target: str = "labels") -> pathlib.Path:
    return cache_dir / "feature_nets" / f"{FEATURE_NET_VERSIONS[target]}-{fingerprint}-{steps}steps.msgpack"


def _save_feature_network(path: pathlib.Path, net: FeatureNetwork) -> None:
    record = {
        "version": net.version,
        "fingerprint": net.fingerprint,
        "steps": net.steps,
        "n_classes": net.model.n_classes,  # head size: classes, or attributes
        "image_shape": list(net.image_shape),
        "test_accuracy": net.test_accuracy,
        "params": flax.serialization.to_state_dict(net.params),
    }
    if net.target != "labels":  # a label record has no target field (see _load_feature_network)
        record["target"] = net.target
    # Temp file + rename (jaxrae.io): readers see the old file or the whole new one,
    # never a partial write, even with concurrent runs.
    atomic_write_bytes(path, flax.serialization.msgpack_serialize(record))


def _load_feature_network(path: pathlib.Path, dataset: Dataset, steps: int) -> FeatureNetwork:
    """Read and validate a cache file; raises (DataError, or whatever msgpack raises) on anything unexpected."""
    target = feature_target(dataset)
    record = flax.serialization.msgpack_restore(path.read_bytes())
    require(isinstance(record, dict), "record", type(record).__name__, "a feature-network record is a dict", DataError)
    record.setdefault("target", "labels")  # a record without a target field is a label network
    expected = {
        "version": FEATURE_NET_VERSIONS[target],
        "target": target,
        "fingerprint": dataset.fingerprint,
        "steps": steps,
        "n_classes": _head_size(dataset, target),
        "image_shape": list(dataset.image_shape),
    }
    for field, value in expected.items():
        require(record.get(field) == value, f"record[{field!r}]", record.get(field), f"expected {value!r}", DataError)
    model = FeatureClassifier(n_classes=_head_size(dataset, target))
    template = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *dataset.image_shape), jnp.float32))["params"]
    )
    params = flax.serialization.from_state_dict(template, record["params"])
    require(
        jax.tree.structure(params) == jax.tree.structure(template),
        "record['params']",
        "<tree>",
        "the parameter tree must match the network's",
        DataError,
    )
    for leaf, spec in zip(jax.tree.leaves(params), jax.tree.leaves(template)):
        require(
            isinstance(leaf, np.ndarray) and leaf.shape == spec.shape and leaf.dtype == spec.dtype,
            "record['params'] leaf",
            getattr(leaf, "shape", type(leaf).__name__),
            f"expected an array of shape {spec.shape} and dtype {spec.dtype}",
            DataError,
        )
    test_accuracy = float(record["test_accuracy"])
    return _network_record(dataset, target, model, params, test_accuracy, steps)


def feature_network(
    dataset: Dataset, *, cache_dir=None, steps: int | None = None, use_cache: bool = True
) -> FeatureNetwork:
    """The data set's feature network: loaded from the disk cache, or trained and cached.

    The cache key is ``dataset.fingerprint`` + the target's :data:`FEATURE_NET_VERSIONS` entry +
    ``steps``, so a changed data set (a different crop or resize included) or recipe never
    reuses a stale network. The target is :func:`feature_target`'s: class labels, else binary
    attributes (CelebA), else a DataError saying what to do. Files live under
    ``<cache_dir>/feature_nets/`` (default :func:`default_cache_dir`), are written atomically,
    and an unreadable or mismatched file is ignored with a warning and overwritten after
    retraining.

    Default ``steps`` (:func:`default_feature_steps`): 500 on ``digits`` (a few seconds), 2000
    on Fashion-MNIST (about 50 CPU-seconds, ~90% test accuracy).
    """
    target = feature_target(dataset)  # a DataError here, before any cache or training work
    if steps is None:
        steps = default_feature_steps(dataset)
    if not use_cache:
        return train_feature_network(dataset, steps=steps)
    path = _cache_path(
        pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir(), dataset.fingerprint, steps, target
    )
    if path.exists():
        try:
            return _load_feature_network(path, dataset, steps)
        except Exception as err:
            warnings.warn(
                f"ignoring unreadable feature-network cache {path} ({type(err).__name__}: {err}); retraining",
                RuntimeWarning,
                stacklevel=2,
            )
    net = train_feature_network(dataset, steps=steps)
    _save_feature_network(path, net)
    return net
