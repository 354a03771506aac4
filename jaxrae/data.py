"""Data sets as uint8 image arrays with labels and a content fingerprint.

Specs understood by :func:`load_data`:

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images), embedded in the package.
- ``fashion_mnist``: Debian's ``dataset-fashion-mnist`` files when installed, else ``tfds:fashion_mnist``.
- ``mnist``: ``tfds:mnist``.
- ``idx:<dir>``: MNIST-family IDX files (``train-images-idx3-ubyte[.gz]`` ...), gzipped or not.
- ``tfds:<name>``: a prepared tensorflow-datasets data set (optional extra ``jaxrae[tfds]``).

Any spec may end in ``@crop=<c>,image_size=<s>`` (either key alone, values ``64`` or ``HxW``), the
same as ``load_data(spec, crop=c, image_size=s)``: centre-crop, then resize by area averaging,
while loading (:func:`preprocess_images`). Ghosh et al. (2020) use CelebA as the WAE paper does
(Tolstikhin et al. 2018): a 140x140 centre crop resized to 64x64, i.e.
``tfds:celeb_a@crop=140,image_size=64``. A suffix lets a TOML file or a ``--data`` flag carry
the preprocessing, and the data set's name (its canonical spec) records it.

Images stay uint8 (N, H, W, C) so that a data set lives on the accelerator once, at a quarter of
the float32 size; the trainer converts each batch to float32 in [0, 1]. Labels are int32; a data
set without a class label (celeb_a) gets label 0 everywhere. Binary attributes, where the source
has them (celeb_a's 40), are kept as uint8 0/1 matrices (N, A): the feature network of
:mod:`jaxrae.metrics` learns them when there are no classes.

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
- ``tfds:celeb_a``: Liu, Luo, Wang & Tang, "Deep Learning Face Attributes in the Wild" (ICCV
  2015): 162,770 train / 19,962 test RGB images of 218x178 pixels with 40 binary attributes and no
  class label.
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
from typing import NamedTuple

import numpy as np

from jaxrae.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train/test images (uint8, NHWC), integer labels and, optionally, binary attributes.

    ``fingerprint`` is the SHA-256 of the image, label and attribute bytes (and shapes): caches
    keyed on it (feature networks, checkpoints, results) are invalidated whenever the content
    changes, including by a different crop or resize. ``train_attributes``/``test_attributes``
    are uint8 0/1 matrices (N, A) with column names ``attribute_names``, or None.
    """

    name: str
    train_images_u8: np.ndarray
    train_labels: np.ndarray
    test_images_u8: np.ndarray
    test_labels: np.ndarray
    fingerprint: str
    train_attributes: np.ndarray | None = None
    test_attributes: np.ndarray | None = None
    attribute_names: tuple[str, ...] = ()

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
        """1 + the largest label (1 for a data set without class labels, whose labels are all 0)."""
        return int(max(self.train_labels.max(), self.test_labels.max())) + 1

    @property
    def n_attributes(self) -> int:
        """Number of binary attributes per image (0 when the data set has none)."""
        return 0 if self.train_attributes is None else int(self.train_attributes.shape[1])


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

#: Keys of a spec's ``@key=value,...`` suffix: the preprocessing arguments of :func:`load_data`.
SPEC_OPTIONS = ("crop", "image_size")

#: tfds examples decoded, stacked and preprocessed at a time: memory for full-size images is one
#: chunk (CelebA: 512 x 116 KB = 60 MB), never a whole split.
TFDS_READ_CHUNK = 512

#: Input bytes (as float) per preprocessing chunk; bounds the temporaries of area_resize.
_PREPROCESS_CHUNK_BYTES = 1 << 26


# --------------------------------------------------------------------------------------------
# Public API


