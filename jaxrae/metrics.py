"""Evaluation statistics: reconstruction error, Frechet distance, precision/recall, code usage.

Each is a float64 NumPy function of arrays: they run once per seed after training, so exactness
matters more than speed. The feature sets they compare come from the per-data-set classifier of
:mod:`jaxrae.features`; in its features the Frechet distance is reported as "FD in classifier
features", never as an Inception FID.

Every input a user can get wrong (shapes, ranges, NaN or inf values, arguments) raises
:class:`jaxrae.errors.DataError` (data) or :class:`jaxrae.errors.ConfigError` (arguments) with
the message form of :func:`jaxrae.errors.invalid`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from threadpoolctl import ThreadpoolController

from jaxrae.errors import ConfigError, DataError, invalid, require

__all__ = [
    "CodeUsage",
    "code_usage",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "precision_recall",
    "reconstruction_error",
]


# --------------------------------------------------------------------------------------------
# One BLAS thread


# The matrices here are small (a 128 x 128 covariance's eigh, a batch of 1,024 x 2,000 distances),
# and they are computed while XLA's own threads keep the cores busy (the next row trains, the
# other pytest worker runs). A multi-threaded BLAS then spends its time waiting for its threads:
# on a 2-core machine one FD in 128 features took 49 ms with OpenBLAS's 2 threads and 14 ms with
# one while a JAX loop kept a core busy (benchmarks/results/fd_threads_cpu.md; 3x to 8x in repeats).
# The statistics are the same either way (equal FDs there); one thread is faster and predictable.
@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()  # scans the loaded libraries once, not on every call


def _one_blas_thread(fn):
    """Run ``fn`` with the BLAS libraries limited to one thread (restored afterwards)."""

    @functools.wraps(fn)
    def limited(*args, **kwargs):
        with _blas_controller().limit(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return limited


# --------------------------------------------------------------------------------------------
# Input checks (NaN in, error out)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _require_finite(field: str, array: np.ndarray) -> None:
    """DataError naming the first NaN or inf entry and how many there are."""
    finite = np.isfinite(array)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise invalid(
            f"{field}[{', '.join(map(str, first))}]",
            float(array[first]),
            f"values must be finite ({int(np.size(array) - finite.sum())} NaN or inf in {field}; "
            "a diverged run's outputs have no score)",
            DataError,
        )


def _as_feature_matrix(feats, field: str, min_rows: int) -> np.ndarray:
    """float64 (n, d) features with n >= ``min_rows``, all finite; DataError otherwise."""
    feats = np.asarray(feats, dtype=np.float64)
    require(feats.ndim == 2, f"{field}.shape", feats.shape, "features must have shape (n, d)", DataError)
    require(
        feats.shape[0] >= min_rows, f"{field}.shape", feats.shape, f"need at least {min_rows} samples (rows)", DataError
    )
    _require_finite(field, feats)
    return feats


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

    Raises:
      DataError: the shapes differ, there is no image, or a value is NaN or inf.
    """
    x = np.asarray(x, dtype=np.float64)
    x_hat = np.asarray(x_hat, dtype=np.float64)
    require(x.ndim >= 1 and x.shape[0] > 0, "x.shape", x.shape, "need at least one image, shape (n, ...)", DataError)
    require(x_hat.shape == x.shape, "x_hat.shape", x_hat.shape, f"must equal x.shape {x.shape}", DataError)
    _require_finite("x", x)
    _require_finite("x_hat", x_hat)
    per_image = np.sum((x - x_hat).reshape(x.shape[0], -1) ** 2, axis=1)
    return float(np.mean(per_image))


# --------------------------------------------------------------------------------------------
# Frechet distance


@_one_blas_thread
def gaussian_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (divisor n - 1) of features, in float64.

    Args:
      feats: shape (n, d), n >= 2, finite (else DataError).

    Returns:
      ``(mu, cov)`` with shapes (d,) and (d, d).
    """
    feats = _as_feature_matrix(feats, "feats", min_rows=2)
    mu = feats.mean(axis=0)
    centered = feats - mu
    cov = centered.T @ centered / (feats.shape[0] - 1)
    return mu, cov


def _psd_sqrt(sym: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix via eigh; negative eigenvalues -> 0."""
    eigvals, eigvecs = np.linalg.eigh(sym)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


