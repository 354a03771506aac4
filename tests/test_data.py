"""Tests of the data layer: embedded digits, IDX reader (round trips, faults, fuzz), crop and
resize, attributes, tfds mock.

Run ``python tests/test_data.py`` to regenerate ``jaxrae/_data/digits.npz`` from scikit-learn.
"""

from __future__ import annotations

import gzip
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxrae.data import (
    DEBIAN_FASHION_MNIST_DIR,
    IDX_FILES,
    Dataset,
    area_resize,
    center_crop,
    fingerprint,
    load_data,
    make_dataset,
    preprocess_images,
    read_idx,
)
from jaxrae.errors import ConfigError, DataError

REPO = pathlib.Path(__file__).resolve().parents[1]
DIGITS_NPZ = REPO / "jaxrae" / "_data" / "digits.npz"

#: Examples per hypothesis fuzz test of read_idx, and the number of such tests: the docs cite
#: FUZZ_CASES (= FUZZ_EXAMPLES_PER_TEST * FUZZ_TESTS) as the fuzz cases run on every test run.
FUZZ_EXAMPLES_PER_TEST = 300
FUZZ_TESTS = 3
FUZZ_CASES = FUZZ_EXAMPLES_PER_TEST * FUZZ_TESTS
#: Per-example deadline: a parse of a < 1 KiB input taking longer than this counts as a hang.
FUZZ_DEADLINE_MS = 1000


# --------------------------------------------------------------------------------------------
# The embedded digits file