def load_data(
    spec: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    crop: int | tuple[int, int] | None = None,
    image_size: int | tuple[int, int] | None = None,
) -> Dataset:
    """Load a data set by spec: ``digits``, ``fashion_mnist``, ``mnist``, ``idx:<dir>``, ``tfds:<name>``.

    Args:
      spec: which data set (see the module docstring for formats and sources), optionally with a
        preprocessing suffix ``@crop=140,image_size=64`` (the same as the two arguments below).
      cache_dir: ``data_dir`` for tensorflow-datasets; ignored by the other sources.
      n_train, n_test: keep only the first n images of each split (deterministic; useful for fast
        tests). ``None`` keeps all. tfds sources read only those n examples.
      crop: centre-crop every image to ``crop x crop`` (or ``(height, width)``) pixels first
        (:func:`center_crop`). ``None``: no crop.
      image_size: then resize every image to ``image_size x image_size`` (or ``(height, width)``)
        by exact area averaging (:func:`area_resize`). ``None``: keep the (cropped) size.
        Both are applied while loading, a chunk of images at a time, so a tfds split is never
        held at full size (CelebA train: 19 GB uint8 at 218x178, 2 GB at 64x64).

    Returns:
      A :class:`Dataset` with uint8 NHWC images, int32 labels, the source's binary attributes if
      any, and a content fingerprint. Its ``name`` is the canonical spec, suffix included, so
      ``load_data(ds.name)`` loads the same data again.

    Raises:
      ConfigError: unknown spec, a malformed suffix, an invalid ``n_train``/``n_test``/``crop``/
        ``image_size``, or a preprocessing key given both in the suffix and as an argument.
      DataError: a missing, corrupt or inconsistent source, or a crop larger than the images.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"data spec must be a string, got {spec!r}; valid forms: {', '.join(VALID_SPECS)}")
    _check_subset("n_train", n_train)
    _check_subset("n_test", n_test)
    base, options = _split_spec_options(spec)
    for key, value in (("crop", crop), ("image_size", image_size)):
        if value is not None:
            if key in options:
                raise ConfigError(
                    f"{key} is given twice, in the spec {spec!r} and as an argument ({key}={value!r}); keep one"
                )
            options[key] = value
    prep = _Preprocess(_as_size("crop", options.get("crop")), _as_size("image_size", options.get("image_size")))
    name = base + prep.suffix()

    if base == "digits":
        splits = _Splits(*_load_digits())
    elif base == "fashion_mnist":
        splits = _load_fashion_mnist(cache_dir, (n_train, n_test), prep, name)
    elif base == "mnist":
        splits = _load_tfds("mnist", cache_dir, (n_train, n_test), prep, name)
    elif base.startswith("idx:") and base[4:]:
        splits = _Splits(*_load_idx_dir(pathlib.Path(base[4:]).expanduser()))
    elif base.startswith("tfds:") and base[5:]:
        splits = _load_tfds(base[5:], cache_dir, (n_train, n_test), prep, name)
    else:
        raise ConfigError(f"unknown data spec {spec!r}; valid forms: {', '.join(VALID_SPECS)}")

    train = _subset(name, "n_train", n_train, splits.train_x, splits.train_y, splits.train_a)
    test = _subset(name, "n_test", n_test, splits.test_x, splits.test_y, splits.test_a)
    if not splits.preprocessed:  # in-memory sources: crop and resize after subsetting
        train = (preprocess_images(train[0], crop=prep.crop, image_size=prep.image_size, source=name),) + train[1:]
        test = (preprocess_images(test[0], crop=prep.crop, image_size=prep.image_size, source=name),) + test[1:]
    return make_dataset(
        name, train[0], train[1], test[0], test[1],
        train_attributes=train[2], test_attributes=test[2], attribute_names=splits.attribute_names or None,
    )


def make_dataset(
    name: str,
    train_images,
    train_labels,
    test_images,
    test_labels,
    *,
    train_attributes=None,
    test_attributes=None,
    attribute_names=None,
) -> Dataset:
    """Validate and normalize arrays into a :class:`Dataset` (uint8 NHWC images, int32 labels).

    Images may be (N, H, W) or (N, H, W, C), integer in [0, 255] or float in [0, 1] (scaled by 255
    and rounded); labels 1-D integers in [0, ``MAX_CLASSES``). Attributes, optional but both or
    neither, are (N, A) 0/1 matrices (bool or integer), stored as uint8, with ``attribute_names``
    (default ``attribute_0 ...``). Anything else is a DataError naming ``name``.
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
    if (train_attributes is None) != (test_attributes is None):
        raise DataError(f"{name}: attributes given for one split only; give both train and test attributes, or neither")
    names: tuple[str, ...] = ()
    if train_attributes is not None:
        train_attributes = _as_attributes(name, "train attributes", train_attributes, train_x.shape[0])
        test_attributes = _as_attributes(name, "test attributes", test_attributes, test_x.shape[0])
        n_attr = train_attributes.shape[1]
        if test_attributes.shape[1] != n_attr:
            raise DataError(
                f"{name}: train images have {n_attr} attributes but test images {test_attributes.shape[1]}"
            )
        if attribute_names is None:
            names = tuple(f"attribute_{i}" for i in range(n_attr))
        else:
            names = tuple(str(a) for a in attribute_names)
            if len(names) != n_attr or len(set(names)) != n_attr:
                raise DataError(f"{name}: {n_attr} attributes need {n_attr} distinct names, got {list(names)}")
    elif attribute_names:
        raise DataError(f"{name}: attribute_names given without attributes")
    return Dataset(
        name=name,
        train_images_u8=train_x,
        train_labels=train_y,
        test_images_u8=test_x,
        test_labels=test_y,
        fingerprint=fingerprint(train_x, train_y, test_x, test_y,
                                train_attributes=train_attributes, test_attributes=test_attributes),
        train_attributes=train_attributes,
        test_attributes=test_attributes,
        attribute_names=names,
    )


