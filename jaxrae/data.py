"""Data sets as uint8 image arrays with labels and a content fingerprint.

Specs understood by :func:`load_data`:

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images), embedded in the package.
- ``fashion_mnist``: Debian's ``dataset-fashion-mnist`` files when installed, else ``tfds:fashion_mnist``.
- ``mnist``: ``tfds:mnist``.
- ``idx:<dir>``: MNIST-family IDX files (``train-images-idx3-ubyte[.gz]`` ...), gzipped or not.
- ``tfds:<name>``: a prepared tensorflow-datasets data set (optional extra ``jaxrae[tfds]``).

Images stay uint8 (N, H, W, C) so that a data set lives on the accelerator once, at a quarter of
the float32 size; the trainer converts each batch to float32 in [0, 1]. Labels are int32.

Sources:

- ``digits``: the "Optical Recognition of Handwritten Digits" data of Alpaydin & Kaynak (UCI
  Machine Learning Repository, 1998), as packaged by ``sklearn.datasets.load_digits``: 1,797
  images of 8x8 pixels with 17 gray levels (0..16). ``jaxrae/_data/digits.npz`` stores them
  rescaled to 0..255 (``rint(v * 255 / 16)``) with a fixed stratified 80/20 split (seed 0: within
  each class, a permutation puts 20% in test; each split is then shuffled so that its first n
  images are a class-mixed subset). The package never imports scikit-learn; to regenerate the
  file run ``PYTHONPATH=. python tests/test_data.py`` (function ``write_digits_npz``); the test
  ``test_digits_npz_regenerates_identically`` checks that the shipped file matches it.
- ``fashion_mnist``: Xiao, Rasul & Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
  Benchmarking Machine Learning Algorithms" (2017), 60,000/10,000 gray 28x28 images in 10 classes,
  in the IDX files that Debian's ``dataset-fashion-mnist`` installs under
  ``/usr/share/datasets/fashion-mnist``.
- IDX: the format LeCun, Cortes & Burges published MNIST in (http://yann.lecun.com/exdb/mnist/):
  a magic number ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the
  big-endian payload in C order. See :func:`read_idx`.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.resources
import os
import pathlib
import struct
import zlib

import numpy as np

from jaxrae.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train/test images (uint8, NHWC) and integer labels.

    ``fingerprint`` is the SHA-256 of the image and label bytes (and shapes): caches keyed on it
    (feature networks, results) are invalidated whenever the content changes.
    """

    name: str
    train_images_u8: np.ndarray
    train_labels: np.ndarray
    test_images_u8: np.ndarray
    test_labels: np.ndarray
    fingerprint: str

    @property
    def train_images(self) -> np.ndarray:
        """Training images as float32 in [0, 1], shape (N, H, W, C)."""
        return self.train_images_u8.astype(np.float32) / 255.0

    @property
    def test_images(self) -> np.ndarray:
        """Test images as float32 in [0, 1], shape (N, H, W, C)."""
        return self.test_images_u8.astype(np.float32) / 255.0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.train_images_u8.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.train_images_u8.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test_images_u8.shape[0])

    @property
    def n_classes(self) -> int:
        return int(max(self.train_labels.max(), self.test_labels.max())) + 1


# --------------------------------------------------------------------------------------------
# Constants

#: Where Debian's ``dataset-fashion-mnist`` puts its files (``dpkg -L dataset-fashion-mnist``).
DEBIAN_FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")

#: Standard MNIST-family file stems; each may also end in ``.gz``.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: IDX dtype codes (third magic byte) -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: Most dimensions an IDX file may declare: (N, H, W, C) is the most an image set needs, and a
#: small bound keeps a corrupt fourth magic byte from being read as hundreds of sizes.
IDX_MAX_DIMS = 4

#: Labels must lie in [0, MAX_CLASSES): n_classes sizes one-hot targets and classifier heads, so
#: a corrupt label of 2**31 would otherwise ask for a gigantic output layer far from the file.
MAX_CLASSES = 1000

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 24  # decompress in 16 MiB pieces: memory follows the real data, not a declared size

VALID_SPECS = (
    "digits",
    "fashion_mnist",
    "mnist",
    "idx:<dir>",
    "tfds:<name>",
)


# --------------------------------------------------------------------------------------------
# Public API


