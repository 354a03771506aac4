"""Evaluation metrics: reconstruction error, Frechet distance, precision/recall, code usage.

The Frechet distances here are computed in the penultimate features of a small classifier that
jaxrae trains per data set (:func:`feature_network`), not in Inception-v3 features: Inception
weights cannot be downloaded here, and Inception is the wrong network for 8x8 or 28x28 gray
images anyway. Report the number as "FD in classifier features" next to the classifier's test
accuracy (:attr:`FeatureNetwork.metric_label`), never as "FID (Inception)": values are not
comparable with published FIDs.

The classifier learns the data set's class labels; a data set without classes but with binary
attributes (CelebA's 40) gets a multi-label attribute classifier instead (sigmoid cross-entropy,
as in the attribute-prediction setting of Liu et al. 2015), and its accuracy is then the mean
attribute accuracy (:func:`feature_target`).

Statistics (Frechet distance, precision/recall, code usage) are float64 NumPy functions: they
run once per seed after training, so exactness matters more than speed. The feature network is
Flax/JAX, trained with one ``jax.lax.scan`` over steps.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import warnings
from typing import Any, NamedTuple

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrae.data import Dataset
from jaxrae.errors import DataError
from jaxrae.io import atomic_write_bytes

__all__ = [
    "FD_METRIC_NAME",
    "FEATURE_NET_VERSION",
    "FEATURE_NET_VERSIONS",
    "CodeUsage",
    "FeatureClassifier",
    "FeatureNetwork",
    "code_usage",
    "default_cache_dir",
    "default_feature_steps",
    "feature_network",
    "feature_target",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "precision_recall",
    "reconstruction_error",
    "train_feature_network",
]

FD_METRIC_NAME = "FD in classifier features"


# --------------------------------------------------------------------------------------------
# Reconstruction


def reconstruction_error(x, x_hat) -> float:
    """Mean over images of the per-image sum of squared errors.

    ``mean_i sum_{h,w,c} (x_i - x_hat_i)^2`` for images in the same scale (jaxrae uses float
    pixels in [0, 1]). This is the "sum over pixels, mean over the batch" convention of Ghosh et
    al. 2020 (the Gaussian log-likelihood up to constants), not the per-pixel MSE: divide by
    H*W*C to get the latter. Accumulated in float64.

    Args:
      x: original images, shape (n, ...).
      x_hat: reconstructions, same shape as ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    x_hat = np.asarray(x_hat, dtype=np.float64)
    if x.shape != x_hat.shape:
        raise ValueError(f"reconstruction_error: shapes differ, x {x.shape} vs x_hat {x_hat.shape}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"reconstruction_error: need at least one image, got shape {x.shape}")
    per_image = np.sum((x - x_hat).reshape(x.shape[0], -1) ** 2, axis=1)
    return float(np.mean(per_image))


# --------------------------------------------------------------------------------------------
# Frechet distance


def _as_feature_matrix(feats, name: str, min_rows: int) -> np.ndarray:
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"{name}: expected features of shape (n, d), got {feats.shape}")
    if feats.shape[0] < min_rows:
        raise ValueError(f"{name}: need at least {min_rows} samples, got {feats.shape[0]}")
    return feats


