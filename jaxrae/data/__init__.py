"""Data sets as uint8 image arrays with labels and a content fingerprint.

One module per concern:

- :mod:`jaxrae.data.spec`: the spec strings (``digits``, ``fashion_mnist``, ``mnist``,
  ``idx:<dir>``, ``tfds:<name>``, each optionally ending in
  ``@crop=...,image_size=...,binarize=...,validation=...``),
  :func:`load_data`, the :class:`Dataset` it returns, :func:`make_dataset` for arrays you
  already hold, and the content :func:`fingerprint` that caches are keyed on.
- :mod:`jaxrae.data.preprocess`: raw arrays into a Dataset's types (uint8 NHWC images, int32
  labels, 0/1 attributes), :func:`center_crop`, :func:`area_resize` (exact area averaging) and
  :func:`preprocess_images` (both, in chunks).
- :mod:`jaxrae.data.binarize`: grey levels into {0, 255} Bernoulli draws with ``p = x / 255``:
  :func:`binarize_static` (one fixed draw, numpy Philox with :data:`STATIC_BINARIZE_SEED`) and
  :func:`binarize_batch` (a fresh draw per training batch from a JAX key).
- :mod:`jaxrae.data.validation`: which training images a ``validation=<fraction>`` split holds
  out (a Philox stream keyed :data:`VALIDATION_SEED`, independent of run seeds);
  :func:`carve_validation` applies it to a Dataset, :func:`validation_view` puts the validation
  split where the test split was, for choosing hyperparameters.
- :mod:`jaxrae.data.idx`: :func:`read_idx`, the strict IDX reader (gzipped or not), and the
  ``idx:<dir>`` loader.
- :mod:`jaxrae.data.tfds`: the tensorflow-datasets adapter; tensorflow-datasets is imported
  only when a ``tfds:`` spec is loaded.

The embedded ``digits`` file is package data (``jaxrae/_data/digits.npz``), read through
``importlib.resources``.
"""

from jaxrae.data.binarize import (
    BINARIZE_MODES,
    DYNAMIC_BINARIZE_STREAM,
    STATIC_BINARIZE_SEED,
    binarize_batch,
    binarize_static,
)
from jaxrae.data.idx import IDX_DTYPES, IDX_FILES, IDX_MAX_DIMS, read_idx
from jaxrae.data.preprocess import (
    MAX_CLASSES,
    area_resize,
    center_crop,
    preprocess_images,
)
from jaxrae.data.spec import (
    DEBIAN_FASHION_MNIST_DIR,
    SPEC_OPTIONS,
    VALID_SPECS,
    Dataset,
    carve_validation,
    fingerprint,
    load_data,
    make_dataset,
    spec_options,
    validation_view,
)
from jaxrae.data.tfds import TFDS_READ_CHUNK
from jaxrae.data.validation import VALIDATION_SEED, check_validation_fraction, validation_indices

__all__ = [
    "BINARIZE_MODES",
    "DEBIAN_FASHION_MNIST_DIR",
    "DYNAMIC_BINARIZE_STREAM",
    "IDX_DTYPES",
    "IDX_FILES",
    "IDX_MAX_DIMS",
    "MAX_CLASSES",
    "SPEC_OPTIONS",
    "STATIC_BINARIZE_SEED",
    "TFDS_READ_CHUNK",
    "VALIDATION_SEED",
    "VALID_SPECS",
    "Dataset",
    "area_resize",
    "binarize_batch",
    "binarize_static",
    "carve_validation",
    "center_crop",
    "check_validation_fraction",
    "fingerprint",
    "load_data",
    "make_dataset",
    "preprocess_images",
    "read_idx",
    "spec_options",
    "validation_indices",
    "validation_view",
]
