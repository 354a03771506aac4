"""Data specs, the :class:`Dataset` they load into, and its content fingerprint.

Specs understood by :func:`load_data`:

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images), embedded in the package.
- ``fashion_mnist``: Debian's ``dataset-fashion-mnist`` files when installed, else ``tfds:fashion_mnist``.
- ``mnist``: ``tfds:mnist``.
- ``idx:<dir>``: MNIST-family IDX files (``train-images-idx3-ubyte[.gz]`` ...), gzipped or not.
- ``tfds:<name>``: a prepared tensorflow-datasets data set (optional extra ``jaxrae[tfds]``).

Any spec may end in ``@crop=<c>,image_size=<s>`` (either key alone, values ``64`` or ``HxW``), the
same as ``load_data(spec, crop=c, image_size=s)``: centre-crop, then resize by area averaging,
while loading (:mod:`jaxrae.data.preprocess`). Ghosh et al. (2020) use CelebA as the WAE paper
does (Tolstikhin et al. 2018): a 140x140 centre crop resized to 64x64, i.e.
``tfds:celeb_a@crop=140,image_size=64``. A suffix lets a TOML file or a ``--data`` flag carry
the preprocessing, and the data set's name (its canonical spec) records it.

The suffix may also hold ``binarize=static`` or ``binarize=dynamic`` (with or without the other
keys, e.g. ``tfds:celeb_a@crop=140,image_size=64,binarize=static``), the same as
``load_data(spec, binarize=...)``: each pixel becomes 255 with probability ``pixel / 255``, else 0
(:mod:`jaxrae.data.binarize`), after any crop and resize. ``static``: one fixed draw of both
splits, the same in every run, process and reload. ``dynamic``: the test split gets that fixed
draw, the training split stays grey and a trainer draws each batch afresh from its run's key
(:func:`~jaxrae.data.binarize.binarize_batch`). :attr:`Dataset.binarize` records the mode.

The suffix may also hold ``validation=<fraction>`` (e.g. ``digits@validation=0.1``), the same as
``load_data(spec, validation=...)``: the last step, :func:`carve_validation` moves a fixed
``floor(fraction * n)`` of the ``n`` training images (after ``n_train``, crop, resize and any
binarization; which ones: :mod:`jaxrae.data.validation`, seeded apart from every run) into the
Dataset's validation split (``validation_images_u8``, ``n_val``); training sees only the rest, and
the fingerprint covers both. Under ``binarize=dynamic`` the validation images get the static draw
of their place in the training split, as test images get theirs. Without it (or with 0) nothing
changes, to the byte.

Images stay uint8 (N, H, W, C) so that a data set lives on the accelerator once, at a quarter of
the float32 size; the trainer converts each batch to float32 in [0, 1]. Labels are int32; a data
set without a class label (celeb_a) gets label 0 everywhere. Binary attributes, where the source
has them (celeb_a's 40), are kept as uint8 0/1 matrices (N, A): the feature network of
:mod:`jaxrae.features` learns them when there are no classes.

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
- IDX: the format LeCun, Cortes & Burges published MNIST in (http://yann.lecun.com/exdb/mnist/),
  read by :mod:`jaxrae.data.idx`.
- ``tfds:<name>``: read by :mod:`jaxrae.data.tfds`, which imports tensorflow-datasets only then.
- ``tfds:celeb_a``: Liu, Luo, Wang & Tang, "Deep Learning Face Attributes in the Wild" (ICCV
  2015): 162,770 train / 19,962 test RGB images of 218x178 pixels with 40 binary attributes and no
  class label.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import os
import pathlib
from typing import NamedTuple

import numpy as np

from jaxrae.data.binarize import BINARIZE_MODES, binarize_splits, binarize_static, check_binarize_mode
from jaxrae.data.idx import load_idx_dir
from jaxrae.data.preprocess import (
    Preprocess,
    as_attributes,
    as_images_u8,
    as_labels,
    as_size,
    preprocess_images,
)
from jaxrae.data.tfds import load_tfds
from jaxrae.data.validation import check_validation_fraction, validation_indices
from jaxrae.errors import DataError, invalid, require


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train/test images (uint8, NHWC), integer labels and, optionally, binary attributes.

    ``fingerprint`` is the SHA-256 of the image, label and attribute bytes (and shapes): caches
    keyed on it (feature networks, checkpoints, results) are invalidated whenever the content
    changes, including by a different crop or resize. ``train_attributes``/``test_attributes``
    are uint8 0/1 matrices (N, A) with column names ``attribute_names``, or None.
    ``binarize`` is None (grey images), ``"static"`` (both splits hold a fixed binarization,
    values {0, 255}) or ``"dynamic"`` (the test split does; the training split is grey and meant
    to be binarized per batch with :func:`~jaxrae.data.binarize.binarize_batch`).
    ``validation`` is None (no validation split; the three ``validation_*`` arrays are None) or the
    fraction of the loaded training images that :func:`carve_validation` moved into
    ``validation_images_u8``/``validation_labels``/``validation_attributes``, held out of training
    (``train_*`` hold only the rest) for choosing hyperparameters, never the test split.
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
    binarize: str | None = None
    validation_images_u8: np.ndarray | None = None
    validation_labels: np.ndarray | None = None
    validation_attributes: np.ndarray | None = None
    validation: float | None = None

    @property
    def train_images(self) -> np.ndarray:
        """Training images as float32 in [0, 1], shape (N, H, W, C)."""
        return self.train_images_u8.astype(np.float32) / 255.0

    @property
    def test_images(self) -> np.ndarray:
        """Test images as float32 in [0, 1], shape (N, H, W, C)."""
        return self.test_images_u8.astype(np.float32) / 255.0

    @property
    def validation_images(self) -> np.ndarray:
        """Validation images as float32 in [0, 1], shape (n_val, H, W, C) (n_val = 0 without a split)."""
        if self.validation_images_u8 is None:
            return np.zeros((0, *self.image_shape), np.float32)
        return self.validation_images_u8.astype(np.float32) / 255.0

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
    def n_val(self) -> int:
        """Images in the validation split (0 without one)."""
        return 0 if self.validation_images_u8 is None else int(self.validation_images_u8.shape[0])

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

VALID_SPECS = (
    "digits",
    "fashion_mnist",
    "mnist",
    "idx:<dir>",
    "tfds:<name>",
)

#: Keys of a spec's ``@key=value,...`` suffix: the preprocessing arguments of :func:`load_data`.
SPEC_OPTIONS = ("crop", "image_size", "binarize", "validation")


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
    binarize: str | None = None,
    validation: float | None = None,
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
      binarize: ``"static"`` or ``"dynamic"``, applied last (:mod:`jaxrae.data.binarize`): static
        binarizes both splits with one fixed draw, dynamic only the test split (the trainer
        draws training batches afresh). ``None``: grey images.
      validation: a fraction in [0, 1) of the loaded training images to hold out as the
        validation split, last of all (:func:`carve_validation`). ``None`` or 0: no split.

    Returns:
      A :class:`Dataset` with uint8 NHWC images, int32 labels, the source's binary attributes if
      any, and a content fingerprint. Its ``name`` is the canonical spec, suffix included, so
      ``load_data(ds.name)`` loads the same data again.

    Raises:
      ConfigError: unknown spec, a malformed suffix, an invalid ``n_train``/``n_test``/``crop``/
        ``image_size``/``binarize``/``validation``, or a preprocessing key given both in the suffix and as an argument.
      DataError: a missing, corrupt or inconsistent source, a crop larger than the images, or a
        validation fraction that leaves no validation or no training image.
    """
    require(
        isinstance(spec, str), "data", spec, f"the data spec must be a string; valid forms: {', '.join(VALID_SPECS)}"
    )
    _check_subset("n_train", n_train)
    _check_subset("n_test", n_test)
    base, options = _split_spec_options(spec)
    for key, value in (("crop", crop), ("image_size", image_size), ("binarize", binarize), ("validation", validation)):
        if value is not None:
            require(
                key not in options,
                key,
                value,
                f"{key} is given twice, in the spec {spec!r} and as an argument; keep one",
            )
            options[key] = value
    prep = Preprocess(as_size("crop", options.get("crop")), as_size("image_size", options.get("image_size")))
    binarize = check_binarize_mode(options.get("binarize"))
    validation = check_validation_fraction(options.get("validation"))
    name = base + _with_option(_with_option(prep.suffix(), "binarize", binarize), "validation", validation)

    if base == "digits":
        splits = _Splits(*_load_digits())
    elif base == "fashion_mnist":
        splits = _load_fashion_mnist(cache_dir, (n_train, n_test), prep, name)
    elif base == "mnist":
        splits = _Splits(*load_tfds("mnist", cache_dir, (n_train, n_test), prep, name), preprocessed=True)
    elif base.startswith("idx:") and base[4:]:
        splits = _Splits(*load_idx_dir(pathlib.Path(base[4:]).expanduser()))
    elif base.startswith("tfds:") and base[5:]:
        splits = _Splits(*load_tfds(base[5:], cache_dir, (n_train, n_test), prep, name), preprocessed=True)
    else:
        raise invalid("data", spec, f"unknown data spec; valid forms: {', '.join(VALID_SPECS)}")

    train = _subset(name, "n_train", n_train, splits.train_x, splits.train_y, splits.train_a)
    test = _subset(name, "n_test", n_test, splits.test_x, splits.test_y, splits.test_a)
    if not splits.preprocessed:  # in-memory sources: crop and resize after subsetting
        train = (preprocess_images(train[0], crop=prep.crop, image_size=prep.image_size, source=name),) + train[1:]
        test = (preprocess_images(test[0], crop=prep.crop, image_size=prep.image_size, source=name),) + test[1:]
    data = make_dataset(
        name,
        train[0],
        train[1],
        test[0],
        test[1],
        train_attributes=train[2],
        test_attributes=test[2],
        attribute_names=splits.attribute_names or None,
        binarize=binarize,
    )
    return carve_validation(data, validation, name=name)