@_one_blas_thread
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
    give 0 to rounding. The result is clamped at 0, since d^2 >= 0.

    Raises:
      DataError: the shapes are inconsistent, or a statistic holds NaN or inf (a diverged run:
        jaxrae's evaluation checks its samples first and reports such a run as nan).
    """
    mu_a = np.asarray(mu_a, dtype=np.float64)
    mu_b = np.asarray(mu_b, dtype=np.float64)
    cov_a = np.asarray(cov_a, dtype=np.float64)
    cov_b = np.asarray(cov_b, dtype=np.float64)
    require(mu_a.ndim == 1, "mu_a.shape", mu_a.shape, "a mean must have shape (d,)", DataError)
    d = mu_a.shape[0]
    for field, value, shape in (("mu_b", mu_b, (d,)), ("cov_a", cov_a, (d, d)), ("cov_b", cov_b, (d, d))):
        require(
            value.shape == shape, f"{field}.shape", value.shape, f"must be {shape} for d={d} (mu_a.shape)", DataError
        )
    for field, value in (("mu_a", mu_a), ("cov_a", cov_a), ("mu_b", mu_b), ("cov_b", cov_b)):
        _require_finite(field, value)
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


@_one_blas_thread
def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (float64).

    ``||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a^{1/2} S_b S_a^{1/2})`` with
    ``(mu, S) = gaussian_stats(feats)``; see :func:`frechet_distance_from_stats` (Heusel et al.
    2017; Dowson & Landau 1982). Computed in :func:`jaxrae.features.feature_network` features this is the
    "FD in classifier features", not an Inception FID.

    Args:
      feats_a, feats_b: shapes (n_a, d) and (n_b, d), n >= 2 each, finite (else DataError).
    """
    feats_a = _as_feature_matrix(feats_a, "feats_a", min_rows=2)
    feats_b = _as_feature_matrix(feats_b, "feats_b", min_rows=2)
    require(
        feats_b.shape[1] == feats_a.shape[1],
        "feats_b.shape",
        feats_b.shape,
        f"feature sizes differ: need the {feats_a.shape[1]} columns of feats_a",
        DataError,
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
        block = _squared_distances(feats[start : start + batch_size], feats, sq_norms)
        radii[start : start + batch_size] = np.partition(block, k, axis=1)[:, k]
    return radii


def _fraction_in_manifold(queries: np.ndarray, refs: np.ndarray, refs_radii_sq: np.ndarray, batch_size: int) -> float:
    """Fraction of queries inside the union of balls B(refs_j, radius_j)."""
    sq_norms = np.einsum("ij,ij->i", refs, refs)
    inside = 0
    for start in range(0, queries.shape[0], batch_size):
        block = _squared_distances(queries[start : start + batch_size], refs, sq_norms)
        inside += int(np.count_nonzero(np.any(block <= refs_radii_sq[None, :], axis=1)))
    return inside / queries.shape[0]


@_one_blas_thread
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
      real_feats: shape (n_real, d), n_real > k, finite.
      fake_feats: shape (n_fake, d), n_fake > k, finite.
      k: neighbour rank defining the radii (3 in the paper).
      batch_size: query rows per distance block.

    Returns:
      ``(precision, recall)`` as floats in [0, 1].

    Raises:
      ConfigError: ``k`` or ``batch_size`` is not an integer >= 1.
      DataError: a feature set has the wrong shape, too few rows, or a NaN or inf value.
    """
    require(_is_int(k) and k >= 1, "k", k, "must be an integer >= 1", ConfigError)
    require(_is_int(batch_size) and batch_size >= 1, "batch_size", batch_size, "must be an integer >= 1", ConfigError)
    real = _as_feature_matrix(real_feats, "real_feats", min_rows=k + 1)
    fake = _as_feature_matrix(fake_feats, "fake_feats", min_rows=k + 1)
    require(
        fake.shape[1] == real.shape[1],
        "fake_feats.shape",
        fake.shape,
        f"feature sizes differ: need the {real.shape[1]} columns of real_feats",
        DataError,
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

    Raises:
      ConfigError: ``n_classes`` is not an integer >= 1.
      DataError: ``indices`` are not integers (NaN included), have the wrong shape, or lie
        outside [0, n_classes).
    """
    indices = np.asarray(indices)
    if indices.ndim == 1:
        indices = indices[:, None]
    require(
        indices.ndim == 2 and indices.shape[0] > 0,
        "indices.shape",
        indices.shape,
        "need at least one code, shape (n, n_vars) or (n,)",
        DataError,
    )
    require(
        np.issubdtype(indices.dtype, np.integer),
        "indices.dtype",
        str(indices.dtype),
        "must be integer class indices",
        DataError,
    )
    require(_is_int(n_classes) and n_classes >= 1, "n_classes", n_classes, "must be an integer >= 1", ConfigError)
    low, high = int(indices.min()), int(indices.max())
    require(low >= 0 and high < n_classes, "indices range", (low, high), f"must lie in [0, {n_classes})", DataError)
    n, n_vars = indices.shape
    # counts[v, k] via one bincount over offset indices: no Python loop over variables.
    offsets = indices + n_classes * np.arange(n_vars)[None, :]
    counts = np.bincount(offsets.ravel(), minlength=n_vars * n_classes).reshape(n_vars, n_classes)
    probs = counts / n
    plogp = np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0)
    perplexity = np.exp(-plogp.sum(axis=1))
    n_distinct = int(np.unique(indices, axis=0).shape[0])
    return CodeUsage(perplexity, float(perplexity.mean()), n_distinct)