def write_digits_npz(path: str | pathlib.Path = DIGITS_NPZ, seed: int = 0) -> dict[str, np.ndarray]:
    """Build ``digits.npz`` from ``sklearn.datasets.load_digits`` (Alpaydin & Kaynak, UCI).

    Pixel values 0..16 become uint8 ``rint(v * 255 / 16)``; images are (N, 8, 8, 1). The split is
    stratified: within each class a seeded permutation sends round(20%) to test; then each split
    is permuted so that its first n images mix the classes. The indices into sklearn's order are
    stored too, for provenance.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images.astype(np.float64) * 255.0 / 16.0).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(0.2 * len(idx))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    arrays = {
        "train_images": images[train_idx],
        "train_labels": labels[train_idx],
        "test_images": images[test_idx],
        "test_labels": labels[test_idx],
        "train_index": train_idx.astype(np.int32),
        "test_index": test_idx.astype(np.int32),
    }
    if path is not None:
        np.savez_compressed(path, **arrays)
    return arrays


def test_digits_shapes_dtypes_and_range():
    ds = load_data("digits")
    assert isinstance(ds, Dataset)
    assert ds.name == "digits"
    assert ds.n_train + ds.n_test == 1797
    assert 0.19 < ds.n_test / 1797 < 0.21
    assert ds.train_images_u8.shape == (ds.n_train, 8, 8, 1)
    assert ds.test_images_u8.shape == (ds.n_test, 8, 8, 1)
    assert ds.image_shape == (8, 8, 1)
    assert ds.train_images_u8.dtype == np.uint8 and ds.test_images_u8.dtype == np.uint8
    assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
    assert ds.train_images_u8.max() == 255 and ds.train_images_u8.min() == 0
    x = ds.train_images
    assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    # every class present in both splits, in proportion (stratified split)
    assert set(np.unique(ds.train_labels)) == set(range(10)) == set(np.unique(ds.test_labels))
    assert ds.n_classes == 10
    train_counts = np.bincount(ds.train_labels, minlength=10)
    test_counts = np.bincount(ds.test_labels, minlength=10)
    assert np.all(np.abs(test_counts / (train_counts + test_counts) - 0.2) < 0.01)
    # pixel values come from 17 gray levels: each is rint(v * 255 / 16) for an integer v
    levels = np.rint(np.arange(17) * 255.0 / 16.0).astype(np.uint8)
    assert set(np.unique(ds.train_images_u8)) <= set(levels)


def test_digits_deterministic_and_fingerprint_stable():
    a, b = load_data("digits"), load_data("digits")
    for f in ("train_images_u8", "train_labels", "test_images_u8", "test_labels"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 64 and int(a.fingerprint, 16) >= 0
    # The fingerprint of the shipped content, pinned: a change to digits.npz must be deliberate.
    assert a.fingerprint == DIGITS_FINGERPRINT


DIGITS_FINGERPRINT = "7f64c272e2b6f9bdc7381c9cb3533fbae4ee055f104fd29c21930547952cf6ec"


def test_digits_subset_keeps_first_n():
    full = load_data("digits")
    small = load_data("digits", n_train=100, n_test=20)
    np.testing.assert_array_equal(small.train_images_u8, full.train_images_u8[:100])
    np.testing.assert_array_equal(small.test_labels, full.test_labels[:20])
    assert small.fingerprint != full.fingerprint
    assert small.fingerprint == load_data("digits", n_train=100, n_test=20).fingerprint
    # the shuffled split puts several classes into even a small prefix
    assert len(np.unique(small.train_labels)) == 10


@pytest.mark.parametrize("kw", [{"n_train": 0}, {"n_test": -1}, {"n_train": 1.5}, {"n_train": 10**6}])
def test_bad_subset_is_config_error(kw):
    with pytest.raises(ConfigError, match="n_t"):
        load_data("digits", **kw)


def test_digits_loads_without_sklearn_or_tfds():
    code = (
        "import sys; from jaxrae.data import load_data; ds = load_data('digits'); "
        "bad = [m for m in ('sklearn', 'tensorflow_datasets', 'tensorflow') if m in sys.modules]; "
        "assert not bad, bad; print(ds.n_train)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr


def test_digits_npz_regenerates_identically(tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn regenerates digits.npz (test extra)")
    fresh = write_digits_npz(tmp_path / "digits.npz")
    with np.load(DIGITS_NPZ, allow_pickle=False) as shipped:
        assert sorted(shipped.files) == sorted(fresh)
        for k, v in fresh.items():
            np.testing.assert_array_equal(shipped[k], v, err_msg=k)


@pytest.mark.parametrize("spec", ["", "digit", "idx:", "tfds:", "cifar", "DIGITS"])
def test_unknown_spec_is_config_error(spec):
    with pytest.raises(ConfigError, match="idx:<dir>"):
        load_data(spec)


# --------------------------------------------------------------------------------------------
# IDX round trips

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(a: np.ndarray) -> bytes:
    """Serialize an array as IDX (big-endian), independently of the reader under test."""
    a = np.asarray(a)
    code = _CODES[a.dtype.type]
    header = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx(path: pathlib.Path, a: np.ndarray, gz: bool) -> pathlib.Path:
    data = idx_bytes(a)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def write_idx_dir(d: pathlib.Path, ds_arrays, gz: bool) -> pathlib.Path:
    d.mkdir(parents=True, exist_ok=True)
    for key, a in zip(("train_images", "train_labels", "test_images", "test_labels"), ds_arrays):
        write_idx(d / (IDX_FILES[key] + (".gz" if gz else "")), a, gz)
    return d


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", list(_CODES))
def test_read_idx_round_trip(tmp_path, dtype, gz):
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(3, 5, 4)) * 50).astype(dtype)
    # the name says nothing about compression: gzip is detected from the bytes
    p = write_idx(tmp_path / "x.idx", a, gz)
    b = read_idx(p)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    np.testing.assert_array_equal(a, b)


def test_read_idx_gzip_under_plain_name(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "train-labels-idx1-ubyte", a, gz=True)), a)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "plain.gz", a, gz=False)), a)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dir_round_trip_equals_digits(tmp_path, gz):
    ds = load_data("digits")
    arrays = (
        ds.train_images_u8[..., 0],
        ds.train_labels.astype(np.uint8),
        ds.test_images_u8[..., 0],
        ds.test_labels.astype(np.uint8),
    )
    d = write_idx_dir(tmp_path / "digits_idx", arrays, gz)
    back = load_data(f"idx:{d}")
    assert back.name == f"idx:{d}"
    for f in ("train_images_u8", "train_labels", "test_images_u8", "test_labels"):
        np.testing.assert_array_equal(getattr(back, f), getattr(ds, f))
    # same content from another source and path -> same fingerprint
    assert back.fingerprint == ds.fingerprint


def test_idx_float_images_scaled_and_checked(tmp_path):
    x = np.linspace(0, 1, 2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    y = np.array([0, 1], np.uint8)
    d = write_idx_dir(tmp_path / "f", (x, y, x, y), gz=False)
    ds = load_data(f"idx:{d}")
    np.testing.assert_array_equal(ds.train_images_u8[..., 0], np.rint(x.astype(np.float64) * 255).astype(np.uint8))
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    write_idx(d / IDX_FILES["train_images"], bad, gz=False)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*NaN"):
        load_data(f"idx:{d}")
    bad[0, 0, 0] = 1.5
    write_idx(d / IDX_FILES["train_images"], bad, gz=False)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*\[0, 1\]"):
        load_data(f"idx:{d}")


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Debian package dataset-fashion-mnist is not installed ({DEBIAN_FASHION_MNIST_DIR} absent); "
    "`apt-get install dataset-fashion-mnist` to run this test",
)
def test_real_fashion_mnist():
    ds = load_data("fashion_mnist")
    assert ds.name == "fashion_mnist"
    assert ds.train_images_u8.shape == (60000, 28, 28, 1)
    assert ds.test_images_u8.shape == (10000, 28, 28, 1)
    assert ds.train_images_u8.dtype == np.uint8
    # Xiao et al. 2017: 10 balanced classes, 6,000 train and 1,000 test images each
    np.testing.assert_array_equal(np.bincount(ds.train_labels), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(ds.test_labels), np.full(10, 1000))
    assert ds.train_images_u8.max() == 255
    via_idx = load_data(f"idx:{DEBIAN_FASHION_MNIST_DIR}", n_train=500, n_test=100)
    np.testing.assert_array_equal(via_idx.train_images_u8, ds.train_images_u8[:500])


# --------------------------------------------------------------------------------------------
# Faults: each one a DataError whose message names the file


@pytest.fixture
def small_idx_dir(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(6, 4, 4), dtype=np.uint8)
    y = rng.integers(0, 10, size=6).astype(np.uint8)
    return write_idx_dir(tmp_path / "small", (x, y, x[:3], y[:3]), gz=False)


def test_small_idx_dir_loads(small_idx_dir):
    ds = load_data(f"idx:{small_idx_dir}")
    assert (ds.n_train, ds.n_test, ds.image_shape) == (6, 3, (4, 4, 1))


def test_missing_dir(tmp_path):
    with pytest.raises(DataError, match="nowhere.*not found"):
        load_data(f"idx:{tmp_path / 'nowhere'}")


def test_missing_file(small_idx_dir):
    (small_idx_dir / IDX_FILES["test_labels"]).unlink()
    with pytest.raises(DataError, match="missing IDX file t10k-labels-idx1-ubyte"):
        load_data(f"idx:{small_idx_dir}")


def test_read_idx_missing_and_directory(tmp_path):
    with pytest.raises(DataError, match="absent.idx.*not found"):
        read_idx(tmp_path / "absent.idx")
    with pytest.raises(DataError, match="directory"):
        read_idx(tmp_path)


def test_wrong_magic(small_idx_dir):
    p = small_idx_dir / IDX_FILES["train_images"]
    data = bytearray(p.read_bytes())
    data[0] = 0x12
    p.write_bytes(bytes(data))
    with pytest.raises(
        DataError, match="train-images-idx3-ubyte magic number='12 00 08 03' is invalid: an IDX file starts with 00 00"
    ):
        load_data(f"idx:{small_idx_dir}")


def test_unknown_dtype_code(tmp_path):
    p = tmp_path / "odd.idx"
    p.write_bytes(bytes([0, 0, 0x0A, 1]) + struct.pack(">I", 2) + b"ab")
    with pytest.raises(DataError, match="odd.idx dtype code='0x0A' is invalid: unknown IDX dtype code"):
        read_idx(p)


@pytest.mark.parametrize("ndim", [0, 5, 255])
def test_bad_ndim(tmp_path, ndim):
    p = tmp_path / "dims.idx"
    p.write_bytes(bytes([0, 0, 0x08, ndim]) + b"\x00\x00\x00\x01" * ndim + b"x")
    with pytest.raises(
        DataError, match=f"dims.idx dimensions={ndim} is invalid: an IDX file declares 1 to 4 dimensions"
    ):
        read_idx(p)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated(small_idx_dir, gz):
    p = small_idx_dir / IDX_FILES["train_images"]
    data = p.read_bytes()[:-5]
    if gz:
        p.unlink()
        p = p.with_name(p.name + ".gz")
        data = gzip.compress(data, mtime=0)
    p.write_bytes(data)
    with pytest.raises(DataError, match=f"{p.name} .* is invalid: truncated"):
        load_data(f"idx:{small_idx_dir}")


@pytest.mark.parametrize("gz", [False, True])
def test_trailing_bytes(tmp_path, gz):
    data = idx_bytes(np.zeros(4, np.uint8)) + b"\x00"
    p = tmp_path / "trail.idx"
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match="trail.idx payload bytes=.* is invalid: .*trailing bytes"):
        read_idx(p)


@pytest.mark.parametrize("gz", [False, True])
def test_huge_declared_dims_fail_fast_without_allocating(tmp_path, gz):
    # 4 GiB^3 of float64 declared over 10 bytes of payload: must be a DataError, not MemoryError.
    data = bytes([0, 0, 0x0E, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1) + b"0123456789"
    p = tmp_path / "huge.idx"
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match="huge.idx .* is invalid: truncated"):
        read_idx(p)


def test_corrupt_gzip(small_idx_dir):
    p = small_idx_dir / IDX_FILES["train_labels"]
    gz = bytearray(gzip.compress(p.read_bytes(), mtime=0))
    gz[12] ^= 0xFF  # inside the deflate stream
    gz[-6] ^= 0xFF  # and the CRC, so the damage cannot pass unnoticed
    p.unlink()
    q = p.with_name(p.name + ".gz")
    q.write_bytes(bytes(gz))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz .* is invalid: (corrupt|truncated|trailing)"):
        load_data(f"idx:{small_idx_dir}")


def test_gzip_crc_mismatch(tmp_path):
    gz = bytearray(gzip.compress(idx_bytes(np.arange(10, dtype=np.uint8)), mtime=0))
    gz[-8] ^= 0x01  # the CRC32 in the gzip trailer only
    p = tmp_path / "crc.idx.gz"
    p.write_bytes(bytes(gz))
    with pytest.raises(DataError, match="crc.idx.gz stream='CRC check failed .* is invalid: corrupt gzipped IDX file"):
        read_idx(p)


def test_count_mismatch(small_idx_dir):
    write_idx(small_idx_dir / IDX_FILES["train_labels"], np.zeros(5, np.uint8), gz=False)
    with pytest.raises(
        DataError, match="train-labels-idx1-ubyte labels=5 is invalid: .*train-images-idx3-ubyte has 6 images"
    ):
        load_data(f"idx:{small_idx_dir}")


def test_labels_out_of_range(small_idx_dir):
    write_idx(small_idx_dir / IDX_FILES["test_labels"], np.array([0, 1, -3], np.int8), gz=False)
    with pytest.raises(
        DataError, match=r"t10k-labels-idx1-ubyte labels range=\(.*\) is invalid: must lie in \[0, 1000\)"
    ):
        load_data(f"idx:{small_idx_dir}")


def test_labels_must_be_integers_and_1d(small_idx_dir):
    write_idx(small_idx_dir / IDX_FILES["test_labels"], np.zeros(3, np.float32), gz=False)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte labels dtype='float.*' is invalid: must be integers"):
        load_data(f"idx:{small_idx_dir}")
    write_idx(small_idx_dir / IDX_FILES["test_labels"], np.zeros((3, 1), np.uint8), gz=False)
    with pytest.raises(
        DataError, match=r"t10k-labels-idx1-ubyte shape=\(.*\) is invalid: labels must have 1 dimension"
    ):
        load_data(f"idx:{small_idx_dir}")


def test_int_images_out_of_range(small_idx_dir):
    write_idx(small_idx_dir / IDX_FILES["test_images"], np.full((3, 4, 4), 300, np.int16), gz=False)
    with pytest.raises(
        DataError, match=r"t10k-images-idx3-ubyte images range=\(.*\) is invalid: values must lie in \[0, 255\]"
    ):
        load_data(f"idx:{small_idx_dir}")


def test_train_test_shape_mismatch(small_idx_dir):
    write_idx(small_idx_dir / IDX_FILES["test_images"], np.zeros((3, 5, 5), np.uint8), gz=False)
    with pytest.raises(DataError, match="train images are"):
        load_data(f"idx:{small_idx_dir}")


def test_fingerprint_depends_only_on_content():
    a = np.zeros((2, 3, 3, 1), np.uint8)
    y = np.zeros(2, np.int32)
    f = fingerprint(a, y, a, y)
    assert f == make_dataset("one", a, y, a, y).fingerprint == make_dataset("two", a, y, a, y).fingerprint
    assert f != fingerprint(a.reshape(2, 9, 1, 1), y, a, y)  # same bytes, other shape
    assert f != fingerprint(a, y.astype(np.int64), a, y)  # same values, other dtype
    b = a.copy()
    b[1, 2, 2, 0] = 1
    assert f != fingerprint(b, y, a, y)


# --------------------------------------------------------------------------------------------
# Fuzz: arbitrary bytes give a DataError or a valid array, never another exception or a hang


def _check_read(tmp_path: pathlib.Path, data: bytes) -> None:
    p = tmp_path / "fuzz.bin"
    p.write_bytes(data)
    try:
        a = read_idx(p)
    except DataError as e:
        assert "fuzz.bin" in str(e)
        return
    assert isinstance(a, np.ndarray) and a.dtype.isnative and 1 <= a.ndim <= 4


_FUZZ = settings(
    max_examples=FUZZ_EXAMPLES_PER_TEST,
    deadline=FUZZ_DEADLINE_MS,
    database=None,  # no .hypothesis directory written by the test run
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

_VALID = idx_bytes(np.arange(2 * 3 * 2, dtype=np.int16).reshape(2, 3, 2))

# an edit: (position fraction, replacement byte) ; truncation / extension at the end
_edits = st.lists(st.tuples(st.floats(0, 1, allow_nan=False, exclude_max=True), st.integers(0, 255)), max_size=4)


# half the time keep the full length, so edits alone (not only truncation) reach the parser
_cuts = st.one_of(st.just(1.0), st.floats(0, 1))


def _mutate(base: bytes, edits, cut: float, tail: bytes) -> bytes:
    b = bytearray(base)
    for where, value in edits:
        b[int(where * len(b))] = value
    return bytes(b[: int(cut * len(b))]) + tail


@_FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=64),
        st.binary(min_size=2, max_size=256).map(lambda b: b"\x00\x00" + b),
        st.binary(max_size=256).map(lambda b: b"\x1f\x8b" + b),
    )
)
def test_fuzz_random_bytes(tmp_path, data):
    _check_read(tmp_path, data)


@_FUZZ
@given(edits=_edits, cut=_cuts, tail=st.binary(max_size=8))
def test_fuzz_mutated_plain_idx(tmp_path, edits, cut, tail):
    _check_read(tmp_path, _mutate(_VALID, edits, cut, tail))


@_FUZZ
@given(edits=_edits, cut=_cuts, tail=st.binary(max_size=8), compress_first=st.booleans())
def test_fuzz_mutated_gzip_idx(tmp_path, edits, cut, tail, compress_first):
    if compress_first:  # damage the compressed bytes (headers, deflate blocks, CRC, length)
        data = _mutate(gzip.compress(_VALID, mtime=0), edits, cut, tail)
    else:  # a well-formed gzip stream around a damaged IDX file
        data = gzip.compress(_mutate(_VALID, edits, cut, tail), mtime=0)
    _check_read(tmp_path, data)


# --------------------------------------------------------------------------------------------
# Preprocessing: centre crop and area resize


def reference_area_resize(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area average by supersampling: repeat each pixel out_h x out_w times, then the (H, W) block
    means are exactly the footprint means; rounded half up. Independent of jaxrae's matrices."""
    n, h, w, c = x.shape
    big = np.repeat(np.repeat(x.astype(np.float64), out_h, axis=1), out_w, axis=2)
    means = big.reshape(n, out_h, h, out_w, w, c).mean(axis=(2, 4))
    return np.floor(means + 0.5).astype(np.uint8)