def carve_validation(data: Dataset, validation: float | None, *, name: str | None = None) -> Dataset:
    """``data`` with a fixed ``validation`` fraction of its training images moved to a validation split.

    Which images: :func:`jaxrae.data.validation.validation_indices` (a seeded Philox stream,
    independent of run seeds; both splits keep their order). Labels and attributes go with their
    images. Under ``binarize="dynamic"`` the validation images get the static draw of their index
    in ``data``'s training split (:func:`~jaxrae.data.binarize.binarize_static`), as a model is
    evaluated on fixed binary images; the training images stay grey. The fingerprint covers the
    validation arrays too (:func:`fingerprint`). ``validation`` None or 0 returns ``data`` itself;
    ``name`` (default ``data.name``) names the result. ConfigError for a bad fraction or a ``data``
    that already has a validation split; DataError when the fraction leaves a split empty.
    """
    validation = check_validation_fraction(validation)
    if validation is None:
        return data
    require(
        data.validation is None,
        "validation",
        validation,
        f"{data.name} already holds a validation split ({data.validation}); carve one split only",
    )
    keep, held = validation_indices(data.n_train, validation)
    val_x = data.train_images_u8[held]
    if data.binarize == "dynamic":
        val_x = np.concatenate([binarize_static(val_x[j : j + 1], "train", start=int(i)) for j, i in enumerate(held)])
    train_x, train_y = data.train_images_u8[keep], data.train_labels[keep]
    val_y = data.train_labels[held]
    train_a = val_a = None
    if data.train_attributes is not None:
        train_a, val_a = data.train_attributes[keep], data.train_attributes[held]
    return dataclasses.replace(
        data,
        name=data.name if name is None else name,
        train_images_u8=train_x,
        train_labels=train_y,
        train_attributes=train_a,
        validation_images_u8=val_x,
        validation_labels=val_y,
        validation_attributes=val_a,
        validation=validation,
        fingerprint=fingerprint(
            train_x,
            train_y,
            data.test_images_u8,
            data.test_labels,
            train_attributes=train_a,
            test_attributes=data.test_attributes,
            binarize=data.binarize,
            validation_images=val_x,
            validation_labels=val_y,
            validation_attributes=val_a,
        ),
    )