def load_data(
    spec: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
) -> Dataset:
    """Load a data set by spec: ``digits``, ``fashion_mnist``, ``mnist``, ``idx:<dir>``, ``tfds:<name>``.

    Args:
      spec: which data set (see the module docstring for formats and sources).
      cache_dir: ``data_dir`` for tensorflow-datasets; ignored by the other sources.
      n_train, n_test: keep only the first n images of each split (deterministic; useful for fast
        tests). ``None`` keeps all.

    Returns:
      A :class:`Dataset` with uint8 NHWC images, int32 labels and a content fingerprint.

    Raises:
      ConfigError: unknown spec, or an invalid ``n_train``/``n_test``.
      DataError: a missing, corrupt or inconsistent source.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"data spec must be a string, got {spec!r}; valid forms: {', '.join(VALID_SPECS)}")
    _check_subset("n_train", n_train)
    _check_subset("n_test", n_test)

    if spec == "digits":
        name, arrays = "digits", _load_digits()
    elif spec == "fashion_mnist":
        name, arrays = "fashion_mnist", _load_fashion_mnist(cache_dir)
    elif spec == "mnist":
        name, arrays = "mnist", _load_tfds("mnist", cache_dir)
    elif spec.startswith("idx:") and spec[4:]:
        name, arrays = spec, _load_idx_dir(pathlib.Path(spec[4:]).expanduser())
    elif spec.startswith("tfds:") and spec[5:]:
        name, arrays = spec, _load_tfds(spec[5:], cache_dir)
    else:
        raise ConfigError(f"unknown data spec {spec!r}; valid forms: {', '.join(VALID_SPECS)}")

    train_x, train_y, test_x, test_y = arrays
    train_x, train_y = _subset(name, "n_train", n_train, train_x, train_y)
    test_x, test_y = _subset(name, "n_test", n_test, test_x, test_y)
    return make_dataset(name, train_x, train_y, test_x, test_y)


def make_dataset(name: str, train_images, train_labels, test_images, test_labels) -> Dataset:
    """Validate and normalize four arrays into a :class:`Dataset` (uint8 NHWC images, int32 labels).

    Images may be (N, H, W) or (N, H, W, C), integer in [0, 255] or float in [0, 1] (scaled by 255
    and rounded); labels 1-D integers in [0, ``MAX_CLASSES``). Anything else is a DataError naming
    ``name``.
    """
    train_x = _as_images_u8(name, "train images", train_images)
    test_x = _as_images_u8(name, "test images", test_images)
    train_y = _as_labels(name, "train labels", train_labels)
    test_y = _as_labels(name, "test labels", test_labels)
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{name}: {split} has {x.shape[0]} images but {y.shape[0]} labels")
        if x.shape[0] == 0:
            raise DataError(f"{name}: {split} split is empty")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{name}: train images are {train_x.shape[1:]} but test images are {test_x.shape[1:]}"
        )
    return Dataset(
        name=name,
        train_images_u8=train_x,
        train_labels=train_y,
        test_images_u8=test_x,
        test_labels=test_y,
        fingerprint=fingerprint(train_x, train_y, test_x, test_y),
    )


def fingerprint(train_images, train_labels, test_images, test_labels) -> str:
    """SHA-256 hex digest over the shape, dtype and bytes of the four arrays, in this order.

    Nothing else enters (no name, no path), so equal content gives an equal fingerprint whatever
    the source.
    """
    h = hashlib.sha256()
    for tag, a in (
        ("train_images", train_images),
        ("train_labels", train_labels),
        ("test_images", test_images),
        ("test_labels", test_labels),
    ):
        a = np.ascontiguousarray(a)
        # dtype.str includes byte order, so '<i4' and '>i4' holding the same numbers differ, as
        # their bytes do; the header also keeps (2, 6) and (3, 4) of equal bytes apart.
        h.update(f"{tag}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (LeCun et al.'s MNIST format), gzipped or not, strictly.

    Format: bytes 0-1 are zero, byte 2 the dtype code (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), byte 3 the number of dimensions; then one big-endian
    uint32 per dimension; then exactly prod(dims) big-endian values, C order, and nothing after.
    Gzip is recognized by its magic bytes (1f 8b), not by the file name.

    Returns the array in native byte order. Any fault (missing file, wrong magic, unknown dtype
    code, 0 or more than ``IDX_MAX_DIMS`` dims, truncated payload, trailing bytes, corrupt gzip)
    raises DataError naming the file. The declared size is checked against the bytes actually
    there before anything is allocated, so a corrupt header cannot trigger a huge allocation.
    """
    path = pathlib.Path(path)
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: IDX file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected an IDX file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot open IDX file: {e.strerror or e}") from None
    with raw:
        try:
            head = raw.read(2)
            raw.seek(0)
        except OSError as e:
            raise DataError(f"{path}: cannot read IDX file: {e.strerror or e}") from None
        if head == _GZIP_MAGIC:
            return _read_idx_stream(path, gzip.GzipFile(fileobj=raw, mode="rb"), None, compressed=True)
        size = os.fstat(raw.fileno()).st_size
        return _read_idx_stream(path, raw, size, compressed=False)


