"""Tests of the data layer: embedded digits, IDX reader (round trips, faults, fuzz), tfds mock.

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
    fingerprint,
    load_data,
    make_dataset,
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
        n_test = int(round(0.2 * len(idx)))
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
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
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
    arrays = (ds.train_images_u8[..., 0], ds.train_labels.astype(np.uint8), ds.test_images_u8[..., 0],
              ds.test_labels.astype(np.uint8))
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
    with pytest.raises(DataError, match="train-images-idx3-ubyte: wrong magic number 12 00 08 03"):
        load_data(f"idx:{small_idx_dir}")


def test_unknown_dtype_code(tmp_path):
    p = tmp_path / "odd.idx"
    p.write_bytes(bytes([0, 0, 0x0A, 1]) + struct.pack(">I", 2) + b"ab")
    with pytest.raises(DataError, match="odd.idx: unknown IDX dtype code 0x0A"):
        read_idx(p)


@pytest.mark.parametrize("ndim", [0, 5, 255])
def test_bad_ndim(tmp_path, ndim):
    p = tmp_path / "dims.idx"
    p.write_bytes(bytes([0, 0, 0x08, ndim]) + b"\x00\x00\x00\x01" * ndim + b"x")
    with pytest.raises(DataError, match=f"dims.idx: IDX file declares {ndim} dimensions"):
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
    with pytest.raises(DataError, match=f"{p.name}: truncated"):
        load_data(f"idx:{small_idx_dir}")


@pytest.mark.parametrize("gz", [False, True])
def test_trailing_bytes(tmp_path, gz):
    data = idx_bytes(np.zeros(4, np.uint8)) + b"\x00"
    p = tmp_path / "trail.idx"
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match="trail.idx: .*trailing bytes"):
        read_idx(p)


@pytest.mark.parametrize("gz", [False, True])
def test_huge_declared_dims_fail_fast_without_allocating(tmp_path, gz):
    # 4 GiB^3 of float64 declared over 10 bytes of payload: must be a DataError, not MemoryError.
    data = bytes([0, 0, 0x0E, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1) + b"0123456789"
    p = tmp_path / "huge.idx"
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match="huge.idx: truncated"):
        read_idx(p)


def test_corrupt_gzip(small_idx_dir):
    p = small_idx_dir / IDX_FILES["train_labels"]
    gz = bytearray(gzip.compress(p.read_bytes(), mtime=0))
    gz[12] ^= 0xFF  # inside the deflate stream
    gz[-6] ^= 0xFF  # and the CRC, so the damage cannot pass unnoticed
    p.unlink()
    q = p.with_name(p.name + ".gz")
    q.write_bytes(bytes(gz))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: (corrupt|truncated|trailing)"):
        load_data(f"idx:{small_idx_dir}")


def test_gzip_crc_mismatch(tmp_path):
    gz = bytearray(gzip.compress(idx_bytes(np.arange(10, dtype=np.uint8)), mtime=0))
    gz[-8] ^= 0x01  # the CRC32 in the gzip trailer only
    p = tmp_path / "crc.idx.gz"
    p.write_bytes(bytes(gz))
    with pytest.raises(DataError, match="crc.idx.gz: corrupt gzipped IDX file"):
        read_idx(p)


def test_count_mismatch(small_idx_dir):
    write_idx(small_idx_dir / IDX_FILES["train_labels"], np.zeros(5, np.uint8), gz=False)
    with pytest.raises(DataError, match="train-images-idx3-ubyte has 6 images but .*train-labels-idx1-ubyte has 5"):
        load_data(f"idx:{small_idx_dir}")


def test_labels_out_of_range(small_idx_dir):
    write_idx(small_idx_dir / IDX_FILES["test_labels"], np.array([0, 1, -3], np.int8), gz=False)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: labels must lie in \[0, 1000\)"):
        load_data(f"idx:{small_idx_dir}")


def test_labels_must_be_integers_and_1d(small_idx_dir):
    write_idx(small_idx_dir / IDX_FILES["test_labels"], np.zeros(3, np.float32), gz=False)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: labels must be integers"):
        load_data(f"idx:{small_idx_dir}")
    write_idx(small_idx_dir / IDX_FILES["test_labels"], np.zeros((3, 1), np.uint8), gz=False)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: labels must have 1 dimension"):
        load_data(f"idx:{small_idx_dir}")


def test_int_images_out_of_range(small_idx_dir):
    write_idx(small_idx_dir / IDX_FILES["test_images"], np.full((3, 4, 4), 300, np.int16), gz=False)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: images values must lie in \[0, 255\]"):
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
@given(data=st.one_of(st.binary(max_size=64), st.binary(min_size=2, max_size=256).map(lambda b: b"\x00\x00" + b),
                      st.binary(max_size=256).map(lambda b: b"\x1f\x8b" + b)))
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


def test_fashion_mnist_falls_back_to_tfds(monkeypatch, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets", reason="tfds:<name> is the optional extra jaxrae[tfds]")
    monkeypatch.setattr("jaxrae.data.DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    with tfds.testing.mock_data(num_examples=4):
        ds = load_data("fashion_mnist")
    assert ds.name == "fashion_mnist" and ds.train_images_u8.shape == (4, 28, 28, 1)


def test_fashion_mnist_absent_everywhere_names_both_fixes(monkeypatch, tmp_path):
    monkeypatch.setattr("jaxrae.data.DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist.*pip install jaxrae\[tfds\]"):
        load_data("fashion_mnist")


def test_tfds_unknown_name_is_data_error():
    pytest.importorskip("tensorflow_datasets", reason="tfds:<name> is the optional extra jaxrae[tfds]")
    with pytest.raises(DataError, match="tfds:no_such_dataset_xyz"):
        load_data("tfds:no_such_dataset_xyz")


def test_tfds_missing_is_data_error_naming_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(DataError, match=r"pip install jaxrae\[tfds\]"):
        load_data("tfds:mnist")


if __name__ == "__main__":
    out = write_digits_npz(DIGITS_NPZ)
    print(f"wrote {DIGITS_NPZ}: train {out['train_images'].shape}, test {out['test_images'].shape}")
