"""Binarized images: one fixed Bernoulli draw (static) or a fresh draw per training batch (dynamic).

Each grey pixel ``v`` in 0..255 becomes a Bernoulli variable with ``p = v / 255``: 255 (on) with
probability p, else 0. This is how the binarized MNIST of the likelihood literature is made
from the grey digits. Salakhutdinov & Murray, "On the Quantitative Analysis of Deep Belief
Networks" (ICML 2008) drew it once, and Larochelle & Murray, "The Neural Autoregressive
Distribution Estimator" (AISTATS 2011) published that fixed draw as a benchmark (*static*);
Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders" (ICLR 2016) draw a new one for
every training batch (*dynamic*).

Binarized images stay uint8 with values {0, 255}, not {0, 1}: every consumer of a
:class:`~jaxrae.data.Dataset` reads uint8 images as ``x / 255`` (the train step, the feature
network of the Frechet distance, the metrics, the figures), so {0, 255} reaches all of them as
exactly {0.0, 1.0} with no change, where {0, 1} would be read as near-black grey.

- :func:`binarize_static`: the fixed draw, with numpy only. The uniform of pixel ``p`` (C order
  within an image of ``P = H * W * C`` pixels, after any crop and resize) of image ``i`` of a
  split is the ``(i * P + p)``-th raw 64-bit output of ``numpy.random.Philox`` keyed
  ``(STATIC_BINARIZE_SEED, split index)`` (train 0, test 1). Fixed, hence the same in every run,
  process and reload: the seed, the split, the image's index in its split and the pixel's index
  in its image; not the number of images loaded, so the first n images of a split (``n_train=n``)
  are binarized exactly as in the whole split, and not the chunking of the work. BitGenerator raw
  streams are the part of numpy's random API kept stable across numpy versions (unlike
  ``Generator`` methods), and the comparison with ``p`` is done in integers, so the bytes (and
  the data set's fingerprint) are the same on every platform.
- :func:`binarize_batch`: the dynamic draw, a pure JAX function of a key and a batch, to be
  applied to a training batch after it is gathered, with a key of the run's own (see
  :data:`DYNAMIC_BINARIZE_STREAM`); vmappable over runs.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxrae.errors import DataError, require

#: The binarization modes a data spec's ``@binarize=`` takes (None: grey images, unchanged).
BINARIZE_MODES = ("static", "dynamic")

#: First word of the Philox key of the static draw: the bytes of "jaxrae" read as a big-endian
#: integer. The second word is the split's index in :data:`BINARIZE_SPLITS`.
STATIC_BINARIZE_SEED = 0x6A6178726165

#: Splits of a static draw, in the order of their Philox key's second word.
BINARIZE_SPLITS = ("train", "test")

#: The constant a trainer folds into a step's key to get the key of that step's dynamic draw,
#: ``jax.random.fold_in(key, DYNAMIC_BINARIZE_STREAM)``, so the draw is its own stream, apart
#: from the batch indices and the model's noise drawn from the same step key ("bin" in ASCII).
DYNAMIC_BINARIZE_STREAM = 0x62696E

#: Raw 64-bit draws per chunk of :func:`binarize_static` (64 MiB of uint64 temporaries).
_STATIC_CHUNK_DRAWS = 1 << 23

# A raw draw r (64 bits) gives the 53-bit integer m = r >> 11, uniform on [0, 2**53); the pixel
# is on iff m * 255 < v * 2**53, i.e. m / 2**53 < v / 255. Both sides stay below 2**61 in uint64.
_MANTISSA_SHIFT = np.uint64(11)
_MANTISSA_BITS = np.uint64(53)


def check_binarize_mode(value) -> str | None:
    """None, or one of :data:`BINARIZE_MODES`; anything else is a ConfigError naming ``binarize``."""
    if value is None:
        return None
    require(
        isinstance(value, str) and value in BINARIZE_MODES,
        "binarize",
        value,
        f"choose one of {', '.join(BINARIZE_MODES)} (or leave it out to keep grey images)",
    )
    return value


def binarize_static(images: np.ndarray, split: str, *, start: int = 0) -> np.ndarray:
    """The fixed binarization of uint8 NHWC images of ``split``: ``255 * [u < x / 255]``, uint8.

    ``u`` for pixel ``p`` of the image at index ``start + j`` of the split (``images[j]``) is
    ``m / 2**53`` with ``m = r >> 11`` and ``r`` the raw output number ``(start + j) * P + p`` of
    ``numpy.random.Philox(key=(STATIC_BINARIZE_SEED, BINARIZE_SPLITS.index(split)))``, ``P`` the
    pixels per image. The test ``m * 255 < x * 2**53`` is exact in uint64, so a pixel is on with
    probability ``ceil(x 2**53 / 255) / 2**53`` (``x / 255`` within 2**-53): never for 0, always
    for 255. ``start`` lets a caller binarize a split in pieces (images ``[start, start + N)``)
    and get the same bytes as in one piece. The mean of the binarized images over many pixels is
    the mean of ``x / 255`` within binomial error (the binarized MNIST of Salakhutdinov & Murray
    2008 is such a draw, with another generator).

    Raises:
      ConfigError: ``split`` is not ``"train"`` or ``"test"``, or ``start`` is not an integer >= 0.
      DataError: ``images`` are not uint8 of shape (N, H, W, C).
    """
    require(split in BINARIZE_SPLITS, "split", split, f"choose one of {', '.join(BINARIZE_SPLITS)}")
    require(
        isinstance(start, (int, np.integer)) and not isinstance(start, bool) and start >= 0,
        "start",
        start,
        "must be an integer >= 0 (the index of images[0] in its split)",
    )
    images = np.asarray(images)
    require(
        images.ndim == 4 and images.dtype == np.uint8,
        "images",
        f"{images.dtype} {images.shape}",
        "expected uint8 images of shape (N, H, W, C)",
        DataError,
    )
    flat = images.reshape(-1)
    out = np.empty(flat.shape, np.uint8)
    bits = np.random.Philox(key=np.array([STATIC_BINARIZE_SEED, BINARIZE_SPLITS.index(split)], np.uint64))
    position = int(start) * int(np.prod(images.shape[1:]))
    bits.advance(position // 4)  # Philox-4x64 makes 4 raw outputs per counter step
    bits.random_raw(position % 4)
    for begin in range(0, flat.size, _STATIC_CHUNK_DRAWS):
        x = flat[begin : begin + _STATIC_CHUNK_DRAWS]
        m = bits.random_raw(x.size) >> _MANTISSA_SHIFT
        on = m * np.uint64(255) < x.astype(np.uint64) << _MANTISSA_BITS
        out[begin : begin + x.size] = on.astype(np.uint8) * np.uint8(255)
    return out.reshape(images.shape)


def binarize_batch(key: chex.PRNGKey, images: chex.Array) -> jax.Array:
    """A fresh binarization of a batch of uint8 images: ``255 * Bernoulli(x / 255)``, uint8.

    Pure and jit-able: each pixel is on with probability ``x / 255`` (in float32: never for 0,
    always for 255), independently, with the bits of ``key`` (``jax.random.bernoulli``). The
    dynamic binarization of Burda et al. (2016): a new draw for every training batch. Vmapped over a run axis (one key per run), run r's batch gets exactly the
    bits it gets alone, so a seed's training does not depend on the runs beside it. A trainer
    derives ``key`` from the step's key, ``jax.random.fold_in(step_key, DYNAMIC_BINARIZE_STREAM)``,
    and applies this to the batch after gathering it, before the conversion to floats.
    """
    chex.assert_rank(images, 4)
    chex.assert_type(images, jnp.uint8)
    on = jax.random.bernoulli(key, images.astype(jnp.float32) / 255.0)
    return jnp.where(on, jnp.uint8(255), jnp.uint8(0))


def binarize_splits(
    mode: str | None, train_images: np.ndarray, test_images: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) images as a data set of binarization ``mode`` stores them.

    ``None``: both grey, unchanged. ``"static"``: both through :func:`binarize_static` (each
    array is taken as its split from index 0). ``"dynamic"``: the test split static (so test
    numbers are comparable across runs and methods), the training split grey, to be binarized
    per batch by :func:`binarize_batch`.
    """
    mode = check_binarize_mode(mode)
    if mode is None:
        return train_images, test_images
    train = train_images if mode == "dynamic" else binarize_static(train_images, "train")
    return train, binarize_static(test_images, "test")