def test_area_resize_by_two_gives_block_means_rounded_half_up():
    x = np.array([[0, 1, 10, 20], [4, 5, 30, 41], [255, 255, 7, 7], [255, 254, 7, 8]], np.uint8)
    # block means 2.5, 25.25 / 254.75, 7.25 -> 3, 25 / 255, 7 (2.5 rounds up, not to even)
    expected = np.array([[3, 25], [255, 7]], np.uint8)
    got = area_resize(x[None, :, :, None], 2)
    assert got.dtype == np.uint8 and got.shape == (1, 2, 2, 1)
    np.testing.assert_array_equal(got[0, :, :, 0], expected)


def test_area_resize_fractional_footprints_by_hand():
    # 3 -> 2 pixels: footprints [0, 1.5) and [1.5, 3), so per axis y0 = (2 a + b) / 3, y1 = (b + 2 c) / 3.
    x = np.array([[30, 60, 90], [0, 0, 0], [90, 60, 30]], np.uint8)[None, :, :, None]
    # rows first: (2 [30 60 90] + 0) / 3 = [20 40 60] and (0 + 2 [90 60 30]) / 3 = [60 40 20];
    # then columns: [(40 + 40) / 3, (40 + 120) / 3] = [26.67, 53.33] and [53.33, 26.67].
    np.testing.assert_array_equal(area_resize(x, 2)[0, :, :, 0], [[27, 53], [53, 27]])
    # 2 -> 3 (upsampling): footprints [0, 2/3), [2/3, 4/3), [4/3, 2): y = [a, (a + b) / 2, b]
    np.testing.assert_array_equal(area_resize(np.array([[[[10], [21]]]], np.uint8), (1, 3))[0, 0, :, 0], [10, 16, 21])


