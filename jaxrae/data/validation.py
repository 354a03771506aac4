"""A validation split carved from the training split: which images, fixed by a documented seed.

Hyperparameters are chosen on images the model did not train on and that are not the test set
(DESIGN.md: "chosen on a validation split carved from train, never on test"). ``validation = f``
takes ``floor(f * n)`` of the ``n`` training images as validation images and trains on the rest.

Which images: image ``i`` of the training split (after ``n_train``, crop and resize) gets the key
``r_i``, the ``i``-th raw 64-bit output of ``numpy.random.Philox(key=(VALIDATION_SEED, 0))``; the
``floor(f * n)`` images with the smallest keys (ties, which need equal 64-bit draws, by index) are
the validation split. Both splits keep the training split's order. BitGenerator raw streams are
the part of numpy's random API kept stable across numpy versions (as for the static binarization,
:mod:`jaxrae.data.binarize`), so the split is the same in every run, process, platform and reload,
and independent of every run seed. ``r_i`` depends on ``i`` alone, not on ``n``: loading more
images (a larger ``n_train``) keeps each image's key, so the validation images of a subset are the
smallest-keyed ones among it.
"""

from __future__ import annotations

import math

import numpy as np

from jaxrae.errors import DataError, invalid, require

#: First word of the Philox key of the validation split: the bytes of "valid" read as a
#: big-endian integer. Apart from the static binarization's key (:data:`STATIC_BINARIZE_SEED`),
#: so the validation images are not those whose binarization draws are small.
VALIDATION_SEED = 0x76616C6964


def check_validation_fraction(value, field: str = "validation") -> float | None:
    """``value`` as a fraction in (0, 1), or None for no validation split (None or 0).

    ConfigError naming ``field`` for anything else (a bool, a non-numeric string, a negative number, 1 or more).
    """
    if value is None:
        return None
    if isinstance(value, str):  # a spec suffix, validation=0.1
        try:
            value = float(value)
        except ValueError:
            raise invalid(field, value, "must be a fraction of the training images in [0, 1), e.g. 0.1") from None
    require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value < 1,
        field,
        value,
        "must be a fraction of the training images in [0, 1), e.g. 0.1 (0: no validation split)",
    )
    return float(value) if value > 0 else None


def validation_indices(n: int, fraction: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) into a training split of ``n`` images, each ascending.

    ``fraction`` None or 0: every index trains and the validation indices are empty. Otherwise the
    ``floor(fraction * n)`` images with the smallest Philox keys (module docstring) are validation
    images; a DataError when that leaves no validation image or no training image.
    """
    fraction = check_validation_fraction(fraction)
    if fraction is None:
        return np.arange(n), np.arange(0)
    n_val = math.floor(fraction * n)
    require(
        1 <= n_val < n,
        "validation",
        fraction,
        f"{fraction} of {n} training images is {n_val} validation images; need at least 1 and at least one "
        "training image left",
        DataError,
    )
    keys = np.random.Philox(key=np.array([VALIDATION_SEED, 0], np.uint64)).random_raw(n)
    chosen = np.zeros(n, bool)
    chosen[np.argsort(keys, kind="stable")[:n_val]] = True
    return np.flatnonzero(~chosen), np.flatnonzero(chosen)
