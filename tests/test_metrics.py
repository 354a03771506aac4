"""Tests of jaxrae.metrics: closed forms and constructed sets with known answers, and the
rule that every metric refuses bad input (NaN in, DataError out)."""

import numpy as np
import pytest
import scipy.linalg

from jaxrae import metrics
from jaxrae.errors import ConfigError, DataError

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
    with pytest.raises(DataError, match=r"feats_b.shape=\(3, 1\) is invalid: feature sizes differ"):
        metrics.frechet_distance(feats, feats[:, :1])
    with pytest.raises(DataError, match=r"feats.shape=\(1, 2\) is invalid: need at least 2 samples"):
        metrics.gaussian_stats(feats[:1])
    with pytest.raises(DataError, match=r"mu_b.shape=\(3,\) is invalid: must be \(2,\)"):
        metrics.frechet_distance_from_stats(mu, cov, np.zeros(3), cov)


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

    with pytest.raises(DataError, match=r"indices range=\(4, 4\) is invalid: must lie in \[0, 4\)"):
        metrics.code_usage(np.array([[4]]), n_classes)
    with pytest.raises(ConfigError, match="n_classes=0 is invalid"):
        metrics.code_usage(np.array([[0]]), 0)


def test_reconstruction_error_is_mean_of_per_image_sums():
    x = np.zeros((2, 2, 2, 1))
    x_hat = np.zeros_like(x)
    x_hat[0] = 1.0  # image 0: 4 pixels off by 1 -> 4; image 1: exact -> 0
    assert metrics.reconstruction_error(x, x_hat) == pytest.approx(2.0)
    with pytest.raises(DataError, match=r"x_hat.shape=\(1, 2, 2, 1\) is invalid: must equal x.shape"):
        metrics.reconstruction_error(x, x_hat[:1])


def test_precision_recall_arguments_are_config_errors():
    real = clusters(np.random.default_rng(4), CENTERS, 5)
    with pytest.raises(ConfigError, match="k=0 is invalid: must be an integer >= 1"):
        metrics.precision_recall(real, real, k=0)
    with pytest.raises(ConfigError, match="batch_size=0 is invalid"):
        metrics.precision_recall(real, real, batch_size=0)
    with pytest.raises(DataError, match=r"fake_feats.shape=\(3, 4\) is invalid: need at least 4 samples"):
        metrics.precision_recall(real, real[:3], k=3)


# ------------------------------------------------------------------------------------------
# NaN in, error out: every public metric refuses non-finite input instead of returning a number

_RNG = np.random.default_rng(5)
_FEATS = _RNG.normal(size=(12, 3))
_MU, _COV = _FEATS.mean(0), np.cov(_FEATS, rowvar=False)
_IMAGES = _RNG.uniform(size=(4, 2, 2, 1))


def _with_nan(array, index):
    out = np.array(array, dtype=np.float64)
    out[index] = np.nan
    return out


# (metric, arguments with one NaN, the field the message must name)
NAN_CASES = {
    "reconstruction_error(x)": (
        metrics.reconstruction_error,
        (_with_nan(_IMAGES, (1, 0, 1, 0)), _IMAGES),
        r"x\[1, 0, 1, 0\]=nan",
    ),
    "reconstruction_error(x_hat)": (
        metrics.reconstruction_error,
        (_IMAGES, _with_nan(_IMAGES, (3, 1, 1, 0))),
        r"x_hat\[3, 1, 1, 0\]=nan",
    ),
    "gaussian_stats": (metrics.gaussian_stats, (_with_nan(_FEATS, (2, 1)),), r"feats\[2, 1\]=nan"),
    "frechet_distance(a)": (metrics.frechet_distance, (_with_nan(_FEATS, (0, 0)), _FEATS), r"feats_a\[0, 0\]=nan"),
    "frechet_distance(b)": (metrics.frechet_distance, (_FEATS, _with_nan(_FEATS, (11, 2))), r"feats_b\[11, 2\]=nan"),
    "frechet_distance_from_stats(mu)": (
        metrics.frechet_distance_from_stats,
        (_MU, _COV, _with_nan(_MU, 1), _COV),
        r"mu_b\[1\]=nan",
    ),
    "frechet_distance_from_stats(cov)": (
        metrics.frechet_distance_from_stats,
        (_MU, _with_nan(_COV, (0, 2)), _MU, _COV),
        r"cov_a\[0, 2\]=nan",
    ),
    # Distances to a NaN row compare False with every radius, so without the check a NaN row
    # would quietly count as "outside the manifold" and give numbers.
    "precision_recall(real)": (
        metrics.precision_recall,
        (_with_nan(_FEATS, (5, 0)), _FEATS),
        r"real_feats\[5, 0\]=nan",
    ),
    "precision_recall(fake)": (
        metrics.precision_recall,
        (_FEATS, _with_nan(_FEATS, (7, 2))),
        r"fake_feats\[7, 2\]=nan",
    ),
    "code_usage": (metrics.code_usage, (_with_nan(np.zeros((3, 2)), (1, 1)), 4), r"indices.dtype='float64' is invalid"),
}


def test_nan_cases_cover_every_public_metric():
    covered = {name.split("(")[0] for name in NAN_CASES}
    assert covered == {name for name in metrics.__all__ if callable(getattr(metrics, name)) and name != "CodeUsage"}


@pytest.mark.parametrize("case", sorted(NAN_CASES))
def test_every_metric_given_nan_raises_data_error(case):
    metric, args, field = NAN_CASES[case]
    with pytest.raises(DataError, match=field):
        metric(*args)


def test_statistics_run_with_one_blas_thread_and_restore_it(monkeypatch):
    """FD, Gaussian statistics and precision/recall limit the BLAS to one thread while they run
    (benchmarks/fd_threads.py: faster on a busy CPU) and give the threads back afterwards."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    # The suite itself runs with one BLAS thread (tests/conftest.py): give it two, so that the
    # limit is the functions' own.
    limits = threadpool_limits(limits=2, user_api="blas")
    try:
        _check_one_thread_inside(blas_threads, monkeypatch)
    finally:
        limits.restore_original_limits()


def _check_one_thread_inside(blas_threads, monkeypatch):
    before = blas_threads()
    assert before and all(n == 2 for n in before)
    seen = []
    eigh = np.linalg.eigh

    def spying_eigh(a):
        seen.append(blas_threads())
        return eigh(a)

    monkeypatch.setattr(np.linalg, "eigh", spying_eigh)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(50, 4)) + 1.0
    value = metrics.frechet_distance(a, b)
    assert seen and all(threads == [1] * len(before) for threads in seen)
    assert blas_threads() == before
    # the same number as without the limit, to float64 rounding: a BLAS may split a product over
    # its threads and sum in another order, which moves each of the few dozen operations on these
    # 4 x 4 matrices by an ulp or so (here they were equal)
    unlimited = metrics.frechet_distance_from_stats.__wrapped__(*metrics.gaussian_stats(a), *metrics.gaussian_stats(b))
    np.testing.assert_allclose(value, unlimited, rtol=1e-12)