def test_area_resize_constant_blocks_and_reference():
    # A constant image stays constant at any size; an image of constant 4x4 blocks halved by 4.
    blocks = np.array([[0, 255], [17, 100]], np.uint8)
    x = np.kron(blocks, np.ones((4, 4), np.uint8))[None, :, :, None].repeat(3, axis=3)
    np.testing.assert_array_equal(area_resize(x, 2)[0, :, :, 1], blocks)
    np.testing.assert_array_equal(area_resize(np.full((2, 140, 140, 3), 77, np.uint8), 64), 77)
    rng = np.random.default_rng(0)
    for (h, w), (oh, ow) in [((7, 5), (3, 4)), ((35, 35), (16, 16)), ((9, 6), (9, 12)), ((5, 5), (5, 5))]:
        x = rng.integers(0, 256, size=(2, h, w, 3), dtype=np.uint8)
        np.testing.assert_array_equal(
            area_resize(x, (oh, ow)), reference_area_resize(x, oh, ow), err_msg=f"{h}x{w}->{oh}x{ow}"
        )


def test_center_crop_is_the_wae_celeba_window():
    # CelebA 218x178, crop 140: PIL box ((178-140)/2, (218-140)/2, ...) = rows 39..178, cols 19..158.
    rows, cols = np.meshgrid(np.arange(218), np.arange(178), indexing="ij")
    x = np.stack([rows, cols, rows], axis=-1).astype(np.uint8)[None]
    out = center_crop(x, 140)
    assert out.shape == (1, 140, 140, 3)
    assert (out[0, 0, 0, 0], out[0, -1, 0, 0], out[0, 0, 0, 1], out[0, 0, -1, 1]) == (39, 178, 19, 158)
    assert center_crop(x, (100, 50)).shape == (1, 100, 50, 3)