def validation_view(data: Dataset) -> Dataset:
    """``data`` with its validation split in the place of the test split: what choosing hyperparameters
    may evaluate on (any function that reads ``test_*`` then reads validation images, never test ones).

    Its name ends in ``#validation`` and its fingerprint is that of (training, validation) arrays
    as if the validation split were the test split. ConfigError when ``data`` has no validation split.
    """
    require(
        data.validation_images_u8 is not None,
        "validation",
        None,
        f"{data.name} has no validation split; load it with validation=<fraction> (e.g. 0.1)",
    )
    return dataclasses.replace(
        data,
        name=f"{data.name}#validation",
        test_images_u8=data.validation_images_u8,
        test_labels=data.validation_labels,
        test_attributes=data.validation_attributes,
        validation_images_u8=None,
        validation_labels=None,
        validation_attributes=None,
        validation=None,
        fingerprint=fingerprint(
            data.train_images_u8,
            data.train_labels,
            data.validation_images_u8,
            data.validation_labels,
            train_attributes=data.train_attributes,
            test_attributes=data.validation_attributes,
            binarize=data.binarize,
        ),
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
    binarize: str | None = None,
) -> Dataset:
    """Validate and normalize arrays into a :class:`Dataset` (uint8 NHWC images, int32 labels).

    Images may be (N, H, W) or (N, H, W, C), integer in [0, 255] or float in [0, 1] (scaled by 255
    and rounded); labels 1-D integers in [0, ``MAX_CLASSES``). Attributes, optional but both or
    neither, are (N, A) 0/1 matrices (bool or integer), stored as uint8, with ``attribute_names``
    (default ``attribute_0 ...``). Anything else is a DataError naming ``name``.
    ``binarize`` (None, ``"static"``, ``"dynamic"``; else a ConfigError) binarizes the images as
    :func:`~jaxrae.data.binarize.binarize_splits` does, each array taken as its split from index 0.
    """
    train_x = as_images_u8(name, "train images", train_images)
    test_x = as_images_u8(name, "test images", test_images)
    binarize = check_binarize_mode(binarize)
    train_y = as_labels(name, "train labels", train_labels)
    test_y = as_labels(name, "test labels", test_labels)
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        require(
            y.shape[0] == x.shape[0],
            f"{name} {split} labels",
            y.shape[0],
            f"the {split} split has {x.shape[0]} images: need one label per image",
            DataError,
        )
        require(x.shape[0] > 0, f"{name} {split} images", 0, f"the {split} split is empty", DataError)
    require(
        test_x.shape[1:] == train_x.shape[1:],
        f"{name} test image shape",
        test_x.shape[1:],
        f"train images are {train_x.shape[1:]}: both splits need one image shape",
        DataError,
    )
    if (train_attributes is None) != (test_attributes is None):
        raise invalid(
            f"{name} attributes",
            "train only" if test_attributes is None else "test only",
            "given for one split only; give both train and test attributes, or neither",
            DataError,
        )
    names: tuple[str, ...] = ()
    if train_attributes is not None:
        train_attributes = as_attributes(name, "train attributes", train_attributes, train_x.shape[0])
        test_attributes = as_attributes(name, "test attributes", test_attributes, test_x.shape[0])
        n_attr = train_attributes.shape[1]
        require(
            test_attributes.shape[1] == n_attr,
            f"{name} test attributes",
            test_attributes.shape[1],
            f"train images have {n_attr} attributes: both splits need the same",
            DataError,
        )
        if attribute_names is None:
            names = tuple(f"attribute_{i}" for i in range(n_attr))
        else:
            names = tuple(str(a) for a in attribute_names)
            require(
                len(names) == n_attr and len(set(names)) == n_attr,
                f"{name} attribute_names",
                list(names),
                f"{n_attr} attributes need {n_attr} distinct names",
                DataError,
            )
    elif attribute_names:
        raise invalid(
            f"{name} attribute_names",
            attribute_names,
            "given without attributes; give train_attributes and test_attributes too",
            DataError,
        )
    train_x, test_x = binarize_splits(binarize, train_x, test_x)
    return Dataset(
        name=name,
        train_images_u8=train_x,
        train_labels=train_y,
        test_images_u8=test_x,
        test_labels=test_y,
        fingerprint=fingerprint(
            train_x,
            train_y,
            test_x,
            test_y,
            train_attributes=train_attributes,
            test_attributes=test_attributes,
            binarize=binarize,
        ),
        train_attributes=train_attributes,
        test_attributes=test_attributes,
        attribute_names=names,
        binarize=binarize,
    )