def gaussian_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (divisor n - 1) of features, in float64.

    Args:
      feats: shape (n, d), n >= 2.

    Returns:
      ``(mu, cov)`` with shapes (d,) and (d, d).
    """
    feats = _as_feature_matrix(feats, "gaussian_stats", min_rows=2)
    mu = feats.mean(axis=0)
    centered = feats - mu
    cov = centered.T @ centered / (feats.shape[0] - 1)
    return mu, cov


def _psd_sqrt(sym: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix via eigh; negative eigenvalues -> 0."""
    eigvals, eigvecs = np.linalg.eigh(sym)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
    """Frechet (2-Wasserstein squared) distance between N(mu_a, S_a) and N(mu_b, S_b).

    ``d^2 = ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a^{1/2} S_b S_a^{1/2})``

    Dowson & Landau 1982, "The Frechet distance between multivariate normal distributions";
    used on network features as the FID by Heusel et al. 2017, "GANs trained by a two
    time-scale update rule converge to a local Nash equilibrium".

    The usual implementation takes ``sqrtm(S_a @ S_b)`` of a non-symmetric matrix, which can
    return complex values and loses accuracy when the covariances are singular (ReLU features
    often are). Here every square root is of a symmetric PSD matrix, taken by ``eigh`` in
    float64 with negative eigenvalues (rounding noise) clamped to 0, so identical statistics
    give 0 to rounding. The result is clamped at 0, since d^2 >= 0. Non-finite statistics (a
    diverged model) give ``nan`` instead of an exception, so one bad seed does not abort a run.
    """
    mu_a = np.asarray(mu_a, dtype=np.float64)
    mu_b = np.asarray(mu_b, dtype=np.float64)
    cov_a = np.asarray(cov_a, dtype=np.float64)
    cov_b = np.asarray(cov_b, dtype=np.float64)
    d = mu_a.shape[0]
    if mu_a.shape != (d,) or mu_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ValueError(
            "frechet_distance_from_stats: inconsistent shapes "
            f"mu_a {mu_a.shape}, cov_a {cov_a.shape}, mu_b {mu_b.shape}, cov_b {cov_b.shape}"
        )
    if not all(np.all(np.isfinite(a)) for a in (mu_a, mu_b, cov_a, cov_b)):
        return float("nan")
    # Symmetrize first: covariances built by matmul are symmetric only up to rounding.
    cov_a = 0.5 * (cov_a + cov_a.T)
    cov_b = 0.5 * (cov_b + cov_b.T)
    sqrt_a = _psd_sqrt(cov_a)
    middle = sqrt_a @ cov_b @ sqrt_a
    middle = 0.5 * (middle + middle.T)
    trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)))
    diff = mu_a - mu_b
    distance = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt
    return float(max(distance, 0.0))


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (float64).

    ``||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a^{1/2} S_b S_a^{1/2})`` with
    ``(mu, S) = gaussian_stats(feats)``; see :func:`frechet_distance_from_stats` (Heusel et al.
    2017; Dowson & Landau 1982). Computed in :func:`feature_network` features this is the
    "FD in classifier features", not an Inception FID.

    Args:
      feats_a, feats_b: shapes (n_a, d) and (n_b, d), n >= 2 each.
    """
    feats_a = _as_feature_matrix(feats_a, "frechet_distance", min_rows=2)
    feats_b = _as_feature_matrix(feats_b, "frechet_distance", min_rows=2)
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(
            f"frechet_distance: feature sizes differ, {feats_a.shape[1]} vs {feats_b.shape[1]}"
        )
    return frechet_distance_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


# --------------------------------------------------------------------------------------------
# Improved precision and recall


def _squared_distances(queries: np.ndarray, refs: np.ndarray, refs_sq_norms: np.ndarray):
    """(b, m) squared Euclidean distances by ||q||^2 + ||r||^2 - 2 q.r, clamped at 0."""
    q_sq = np.einsum("ij,ij->i", queries, queries)
    sq = q_sq[:, None] + refs_sq_norms[None, :] - 2.0 * (queries @ refs.T)
    return np.maximum(sq, 0.0)


def _knn_radii_squared(feats: np.ndarray, k: int, batch_size: int) -> np.ndarray:
    """Squared distance from each sample to its k-th nearest neighbour in the same set.

    Each row's own distance (0) is the smallest entry, so the k-th neighbour other than itself
    is entry k of the sorted row (as in Kynkaanniemi et al.'s reference code).
    """
    sq_norms = np.einsum("ij,ij->i", feats, feats)
    radii = np.empty(feats.shape[0])
    for start in range(0, feats.shape[0], batch_size):
        block = _squared_distances(feats[start:start + batch_size], feats, sq_norms)
        radii[start:start + batch_size] = np.partition(block, k, axis=1)[:, k]
    return radii


def _fraction_in_manifold(
    queries: np.ndarray, refs: np.ndarray, refs_radii_sq: np.ndarray, batch_size: int
) -> float:
    """Fraction of queries inside the union of balls B(refs_j, radius_j)."""
    sq_norms = np.einsum("ij,ij->i", refs, refs)
    inside = 0
    for start in range(0, queries.shape[0], batch_size):
        block = _squared_distances(queries[start:start + batch_size], refs, sq_norms)
        inside += int(np.count_nonzero(np.any(block <= refs_radii_sq[None, :], axis=1)))
    return inside / queries.shape[0]


def precision_recall(real_feats, fake_feats, k: int = 3, *, batch_size: int = 1024):
    """Improved precision and recall of Kynkaanniemi et al. 2019.

    "Improved Precision and Recall Metric for Assessing Generative Models" (NeurIPS 2019).
    Each set's manifold is the union of balls centred on its samples with radius the distance
    to the sample's k-th nearest neighbour within the set:

      precision = mean_{f in fake} 1[exists r in real: ||f - r|| <= NN_k(r, real)]
      recall    = mean_{r in real} 1[exists f in fake: ||r - f|| <= NN_k(f, fake)]

    Precision is the share of generated samples that look real, recall the share of real
    samples the generator covers. Distances are float64 and computed ``batch_size`` query rows
    at a time (memory O(batch_size * n)), so 10k x 10k sets fit easily.

    Args:
      real_feats: shape (n_real, d), n_real > k.
      fake_feats: shape (n_fake, d), n_fake > k.
      k: neighbour rank defining the radii (3 in the paper).

    Returns:
      ``(precision, recall)`` as floats in [0, 1].
    """
    if k < 1:
        raise ValueError(f"precision_recall: k must be >= 1, got {k}")
    real = _as_feature_matrix(real_feats, "precision_recall (real)", min_rows=k + 1)
    fake = _as_feature_matrix(fake_feats, "precision_recall (fake)", min_rows=k + 1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"precision_recall: feature sizes differ, {real.shape[1]} vs {fake.shape[1]}"
        )
    real_radii = _knn_radii_squared(real, k, batch_size)
    fake_radii = _knn_radii_squared(fake, k, batch_size)
    precision = _fraction_in_manifold(fake, real, real_radii, batch_size)
    recall = _fraction_in_manifold(real, fake, fake_radii, batch_size)
    return precision, recall


# --------------------------------------------------------------------------------------------
# Discrete code usage


class CodeUsage(NamedTuple):
    """How much of a discrete latent space a set of codes uses.

    Attributes:
      perplexity_per_variable: (n_vars,) ``exp(H(p_v))`` with p_v the empirical class
        frequencies of variable v (natural log); between 1 (collapsed) and n_classes (uniform).
      mean_perplexity: mean of ``perplexity_per_variable``.
      n_distinct_codes: number of distinct code rows (whole codes, all variables together).
    """

    perplexity_per_variable: np.ndarray
    mean_perplexity: float
    n_distinct_codes: int


def code_usage(indices, n_classes: int) -> CodeUsage:
    """Per-variable perplexity and distinct-code count of discrete codes.

    ``perplexity_v = exp(-sum_k p_vk log p_vk)``, p_vk the fraction of samples whose variable v
    takes class k (0 log 0 = 0). Perplexity is the codebook-usage measure of VQ-VAE practice
    (e.g. van den Oord et al. 2017; Mentzer et al. 2023, FSQ): index collapse shows as a
    perplexity near 1 or few distinct codes.

    Args:
      indices: integer class indices, shape (n, n_vars) (or (n,) for a single variable),
        values in [0, n_classes).
      n_classes: classes per variable (K).
    """
    indices = np.asarray(indices)
    if indices.ndim == 1:
        indices = indices[:, None]
    if indices.ndim != 2 or indices.shape[0] == 0:
        raise ValueError(f"code_usage: expected indices of shape (n, n_vars), got {indices.shape}")
    if not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"code_usage: indices must be integers, got dtype {indices.dtype}")
    if n_classes < 1:
        raise ValueError(f"code_usage: n_classes must be >= 1, got {n_classes}")
    if indices.min() < 0 or indices.max() >= n_classes:
        raise ValueError(
            f"code_usage: indices must lie in [0, {n_classes}), got range "
            f"[{indices.min()}, {indices.max()}]"
        )
    n, n_vars = indices.shape
    # counts[v, k] via one bincount over offset indices: no Python loop over variables.
    offsets = indices + n_classes * np.arange(n_vars)[None, :]
    counts = np.bincount(offsets.ravel(), minlength=n_vars * n_classes).reshape(n_vars, n_classes)
    probs = counts / n
    plogp = np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0)
    perplexity = np.exp(-plogp.sum(axis=1))
    n_distinct = int(np.unique(indices, axis=0).shape[0])
    return CodeUsage(perplexity, float(perplexity.mean()), n_distinct)


# --------------------------------------------------------------------------------------------
# Feature network

# One version per training target. Bump a target's entry whenever FeatureClassifier, its training
# recipe or its cache format changes (the architecture is shared: bump both): the version is part
# of every cache key and of compare's resume header, so stale networks are never reused. The
# attribute target was added with its own entry; label networks and their cache files are
# unchanged from fdnet-v1 (their records gained no field), so their caches stay valid.
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
        batch = images[start:start + batch_size]
        if batch.dtype == np.uint8:  # convert per batch: a uint8 test split is never held as float32
            batch = batch.astype(np.float32) / 255.0
        rows = batch.shape[0]
        if rows < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - rows, *batch.shape[1:]), batch.dtype)])
        logits, feats = _apply_classifier(model, params, jnp.asarray(batch))
        logits_out.append(np.asarray(logits)[:rows])
        feats_out.append(np.asarray(feats)[:rows])
    return np.concatenate(logits_out), np.concatenate(feats_out)


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
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(self.image_shape):
            raise DataError(
                f"feature network expects images of shape (n, {', '.join(map(str, self.image_shape))}), "
                f"got {images.shape}"
            )
        return images if images.dtype == np.uint8 else images.astype(np.float32)

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
    def accuracy_name(self) -> str:
        """What :attr:`test_accuracy` measures: "test accuracy" or "test mean attribute accuracy"."""
        return "test mean attribute accuracy" if self.target == "attributes" else "test accuracy"

    @property
    def metric_label(self) -> str:
        """For tables and captions: "FD in classifier features (test acc 97.8%)", or for an
        attribute network "FD in classifier features (test mean attribute accuracy 90.1%;
        majority rule 80.0%)"."""
        if self.target == "attributes":
            return (f"{FD_METRIC_NAME} ({self.accuracy_name} {self.test_accuracy:.1%}; "
                    f"majority rule {self.majority_accuracy:.1%})")
        return f"{FD_METRIC_NAME} (test acc {self.test_accuracy:.1%})"