def test_preprocess_images_in_chunks_equals_one_pass(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(11, 12, 10, 3), dtype=np.uint8)
    whole = area_resize(center_crop(x, 8), 3)
    monkeypatch.setattr("jaxrae.data.preprocess._PREPROCESS_CHUNK_BYTES", 8 * 12 * 10 * 3 * 4)  # 4 images a chunk
    out = preprocess_images(x, crop=8, image_size=3)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, whole)
    assert preprocess_images(x) is x  # nothing asked, nothing done


def test_load_data_crop_and_resize_digits():
    raw = load_data("digits", n_train=50, n_test=20)
    ds = load_data("digits", n_train=50, n_test=20, crop=6, image_size=3)
    assert ds.name == "digits@crop=6,image_size=3" and ds.image_shape == (3, 3, 1)
    np.testing.assert_array_equal(ds.train_images_u8, area_resize(raw.train_images_u8[:, 1:7, 1:7], 3))
    np.testing.assert_array_equal(ds.test_labels, raw.test_labels)
    # the spec suffix is the same request, and the name is a spec that loads the same data
    same = load_data("digits@crop=6,image_size=3", n_train=50, n_test=20)
    assert same.fingerprint == ds.fingerprint == load_data(ds.name, n_train=50, n_test=20).fingerprint
    # other preprocessing -> other content -> other fingerprint (feature nets, checkpoints, results)
    prints = {raw.fingerprint, ds.fingerprint}
    for kw in ({"crop": 6}, {"image_size": 3}, {"crop": 8, "image_size": 4}, {"crop": (6, 4), "image_size": 3}):
        other = load_data("digits", n_train=50, n_test=20, **kw)
        prints.add(other.fingerprint)
    assert len(prints) == 6
    assert load_data("digits@image_size=4x2", n_train=5, n_test=5).image_shape == (4, 2, 1)