def fingerprint(
    train_images,
    train_labels,
    test_images,
    test_labels,
    *,
    train_attributes=None,
    test_attributes=None,
    binarize: str | None = None,
    validation_images=None,
    validation_labels=None,
    validation_attributes=None,
) -> str:
    """SHA-256 hex digest over the shape, dtype and bytes of the arrays, in this order.

    Attributes enter only when given, so a data set without attributes is digested from its
    images and labels alone; likewise the validation split's images, labels (and attributes, if
    any) enter after the others only when given, so a data set without one digests as before. Nothing else enters (no name, no path, no preprocessing
    settings) but a dynamic binarization, so equal content gives an equal fingerprint whatever
    the source; a crop, a resize or a static binarization changes the image bytes (and shape),
    hence the fingerprint. ``binarize="dynamic"`` enters the digest last, since the training
    images a model then sees are fresh draws, not the grey bytes stored; None and ``"static"``
    add nothing (ConfigError for any other value).
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
    if validation_images is not None:
        arrays += [("validation_images", validation_images), ("validation_labels", validation_labels)]
        if validation_attributes is not None:
            arrays += [("validation_attributes", validation_attributes)]
    for tag, a in arrays:
        a = np.ascontiguousarray(a)
        # dtype.str includes byte order, so '<i4' and '>i4' holding the same numbers differ, as
        # their bytes do; the header also keeps (2, 6) and (3, 4) of equal bytes apart.
        h.update(f"{tag}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    if check_binarize_mode(binarize) == "dynamic":
        h.update(b"binarize|dynamic\n")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Spec suffix


def spec_options(spec: str) -> dict[str, str]:
    """The ``@key=value,...`` suffix of a data spec as a dict (``{}`` without one); ConfigError if malformed."""
    return _split_spec_options(spec)[1]


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
        require(
            eq and key in SPEC_OPTIONS and value,
            "data",
            spec,
            f"cannot read {item!r} in its @ suffix; write <spec>@crop=<n>,image_size=<n>,binarize=<mode>,"
            f"validation=<fraction> (keys: {', '.join(SPEC_OPTIONS)}; values n or HxW, binarize "
            f"{' or '.join(BINARIZE_MODES)}, validation a fraction such as 0.1)",
        )
        require(key not in options, "data", spec, f"{key} is given twice in its @ suffix; keep one")
        options[key] = value
    return base, options


def _with_option(suffix: str, key: str, value) -> str:
    """The canonical suffix: ``prep``'s ``@crop=...,image_size=...``, then ``binarize=<mode>``, then
    ``validation=<fraction>`` (each only when set; ``repr`` of a float reads back as the same float)."""
    if value is None:
        return suffix
    return f"{suffix}{',' if suffix else '@'}{key}={value}"


# --------------------------------------------------------------------------------------------
# Sources


def _load_digits():
    ref = importlib.resources.files("jaxrae") / "_data" / "digits.npz"
    try:
        with ref.open("rb") as f, np.load(f, allow_pickle=False) as z:
            return (z["train_images"], z["train_labels"], z["test_images"], z["test_labels"])
    except (OSError, KeyError, ValueError) as e:
        raise invalid(
            "embedded digits data", str(ref), f"missing or unreadable ({e}); reinstall jaxrae", DataError
        ) from None


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


def _load_fashion_mnist(cache_dir, limits, prep: Preprocess, display: str) -> _Splits:
    if DEBIAN_FASHION_MNIST_DIR.is_dir():
        return _Splits(*load_idx_dir(DEBIAN_FASHION_MNIST_DIR))
    try:
        return _Splits(*load_tfds("fashion_mnist", cache_dir, limits, prep, display), preprocessed=True)
    except DataError as e:
        # Say what is missing first (the Debian package), then why the tfds fallback failed,
        # which may be a missing dependency rather than missing data.
        reason = str(e).partition(" is invalid: ")[2] or str(e)
        raise invalid(
            "data",
            display,
            f"Fashion-MNIST is not installed ({DEBIAN_FASHION_MNIST_DIR} is absent); run: "
            "apt-get install dataset-fashion-mnist (or pass idx:<dir> with its IDX files). "
            f"The tfds:fashion_mnist fallback failed too: {reason}",
            DataError,
        ) from None


# --------------------------------------------------------------------------------------------
# Subsets


def _check_subset(field: str, n) -> None:
    if n is None:
        return
    is_int = isinstance(n, (int, np.integer)) and not isinstance(n, bool)
    require(is_int and n >= 1, field, n, "must be a positive integer or None")


def _subset(name: str, field: str, n, x: np.ndarray, y: np.ndarray, a: np.ndarray | None = None):
    if n is None:
        return x, y, a
    require(n <= len(x), field, n, f"{name} has only {len(x)} images in that split")
    return x[:n], y[:n], None if a is None else a[:n]