def feature_target(dataset: Dataset) -> str:
    """What the feature network learns on ``dataset``: ``"labels"`` or ``"attributes"``.

    Class labels when there are at least 2 classes (a softmax classifier, as before); otherwise
    the binary attributes if the data set has them (a multi-label classifier: sigmoid
    cross-entropy per attribute, the usual objective for CelebA's 40 attributes, Liu et al.
    2015). Labels win when both exist, so labelled data sets keep their networks.

    Raises:
      DataError: neither (fewer than 2 classes and no attributes), naming what to do.
    """
    if dataset.n_classes >= 2:
        return "labels"
    if dataset.n_attributes > 0:
        return "attributes"
    raise DataError(
        f"{dataset.name}: cannot train the feature network for the FD: it needs class labels (at "
        f"least 2 classes; this data set has {dataset.n_classes}) or binary attributes, and this "
        "data set has neither. Use a source that provides them (tfds:celeb_a provides 40 attributes), "
        "build the Dataset with labels or attributes (jaxrae.data.make_dataset(..., "
        "train_attributes=..., test_attributes=...)), or compute Frechet distances with a "
        "FeatureNetwork trained on a labelled data set of the same image shape"
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
    if steps < 1:
        raise ValueError(f"train_feature_network: steps must be >= 1, got {steps}")
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
    if net.target != "labels":  # label records keep the fdnet-v1 format exactly
        record["target"] = net.target
    # Temp file + rename (jaxrae.io): readers see the old file or the whole new one,
    # never a partial write, even with concurrent runs.
    atomic_write_bytes(path, flax.serialization.msgpack_serialize(record))


def _load_feature_network(path: pathlib.Path, dataset: Dataset, steps: int) -> FeatureNetwork:
    """Read and validate a cache file; raises on anything unexpected."""
    target = feature_target(dataset)
    record = flax.serialization.msgpack_restore(path.read_bytes())
    if not isinstance(record, dict):
        raise ValueError("not a feature-network record")
    record.setdefault("target", "labels")  # fdnet-v1 label records have no target field
    expected = {
        "version": FEATURE_NET_VERSIONS[target],
        "target": target,
        "fingerprint": dataset.fingerprint,
        "steps": steps,
        "n_classes": _head_size(dataset, target),
        "image_shape": list(dataset.image_shape),
    }
    for field, value in expected.items():
        if record.get(field) != value:
            raise ValueError(f"field {field!r} is {record.get(field)!r}, expected {value!r}")
    model = FeatureClassifier(n_classes=_head_size(dataset, target))
    template = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *dataset.image_shape), jnp.float32))["params"]
    )
    params = flax.serialization.from_state_dict(template, record["params"])
    if jax.tree.structure(params) != jax.tree.structure(template):
        raise ValueError("parameter tree does not match the network")
    for leaf, spec in zip(jax.tree.leaves(params), jax.tree.leaves(template)):
        if not isinstance(leaf, np.ndarray) or leaf.shape != spec.shape or leaf.dtype != spec.dtype:
            raise ValueError("parameter shapes or dtypes do not match the network")
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
    target = feature_target(dataset)  # a DataError now, before any cache or training work
    if steps is None:
        steps = default_feature_steps(dataset)
    if not use_cache:
        return train_feature_network(dataset, steps=steps)
    path = _cache_path(pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir(),
                       dataset.fingerprint, steps, target)
    if path.exists():
        try:
            return _load_feature_network(path, dataset, steps)
        except Exception as err:  # any fault in a cache file means: retrain, never crash
            warnings.warn(
                f"ignoring unreadable feature-network cache {path} ({type(err).__name__}: {err}); retraining",
                RuntimeWarning,
                stacklevel=2,
            )
    net = train_feature_network(dataset, steps=steps)
    _save_feature_network(path, net)
    return net