@pytest.mark.parametrize(
    "spec, kw, error, match",
    [
        (
            "digits",
            {"crop": 9},
            DataError,
            r"crop=9 is invalid: larger than the 8x8 images of digits@crop=9; .*at most 8x8",
        ),
        ("digits", {"crop": (4, 20)}, DataError, r"crop=\(4, 20\) is invalid: larger than the 8x8 images"),
        ("digits", {"crop": 0}, ConfigError, "crop=0 is invalid: must be a positive integer"),
        ("digits", {"image_size": True}, ConfigError, "image_size=True is invalid"),
        ("digits", {"image_size": (3, 4, 5)}, ConfigError, "image_size=.* is invalid"),
        ("digits@crop=abc", {}, ConfigError, "crop='abc' is invalid"),
        ("digits@size=4", {}, ConfigError, r"cannot read 'size=4'.*keys: crop, image_size"),
        ("digits@crop=4,crop=5", {}, ConfigError, "crop is given twice"),
        ("digits@crop=4", {"crop": 4}, ConfigError, "crop is given twice.*keep one"),
    ],
)
def test_preprocessing_errors(spec, kw, error, match):
    with pytest.raises(error, match=match):
        load_data(spec, n_train=5, n_test=5, **kw)


def test_huge_image_size_is_refused_before_any_allocation(monkeypatch):
    # @image_size=100000 used to build a 37 GiB float temporary resizing the first image.
    from jaxrae.data.preprocess import MAX_IMAGE_SIDE, Preprocess

    def no_resize(*args, **kwargs):
        raise AssertionError("resized although the size is refused")

    monkeypatch.setattr(Preprocess, "apply", no_resize)
    bound = rf"at most {MAX_IMAGE_SIDE} pixels per side"
    with pytest.raises(ConfigError, match=rf"^image_size='100000' is invalid: {bound}"):
        load_data("digits@image_size=100000", n_train=5, n_test=5)
    with pytest.raises(ConfigError, match=rf"^image_size=\(64, 100000\) is invalid: {bound}"):
        load_data("digits", n_train=5, n_test=5, image_size=(64, 100000))
    with pytest.raises(ConfigError, match=rf"^image_size=1025 is invalid: {bound}"):
        area_resize(np.zeros((1, 8, 8, 1), np.uint8), MAX_IMAGE_SIDE + 1)
    with pytest.raises(ConfigError, match=rf"^image_size='2000x8' is invalid: {bound}"):
        load_data("tfds:mnist@image_size=2000x8")  # before tensorflow-datasets is even imported


def test_upsampling_chunks_are_sized_by_the_output(monkeypatch):
    from jaxrae.data.preprocess import Preprocess

    chunks = []
    apply = Preprocess.apply
    monkeypatch.setattr(
        Preprocess, "apply", lambda self, images, source: chunks.append(len(images)) or apply(self, images, source)
    )
    monkeypatch.setattr("jaxrae.data.preprocess._PREPROCESS_CHUNK_BYTES", 8 * 16 * 16 * 4)  # 4 output images
    x = np.random.default_rng(2).integers(0, 256, size=(10, 8, 8, 1), dtype=np.uint8)
    out = preprocess_images(x, image_size=16)
    np.testing.assert_array_equal(out, area_resize(x, 16))
    assert chunks == [1, 4, 4, 2]  # the probe image, then chunks of 4 (16 by the input's size)


def test_preprocessing_functions_check_their_input():
    with pytest.raises(DataError, match="expected uint8 images of shape"):
        area_resize(np.zeros((2, 4, 4, 1), np.float32), 2)
    with pytest.raises(DataError, match="expected uint8 images of shape"):
        center_crop(np.zeros((4, 4), np.uint8), 2)
    with pytest.raises(DataError, match="crop=5 is invalid: larger than the 4x4 images of mine"):
        preprocess_images(np.zeros((2, 4, 4, 1), np.uint8), crop=5, source="mine")


def test_at_sign_without_options_stays_part_of_an_idx_path(tmp_path):
    x = np.zeros((2, 4, 4), np.uint8)
    y = np.zeros(2, np.uint8)
    d = write_idx_dir(tmp_path / "a@b", (x, y, x, y), gz=False)
    assert load_data(f"idx:{d}").name == f"idx:{d}"
    assert load_data(f"idx:{d}@image_size=2").image_shape == (2, 2, 1)


