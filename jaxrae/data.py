"""Data sets as uint8 image arrays with labels and a content fingerprint.

Specs understood by :func:`load_data`:

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images), embedded in the package.
- ``fashion_mnist``: Debian's ``dataset-fashion-mnist`` files when installed, else ``tfds:fashion_mnist``.
- ``idx:<dir>``: MNIST-family IDX files (``train-images-idx3-ubyte[.gz]`` ...), gzipped or not.
- ``tfds:<name>``: a prepared tensorflow-datasets data set (optional extra ``jaxrae[tfds]``).

Images stay uint8 (N, H, W, C) so that a data set lives on the accelerator once, at a quarter of
the float32 size; the trainer converts each batch to float32 in [0, 1].
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxrae.errors import DataError


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