# --------------------------------------------------------------------------------------------
# IDX internals


def _read_idx_stream(path: pathlib.Path, f, size: int | None, *, compressed: bool) -> np.ndarray:
    """Parse IDX from a binary stream; ``size`` is the total byte count when known (plain files)."""
    what = "gzipped IDX file" if compressed else "IDX file"

    def read(n: int) -> bytes:
        # Read up to n bytes, in chunks, so memory grows with the data actually present; a
        # corrupt gzip stream may raise any of these from the decompressor.
        out = bytearray()
        while len(out) < n:
            try:
                piece = f.read(min(_CHUNK, n - len(out)))
            except (OSError, EOFError, zlib.error, ValueError, struct.error, IndexError) as e:
                raise DataError(f"{path}: corrupt {what}: {e}") from None
            if not piece:
                break
            out += piece
        return bytes(out)

    magic = read(4)
    if len(magic) < 4:
        raise DataError(f"{path}: truncated {what}: {len(magic)} bytes, the magic number needs 4")
    if magic[0] != 0 or magic[1] != 0:
        raise DataError(
            f"{path}: wrong magic number {magic.hex(' ')}: an IDX file starts with 00 00 "
            "<dtype code> <ndim>"
        )
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(f"{path}: unknown IDX dtype code 0x{code:02X} (known: {known})")
    if ndim == 0 or ndim > IDX_MAX_DIMS:
        raise DataError(f"{path}: IDX file declares {ndim} dimensions; 1 to {IDX_MAX_DIMS} are supported")
    dims_bytes = read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise DataError(
            f"{path}: truncated {what}: header declares {ndim} dimensions but only "
            f"{len(dims_bytes)} of their {4 * ndim} size bytes are present"
        )
    dims = struct.unpack(f">{ndim}I", dims_bytes)
    dtype = IDX_DTYPES[code]
    n_bytes = dtype.itemsize
    for d in dims:  # Python ints: no overflow however large the declared dims
        n_bytes *= d
    header = 4 + 4 * ndim
    if size is not None:
        # Plain file: compare with the size on disk before reading or allocating anything.
        if size - header < n_bytes:
            raise DataError(
                f"{path}: truncated IDX file: dims {dims} of {dtype.name} need {n_bytes} payload "
                f"bytes, the file has {size - header}"
            )
        if size - header > n_bytes:
            raise DataError(
                f"{path}: {size - header - n_bytes} trailing bytes after the IDX payload "
                f"(dims {dims} of {dtype.name} need {n_bytes})"
            )
    payload = read(n_bytes)
    if len(payload) < n_bytes:
        raise DataError(
            f"{path}: truncated {what}: dims {dims} of {dtype.name} need {n_bytes} payload bytes, "
            f"only {len(payload)} present"
        )
    # Reading one more byte both detects trailing data and, for gzip, runs the decompressor to
    # the end of the stream, where it verifies the CRC and length.
    extra = read(1)
    if extra:
        raise DataError(f"{path}: trailing bytes after the IDX payload (dims {dims} of {dtype.name})")
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx_file(directory: pathlib.Path, stem: str) -> pathlib.Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory}: missing IDX file {stem} (or {stem}.gz)")