# --------------------------------------------------------------------------------------------
# Attributes


def test_make_dataset_attributes_and_fingerprint():
    x = np.zeros((4, 2, 2, 1), np.uint8)
    y = np.zeros(4, np.int32)
    attrs = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]], bool)
    plain = make_dataset("p", x, y, x, y)
    ds = make_dataset(
        "a", x, y, x, y, train_attributes=attrs, test_attributes=attrs[::-1], attribute_names=["u", "v", "w"]
    )
    assert plain.train_attributes is None and plain.n_attributes == 0 and plain.attribute_names == ()
    assert ds.train_attributes.dtype == np.uint8 and ds.n_attributes == 3 and ds.attribute_names == ("u", "v", "w")
    assert ds.fingerprint != plain.fingerprint  # attributes are content
    assert plain.fingerprint == fingerprint(x, y, x, y)  # data sets without attributes keep their digest
    flipped = make_dataset("a", x, y, x, y, train_attributes=attrs, test_attributes=attrs)
    assert flipped.fingerprint != ds.fingerprint
    assert flipped.attribute_names == ("attribute_0", "attribute_1", "attribute_2")
    with pytest.raises(DataError, match="one split only"):
        make_dataset("a", x, y, x, y, train_attributes=attrs)
    with pytest.raises(DataError, match="must be 0 or 1"):
        make_dataset("a", x, y, x, y, train_attributes=attrs * 2, test_attributes=attrs)
    with pytest.raises(DataError, match=r"shape \(4, n_attributes\)"):
        make_dataset("a", x, y, x, y, train_attributes=attrs[:3], test_attributes=attrs)
    with pytest.raises(DataError, match="3 distinct names"):
        make_dataset("a", x, y, x, y, train_attributes=attrs, test_attributes=attrs, attribute_names=["u", "u", "w"])


# --------------------------------------------------------------------------------------------
# tensorflow-datasets, offline


def test_tfds_mock_mnist_without_tensorflow():
    tfds = pytest.importorskip("tensorflow_datasets", reason="tfds:<name> is the optional extra jaxrae[tfds]")
    # tfds.data_source (ArrayRecord, numpy only) is mocked without TensorFlow; tfds.load is not.
    with tfds.testing.mock_data(num_examples=7):
        ds = load_data("tfds:mnist")
        small = load_data("mnist", n_train=3, n_test=2)
    assert ds.name == "tfds:mnist" and small.name == "mnist"
    assert ds.train_images_u8.shape == (7, 28, 28, 1) and ds.test_images_u8.shape == (7, 28, 28, 1)
    assert ds.train_images_u8.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    assert ds.train_labels.min() >= 0 and ds.train_labels.max() < 10
    assert small.n_train == 3 and small.n_test == 2