def fingerprint(
    train_images, train_labels, test_images, test_labels, *, train_attributes=None, test_attributes=None
) -> str:
    """SHA-256 hex digest over the shape, dtype and bytes of the arrays, in this order.

    Attributes enter only when given, so data sets without attributes keep the digest they had
    before attributes existed. Nothing else enters (no name, no path, no preprocessing
    settings), so equal content gives an equal fingerprint whatever the source; a crop or resize
    changes the image bytes and shape, hence the fingerprint.
    """
    h = hashlib.sha256()
    arrays = [
        ("train_images", train_images),
        ("train_labels", train_labels),
        ("test_images", test_images),
        ("test_labels", test_labels),
    ]
    if train_attributes is not None or test_attributes is not None:
        arrays += [("train_attributes", train_attributes), ("test_attributes", test_attributes)]
    for tag, a in arrays:
        a = np.ascontiguousarray(a)
        # dtype.str includes byte order, so '<i4' and '>i4' holding the same numbers differ, as
        # their bytes do; the header also keeps (2, 6) and (3, 4) of equal bytes apart.
        h.update(f"{tag}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Preprocessing: centre crop, area resize


def center_crop(images: np.ndarray, crop: int | tuple[int, int], *, source: str = "images") -> np.ndarray:
    """The central ``crop_h x crop_w`` window of NHWC images (a view, no copy).

    Rows ``[top, top + crop_h)`` and columns ``[left, left + crop_w)`` with
    ``top = (H - crop_h) // 2`` and ``left = (W - crop_w) // 2``. On CelebA's 218x178 images,
    ``crop=140`` keeps rows 39..178 and columns 19..158: the box ``((W - 140) / 2, (H - 140) / 2,
    (W + 140) / 2, (H + 140) / 2)`` that the WAE code (Tolstikhin et al. 2018) crops with PIL and
    Ghosh et al. (2020) reuse.

    Raises:
      ConfigError: ``crop`` is not a positive integer or (height, width).
      DataError: the crop is larger than the images (the message names ``source``).
    """
    crop_h, crop_w = _as_size("crop", crop)
    images = _check_nhwc(source, images)
    height, width = images.shape[1:3]
    if crop_h > height or crop_w > width:
        raise DataError(
            f"{source}: crop={_format_size((crop_h, crop_w))} is larger than the {height}x{width} images; "
            f"choose a crop of at most {height}x{width} (crop={min(height, width)} for a square one)"
        )
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return images[:, top:top + crop_h, left:left + crop_w, :]


def area_resize(images: np.ndarray, image_size: int | tuple[int, int], *, source: str = "images") -> np.ndarray:
    """Resize uint8 NHWC images to ``image_size`` by exact area averaging (an antialiasing box filter).

    Each input pixel is a unit square of constant value; output pixel (i, j) of an (h, w) image
    made from an (H, W) one is the mean of the input over its footprint
    ``[i H/h, (i+1) H/h) x [j W/w, (j+1) W/w)``:

      ``y[i, j] = sum_{p, q} A[i, p] B[j, q] x[p, q] / (H W)``,
      ``A[i, p] = |[i H, (i+1) H) ∩ [p h, (p+1) h)|``, ``B[j, q] = |[j W, (j+1) W) ∩ [q w, (q+1) w)|``

    (overlap lengths in coordinates scaled by h, resp. w, so A and B are integer matrices whose
    rows sum to H, resp. W). Every input pixel contributes in proportion to the area it shares
    with the output pixel, so downsampling does not alias: an integer factor k gives the exact
    means of k x k blocks, as OpenCV's ``INTER_AREA`` does. (The WAE code resized with PIL's
    Lanczos ``ANTIALIAS`` filter; both are antialiasing, not identical.) The numerator is an
    integer below ``255 H W`` computed exactly (float32 when that is below 2**24, else
    float64), then rounded half up, ``floor((2 num + H W) / (2 H W))``, in integer arithmetic:
    the same bytes on every platform, hence the same fingerprint. Upsampling is allowed (each
    output pixel then takes the one or two input pixels it overlaps).

    Raises:
      ConfigError: ``image_size`` is not a positive integer or (height, width).
      DataError: images are not uint8 NHWC (the message names ``source``).
    """
    out_h, out_w = _as_size("image_size", image_size)
    images = _check_nhwc(source, images)
    n, height, width, channels = images.shape
    if (out_h, out_w) == (height, width):
        return np.array(images)
    rows = _area_matrix(height, out_h)  # (out_h, H), rows sum to H
    cols = _area_matrix(width, out_w)  # (out_w, W), rows sum to W
    den = height * width
    # Exact integer sums: float32 represents integers exactly below 2**24, float64 below 2**53.
    dtype = np.float32 if 255 * den < 2**24 else np.float64
    x = images.astype(dtype)
    num = np.tensordot(rows.astype(dtype), x, axes=(1, 1))  # (out_h, n, W, C)
    num = np.tensordot(num, cols.astype(dtype), axes=(2, 1))  # (out_h, n, C, out_w)
    num = np.rint(num).astype(np.int64).transpose(1, 0, 3, 2)  # (n, out_h, out_w, C)
    return ((2 * num + den) // (2 * den)).astype(np.uint8)


def preprocess_images(
    images: np.ndarray,
    *,
    crop: int | tuple[int, int] | None = None,
    image_size: int | tuple[int, int] | None = None,
    source: str = "images",
) -> np.ndarray:
    """``area_resize(center_crop(images, crop), image_size)``, a chunk of images at a time.

    Either step is skipped when its argument is None (both None: ``images`` is returned as is).
    Chunks bound the float temporaries of :func:`area_resize` to about 64 MiB whatever the number
    of images; the result is a new uint8 (N, h, w, C) array. See :func:`center_crop` and
    :func:`area_resize` for the formulas and errors.
    """
    prep = _Preprocess(_as_size("crop", crop), _as_size("image_size", image_size))
    if not prep:
        return images
    images = _check_nhwc(source, images)
    first = prep.apply(images[:1], source)  # validates the sizes before any work
    out = np.empty((images.shape[0], *first.shape[1:]), np.uint8)
    chunk = max(1, _PREPROCESS_CHUNK_BYTES // (8 * int(np.prod(images.shape[1:]))))
    for start in range(0, images.shape[0], chunk):
        out[start:start + chunk] = prep.apply(images[start:start + chunk], source)
    return out


class _Preprocess(NamedTuple):
    """Validated (height, width) pairs or None; falsy when there is nothing to do."""

    crop: tuple[int, int] | None = None
    image_size: tuple[int, int] | None = None

    def __bool__(self) -> bool:
        return self.crop is not None or self.image_size is not None

    def apply(self, images: np.ndarray, source: str) -> np.ndarray:
        if self.crop is not None:
            images = center_crop(images, self.crop, source=source)
        if self.image_size is not None:
            images = area_resize(images, self.image_size, source=source)
        return np.ascontiguousarray(images)

    def suffix(self) -> str:
        """Canonical ``@crop=...,image_size=...`` (empty when nothing is set)."""
        items = [f"{k}={_format_size(v)}" for k, v in zip(self._fields, self) if v is not None]
        return "@" + ",".join(items) if items else ""


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Integer overlaps ``|[i n_in, (i+1) n_in) ∩ [p n_out, (p+1) n_out)|``, shape (n_out, n_in)."""
    i = np.arange(n_out, dtype=np.int64)[:, None]
    p = np.arange(n_in, dtype=np.int64)[None, :]
    overlap = np.minimum((i + 1) * n_in, (p + 1) * n_out) - np.maximum(i * n_in, p * n_out)
    return np.maximum(overlap, 0)


def _format_size(size: tuple[int, int]) -> str:
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


def _as_size(field: str, value) -> tuple[int, int] | None:
    """None, a positive int, an (h, w) pair, or the suffix forms "64" / "64x48" -> (h, w)."""
    if value is None:
        return None
    given = value
    if isinstance(value, str):
        parts = value.lower().split("x")
        value = tuple(int(p) for p in parts) if all(p.strip().isdigit() for p in parts) else None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if (
        isinstance(value, (tuple, list))
        and len(value) in (1, 2)
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        return (int(value[0]), int(value[-1]))
    raise ConfigError(
        f"{field}={given!r} is invalid: must be a positive integer or (height, width), "
        f"e.g. {field}=64, {field}=(64, 48), or {field}=64x48 in a spec suffix"
    )


def _split_spec_options(spec: str) -> tuple[str, dict[str, str]]:
    """``"tfds:celeb_a@crop=140,image_size=64"`` -> ``("tfds:celeb_a", {"crop": "140", ...})``.

    The suffix starts at the last ``@`` and must contain ``=``; a spec without one is returned
    whole (so an ``idx:`` path may contain ``@``, just not ``@key=value`` at its end).
    """
    base, sep, tail = spec.rpartition("@")
    if not sep or "=" not in tail:
        return spec, {}
    options: dict[str, str] = {}
    for item in tail.split(","):
        key, eq, value = (t.strip() for t in item.partition("="))
        if not eq or key not in SPEC_OPTIONS or not value:
            raise ConfigError(
                f"data spec {spec!r}: cannot read {item!r} in its @ suffix; write "
                f"<spec>@crop=<n>,image_size=<n> (keys: {', '.join(SPEC_OPTIONS)}; values n or HxW)"
            )
        if key in options:
            raise ConfigError(f"data spec {spec!r}: {key} is given twice")
        options[key] = value
    return base, options


def _check_nhwc(source: str, images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DataError(
            f"{source}: expected uint8 images of shape (N, H, W, C), got {images.dtype} {images.shape}"
        )
    return images


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


class _Splits(NamedTuple):
    """What a source returns. ``preprocessed``: crop/resize were applied while reading."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    train_a: np.ndarray | None = None
    test_a: np.ndarray | None = None
    attribute_names: tuple[str, ...] = ()
    preprocessed: bool = False


def _load_fashion_mnist(cache_dir, limits, prep: _Preprocess, display: str) -> _Splits:
    if DEBIAN_FASHION_MNIST_DIR.is_dir():
        return _Splits(*_load_idx_dir(DEBIAN_FASHION_MNIST_DIR))
    hint = (
        f"Fashion-MNIST not found: {DEBIAN_FASHION_MNIST_DIR} is absent and tensorflow-datasets "
        "could not provide it; `apt-get install dataset-fashion-mnist`, or `pip install jaxrae[tfds]` "
        "and prepare tfds:fashion_mnist, or pass idx:<dir> with the IDX files"
    )
    try:
        return _load_tfds("fashion_mnist", cache_dir, limits, prep, display)
    except DataError as e:
        raise DataError(f"{hint} ({e})") from None


def _load_tfds(name: str, cache_dir, limits=(None, None), prep: _Preprocess = _Preprocess(),
               display: str | None = None) -> _Splits:
    """Read the train and test splits, ``TFDS_READ_CHUNK`` examples at a time, preprocessing each chunk."""
    display = display or f"tfds:{name}"
    try:
        import tensorflow_datasets as tfds  # optional extra; imported only when asked for
    except ImportError:
        raise DataError(
            f"tfds:{name} needs tensorflow-datasets: `pip install jaxrae[tfds]`"
        ) from None
    data_dir = None if cache_dir is None else os.fspath(cache_dir)
    split_names = ("train", "test")
    # tfds.data_source reads ArrayRecord files with numpy only (no TensorFlow); it is also what
    # tfds.testing.mock_data mocks without TensorFlow. Data sets prepared in the older TFRecord
    # format need tfds.load, which needs TensorFlow: try that second.
    try:
        sources = tfds.data_source(name, split=list(split_names), data_dir=data_dir)
        splits = [
            _read_tfds_source(name, display, split, source, limit, prep)
            for split, source, limit in zip(split_names, sources, limits)
        ]
    except (DataError, ConfigError):
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
            splits = []
            for split, limit in zip(split_names, limits):
                # tfds' slicing reads only the first `limit` examples; _subset reports a short split.
                ds = tfds.load(name, split=split if limit is None else f"{split}[:{limit}]", data_dir=data_dir)
                batches = (_split_from_batch(name, b) for b in tfds.as_numpy(ds.batch(TFDS_READ_CHUNK)))
                splits.append(_assemble_split(display, split, len(ds), batches, prep))
        except (DataError, ConfigError):
            raise
        except Exception as e:
            raise DataError(f"tfds:{name}: cannot load it ({type(e).__name__}: {e})") from None
    (train_x, train_y, train_a, names), (test_x, test_y, test_a, test_names) = splits
    if names != test_names:
        raise DataError(f"tfds:{name}: train and test splits have different attributes")
    return _Splits(train_x, train_y, test_x, test_y, train_a, test_a, names, preprocessed=True)


def _read_tfds_source(name: str, display: str, split: str, source, limit, prep: _Preprocess):
    n = len(source)
    if n == 0:
        raise DataError(f"tfds:{name}: the {split} split is empty")
    if limit is not None:
        if limit > n:
            raise ConfigError(f"n_{split}={limit} but {display} has only {n} images in that split")
        n = limit

    def batches():
        # One example at a time (__getitems__ would batch, but tfds 4.9's mock of it is broken),
        # stacked a chunk at a time: full-size images are held for one chunk only.
        for start in range(0, n, TFDS_READ_CHUNK):
            examples = [source[i] for i in range(start, min(n, start + TFDS_READ_CHUNK))]
            yield _split_from_batch(name, _stack_examples(name, examples))

    return _assemble_split(display, split, n, batches(), prep)


def _stack_examples(name: str, examples: list[dict]) -> dict:
    """Per-example dicts -> one batch dict of the features jaxrae uses (image, label, attributes)."""
    first = examples[0]
    if "image" not in first:
        raise DataError(f"tfds:{name}: no 'image' feature (features: {sorted(first)})")
    shapes = {np.shape(ex["image"]) for ex in examples}
    if len(shapes) > 1:
        raise DataError(
            f"tfds:{name}: images of different shapes {sorted(shapes)[:3]}...; jaxrae needs one image "
            "shape: add @crop=<n> (at most the smallest side) to the spec"
        )
    batch = {"image": np.stack([np.asarray(ex["image"]) for ex in examples])}
    if "label" in first:
        batch["label"] = np.stack([np.asarray(ex["label"]) for ex in examples])
    if "attributes" in first:
        attrs = first["attributes"]
        if isinstance(attrs, dict):
            batch["attributes"] = {k: np.stack([np.asarray(ex["attributes"][k]) for ex in examples]) for k in attrs}
        else:
            batch["attributes"] = np.stack([np.asarray(ex["attributes"]) for ex in examples])
    return batch


def _split_from_batch(name: str, batch: dict):
    """A batch dict -> (images, labels, attributes (n, A) or None, attribute names)."""
    if "image" not in batch:
        raise DataError(f"tfds:{name}: no 'image' feature (features: {sorted(batch)})")
    x = np.asarray(batch["image"])
    if "label" in batch:
        y = np.asarray(batch["label"])
    else:
        # Some image sets (celeb_a) have attributes but no class label; autoencoders need none.
        y = np.zeros(x.shape[0], dtype=np.int32)
    attrs, names = None, ()
    if "attributes" in batch:
        raw = batch["attributes"]
        if isinstance(raw, dict):  # celeb_a: one boolean feature per attribute
            names = tuple(sorted(raw))
            attrs = np.stack([np.asarray(raw[k]) for k in names], axis=1) if names else None
        else:
            attrs = np.asarray(raw)
            if attrs.ndim == 2:
                names = tuple(f"attribute_{i}" for i in range(attrs.shape[1]))
        if attrs is not None:
            attrs = _as_attributes(f"tfds:{name}", "attributes", attrs, x.shape[0])
    return x, y, attrs, names


def _assemble_split(display: str, split: str, n: int, batches, prep: _Preprocess):
    """Fill preallocated (n, ...) arrays from preprocessed chunks; nothing is held twice."""
    out_x = out_y = out_a = None
    names: tuple[str, ...] = ()
    pos = 0
    for x, y, attrs, batch_names in batches:
        x = _as_images_u8(display, f"{split} images", x)
        if prep:
            x = prep.apply(x, display)
        rows = x.shape[0]
        if pos + rows > n:
            raise DataError(f"{display}: the {split} split holds more examples than the {n} it declares")
        if out_x is None:
            out_x = np.empty((n, *x.shape[1:]), np.uint8)
            out_y = np.empty(n, np.asarray(y).dtype)
            names = batch_names
            if attrs is not None:
                out_a = np.empty((n, attrs.shape[1]), np.uint8)
        elif x.shape[1:] != out_x.shape[1:]:
            raise DataError(
                f"{display}: {split} images of shapes {out_x.shape[1:]} and {x.shape[1:]}; jaxrae needs "
                "one image shape: add @crop=<n> to the spec"
            )
        if (attrs is None) != (out_a is None) or batch_names != names:
            raise DataError(f"{display}: the {split} split's attributes differ between examples")
        out_x[pos:pos + rows] = x
        out_y[pos:pos + rows] = y
        if out_a is not None:
            out_a[pos:pos + rows] = attrs
        pos += rows
    if out_x is None or pos == 0:
        raise DataError(f"{display}: the {split} split is empty")
    if pos < n:
        out_x, out_y = out_x[:pos], out_y[:pos]
        out_a = None if out_a is None else out_a[:pos]
    return out_x, out_y, out_a, names


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


def _as_attributes(source: str, what: str, a, n: int) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[0] != n:
        raise DataError(f"{source}: {what} must be a matrix of shape ({n}, n_attributes), got shape {a.shape}")
    if not (a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer)):
        raise DataError(f"{source}: {what} must be boolean or 0/1 integers, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise DataError(f"{source}: {what} must be 0 or 1, found values in [{a.min()}, {a.max()}]")
    return np.ascontiguousarray(a, dtype=np.uint8)


def _check_subset(field: str, n) -> None:
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"{field} must be a positive integer or None, got {n!r}")


def _subset(name: str, field: str, n, x: np.ndarray, y: np.ndarray, a: np.ndarray | None = None):
    if n is None:
        return x, y, a
    if n > len(x):
        raise ConfigError(f"{field}={n} but {name} has only {len(x)} images in that split")
    return x[:n], y[:n], None if a is None else a[:n]