def _load_idx_dir(directory: pathlib.Path):
    if not directory.exists():
        raise DataError(f"{directory}: IDX directory not found")
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory; idx:<dir> needs a directory of IDX files")
    paths = {k: _find_idx_file(directory, stem) for k, stem in IDX_FILES.items()}
    arrays = {k: read_idx(p) for k, p in paths.items()}
    # Check each file's role here, where its path is known, so the message names the file.
    for split in ("train", "test"):
        xp, yp = paths[f"{split}_images"], paths[f"{split}_labels"]
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim not in (3, 4):
            raise DataError(f"{xp}: images must have 3 or 4 dimensions (N, H, W[, C]), got shape {x.shape}")
        if y.ndim != 1:
            raise DataError(f"{yp}: labels must have 1 dimension, got shape {y.shape}")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{xp} has {x.shape[0]} images but {yp} has {y.shape[0]} labels")
        arrays[f"{split}_images"] = _as_images_u8(str(xp), "images", x)
        arrays[f"{split}_labels"] = _as_labels(str(yp), "labels", y)
    return (arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"])


# --------------------------------------------------------------------------------------------
# Sources


def _load_digits():
    ref = importlib.resources.files("jaxrae") / "_data" / "digits.npz"
    try:
        with ref.open("rb") as f, np.load(f, allow_pickle=False) as z:
            return (z["train_images"], z["train_labels"], z["test_images"], z["test_labels"])
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{ref}: embedded digits data is missing or unreadable ({e}); reinstall jaxrae") from None


def _load_fashion_mnist(cache_dir):
    if DEBIAN_FASHION_MNIST_DIR.is_dir():
        return _load_idx_dir(DEBIAN_FASHION_MNIST_DIR)
    hint = (
        f"Fashion-MNIST not found: {DEBIAN_FASHION_MNIST_DIR} is absent and tensorflow-datasets "
        "could not provide it; `apt-get install dataset-fashion-mnist`, or `pip install jaxrae[tfds]` "
        "and prepare tfds:fashion_mnist, or pass idx:<dir> with the IDX files"
    )
    try:
        return _load_tfds("fashion_mnist", cache_dir)
    except DataError as e:
        raise DataError(f"{hint} ({e})") from None


def _load_tfds(name: str, cache_dir):
    try:
        import tensorflow_datasets as tfds  # optional extra; imported only when asked for
    except ImportError:
        raise DataError(
            f"tfds:{name} needs tensorflow-datasets: `pip install jaxrae[tfds]`"
        ) from None
    data_dir = None if cache_dir is None else os.fspath(cache_dir)
    # tfds.data_source reads ArrayRecord files with numpy only (no TensorFlow); it is also what
    # tfds.testing.mock_data mocks without TensorFlow. Data sets prepared in the older TFRecord
    # format need tfds.load, which needs TensorFlow: try that second.
    try:
        sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir)
        splits = [_collect_tfds_source(name, s) for s in sources]
    except DataError:
        raise
    except Exception as first:  # tfds raises many types (not found, not prepared, network ...)
        try:
            import tensorflow  # noqa: F401  (only to know whether the fallback can run)
        except ImportError:
            raise DataError(
                f"tfds:{name}: cannot load it without TensorFlow ({type(first).__name__}: {first}); "
                "prepare it in ArrayRecord format in tfds' data dir (cache_dir=...), or install "
                "tensorflow to read TFRecord-prepared data"
            ) from None
        try:
            train, test = tfds.as_numpy(
                tfds.load(name, split=["train", "test"], batch_size=-1, data_dir=data_dir)
            )
            splits = [_split_from_batch(name, train), _split_from_batch(name, test)]
        except Exception as e:
            raise DataError(f"tfds:{name}: cannot load it ({type(e).__name__}: {e})") from None
    (train_x, train_y), (test_x, test_y) = splits
    return train_x, train_y, test_x, test_y


def _collect_tfds_source(name: str, source):
    n = len(source)
    if n == 0:
        raise DataError(f"tfds:{name}: a split is empty")
    # One example at a time: __getitems__ would batch, but tfds 4.9's mock of it is broken.
    examples = [source[i] for i in range(n)]
    batch = {k: np.stack([np.asarray(ex[k]) for ex in examples]) for k in examples[0]}
    return _split_from_batch(name, batch)


def _split_from_batch(name: str, batch: dict):
    if "image" not in batch:
        raise DataError(f"tfds:{name}: no 'image' feature (features: {sorted(batch)})")
    x = np.asarray(batch["image"])
    if "label" in batch:
        y = np.asarray(batch["label"])
    else:
        # Some image sets (celeb_a) have attributes but no class label; autoencoders need none.
        y = np.zeros(x.shape[0], dtype=np.int32)
    return x, y


# --------------------------------------------------------------------------------------------
# Validation


def _as_images_u8(source: str, what: str, x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]  # gray (N, H, W) -> NHWC with one channel
    if x.ndim != 4:
        raise DataError(f"{source}: {what} must be (N, H, W) or (N, H, W, C), got shape {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(
                f"{source}: {what} values must lie in [0, 255], found [{x.min()}, {x.max()}]"
            )
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            raise DataError(f"{source}: {what} contain {int(np.sum(~np.isfinite(x)))} NaN or inf values")
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise DataError(
                f"{source}: float {what} must lie in [0, 1], found [{x.min()}, {x.max()}]"
            )
        return np.rint(x.astype(np.float64) * 255.0).astype(np.uint8)
    raise DataError(f"{source}: {what} have unsupported dtype {x.dtype}")


def _as_labels(source: str, what: str, y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{source}: {what} must be 1-D, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: {what} must be integers, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= MAX_CLASSES):
        raise DataError(
            f"{source}: {what} must lie in [0, {MAX_CLASSES}), found [{y.min()}, {y.max()}]"
        )
    return y.astype(np.int32)


def _check_subset(field: str, n) -> None:
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"{field} must be a positive integer or None, got {n!r}")


def _subset(name: str, field: str, n, x: np.ndarray, y: np.ndarray):
    if n is None:
        return x, y
    if n > len(x):
        raise ConfigError(f"{field}={n} but {name} has only {len(x)} images in that split")
    return x[:n], y[:n]