def test_tfds_mock_celeb_a_crop_resize_and_attributes(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets", reason="tfds:<name> is the optional extra jaxrae[tfds]")
    monkeypatch.setattr("jaxrae.data.tfds.TFDS_READ_CHUNK", 2)  # 5 examples -> chunks of 2, 2, 1
    with tfds.testing.mock_data(num_examples=5):
        raw = load_data("tfds:celeb_a")
        ds = load_data("tfds:celeb_a@crop=140,image_size=64", n_train=3)
        same = load_data("tfds:celeb_a", n_train=3, crop=140, image_size=64)
    assert raw.image_shape == (218, 178, 3) and ds.image_shape == (64, 64, 3)
    assert ds.name == "tfds:celeb_a@crop=140,image_size=64" and (ds.n_train, ds.n_test) == (3, 5)
    # read in chunks, preprocessed while reading: the same bytes as preprocessing the whole split
    np.testing.assert_array_equal(
        ds.train_images_u8, preprocess_images(raw.train_images_u8[:3], crop=140, image_size=64)
    )
    np.testing.assert_array_equal(ds.test_images_u8, area_resize(center_crop(raw.test_images_u8, 140), 64))
    # celeb_a: no class label (all 0), 40 binary attributes kept in a fixed (sorted) order
    assert ds.n_classes == 1 and ds.n_attributes == 40 and ds.train_attributes.shape == (3, 40)
    assert ds.attribute_names[0] == "5_o_Clock_Shadow" and list(ds.attribute_names) == sorted(ds.attribute_names)
    np.testing.assert_array_equal(ds.train_attributes, raw.train_attributes[:3])
    assert set(np.unique(raw.train_attributes)) <= {0, 1}
    assert same.fingerprint == ds.fingerprint != raw.fingerprint


def test_tfds_subset_larger_than_split_and_crop_too_large():
    tfds = pytest.importorskip("tensorflow_datasets", reason="tfds:<name> is the optional extra jaxrae[tfds]")
    with tfds.testing.mock_data(num_examples=3):
        with pytest.raises(ConfigError, match="n_test=4 is invalid: tfds:mnist has only 3 images"):
            load_data("tfds:mnist", n_test=4)
        with pytest.raises(DataError, match=r"crop=30 is invalid: larger than the 28x28 images of tfds:mnist@crop=30"):
            load_data("tfds:mnist@crop=30")


def test_fashion_mnist_falls_back_to_tfds(monkeypatch, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets", reason="tfds:<name> is the optional extra jaxrae[tfds]")
    monkeypatch.setattr("jaxrae.data.spec.DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    with tfds.testing.mock_data(num_examples=4):
        ds = load_data("fashion_mnist")
    assert ds.name == "fashion_mnist" and ds.train_images_u8.shape == (4, 28, 28, 1)


def test_fashion_mnist_absent_everywhere_names_both_fixes(monkeypatch, tmp_path):
    monkeypatch.setattr("jaxrae.data.spec.DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(
        DataError,
        match=r"^data='fashion_mnist' is invalid: Fashion-MNIST is not installed .*run: apt-get "
        r"install dataset-fashion-mnist .*fallback failed too: needs tensorflow-datasets, which is not "
        r"installed; run: pip install 'jaxrae\[tfds\]'$",
    ):
        load_data("fashion_mnist")


def test_tfds_unknown_name_is_one_line_naming_close_names_not_tensorflow():
    pytest.importorskip("tensorflow_datasets", reason="tfds:<name> is the optional extra jaxrae[tfds]")
    # tfds' own message lists every registered data set (~260 lines); jaxrae used to pass it on
    # and blame the missing TensorFlow.
    with pytest.raises(DataError) as caught:
        load_data("tfds:minst")
    message = str(caught.value)
    assert "\n" not in message and "TensorFlow" not in message
    assert message.startswith(
        "data='tfds:minst' is invalid: tensorflow-datasets has no data set named 'minst' (did you mean mnist"
    )
    assert "tfds.list_builders()" in message


def test_tfds_unknown_name_through_the_cli_is_one_line_exit_2(tmp_path):
    pytest.importorskip("tensorflow_datasets", reason="tfds:<name> is the optional extra jaxrae[tfds]")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxrae.cli",
            "compare",
            "--data",
            "tfds:minst",
            "--out",
            str(tmp_path / "out"),
            "--methods",
            "ae",
            "--seeds",
            "1",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "has no data set named 'minst' (did you mean mnist" in done.stderr


def _tfds_raising(monkeypatch, error):
    """tensorflow-datasets whose data_source raises ``error``, with TensorFlow absent."""
    tfds = pytest.importorskip("tensorflow_datasets", reason="tfds:<name> is the optional extra jaxrae[tfds]")

    def data_source(*args, **kwargs):
        raise error

    monkeypatch.setattr(tfds, "data_source", data_source)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes the import fail


@pytest.mark.parametrize(
    "error, match",
    [
        # a module tfds needs to prepare the data set: name it and the pip command, not TensorFlow
        (
            ModuleNotFoundError("No module named 'importlib_resources'", name="importlib_resources"),
            r"needs the Python module 'importlib_resources' to read it, which is not installed; run: pip install importlib_resources$",
        ),
        (ModuleNotFoundError("No module named 'PIL'", name="PIL"), r"module 'PIL' .* run: pip install pillow$"),
        # TFRecord-prepared data: TensorFlow is what is missing
        (
            NotImplementedError(
                "Random access data source for file format FileFormat.TFRECORD is not supported.\n\t* more"
            ),
            r"prepared in TFRecord format, which only TensorFlow reads, and TensorFlow is not installed; run: pip install tensorflow$",
        ),
        # anything else (not prepared, no network): the first line of tfds' reason and how to prepare it
        (
            ConnectionError("cannot reach the download server\nline 2\nline 3"),
            (
                r"cannot read it \(ConnectionError: cannot reach the download server\); prepare it first: "
                r"tfds build mnist --file_format=array_record$"
            ),
        ),
    ],
)
def test_tfds_failures_say_what_is_missing_and_the_command(monkeypatch, error, match):
    _tfds_raising(monkeypatch, error)
    with pytest.raises(DataError, match=r"^data='tfds:mnist' is invalid: .*" + match) as caught:
        load_data("tfds:mnist")
    assert "\n" not in str(caught.value)


def test_fashion_mnist_fallback_names_the_missing_module_not_missing_data(monkeypatch, tmp_path):
    monkeypatch.setattr("jaxrae.data.spec.DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    _tfds_raising(monkeypatch, ModuleNotFoundError("No module named 'importlib_resources'", name="importlib_resources"))
    with pytest.raises(
        DataError,
        match=r"fallback failed too: tensorflow-datasets needs the Python module "
        r"'importlib_resources' to read it, which is not installed; run: pip install importlib_resources$",
    ):
        load_data("fashion_mnist")


def test_tfds_missing_is_data_error_naming_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(
        DataError, match=r"needs tensorflow-datasets, which is not installed; run: pip install 'jaxrae\[tfds\]'$"
    ):
        load_data("tfds:mnist")


if __name__ == "__main__":
    out = write_digits_npz(DIGITS_NPZ)
    print(f"wrote {DIGITS_NPZ}: train {out['train_images'].shape}, test {out['test_images'].shape}")
