"""Preprocessing: raw arrays into a Dataset's types, centre crop, exact area resize.

- :func:`as_images_u8`, :func:`as_labels`, :func:`as_attributes` check arrays from any source
  and normalize them: images to uint8 (N, H, W, C) (float input in [0, 1] is scaled by 255 and
  rounded), labels to int32 in [0, ``MAX_CLASSES``), attributes to uint8 0/1 matrices (N, A).
  Every fault is a DataError naming the source.
- :func:`center_crop`, :func:`area_resize` and :func:`preprocess_images` (both, a chunk of images
  at a time) implement a spec's ``@crop=...,image_size=...`` suffix; :class:`Preprocess` carries
  those two validated sizes from the spec to the sources that apply them while reading.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxrae.errors import DataError, invalid, require

#: Labels must lie in [0, MAX_CLASSES): n_classes sizes one-hot targets and classifier heads, so
#: a corrupt label of 2**31 would otherwise ask for a gigantic output layer far from the file.
MAX_CLASSES = 1000

#: Input bytes (as float) per preprocessing chunk; bounds the temporaries of area_resize.
_PREPROCESS_CHUNK_BYTES = 1 << 26

#: The largest ``image_size`` side. jaxrae's networks see whole images: at 1024x1024x3 one image
#: is 12 MiB as float32 and a batch of 64 is 800 MB before the first layer, and resizing one
#: image builds (height, width) float temporaries; ``@image_size=100000`` would ask for 37 GiB.
MAX_IMAGE_SIDE = 1024

#: Size fields with an upper bound. A crop is bounded by the images themselves (a DataError
#: when larger), an output size by what the networks can hold.
_MAX_SIDE = {"image_size": MAX_IMAGE_SIDE}


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
    crop_h, crop_w = as_size("crop", crop)
    images = _check_nhwc(source, images)
    height, width = images.shape[1:3]
    require(
        crop_h <= height and crop_w <= width,
        "crop",
        crop_h if crop_h == crop_w else (crop_h, crop_w),
        f"larger than the {height}x{width} images of {source}; choose a crop of at most "
        f"{height}x{width} (crop={min(height, width)} for a square one)",
        DataError,
    )
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return images[:, top : top + crop_h, left : left + crop_w, :]


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
    out_h, out_w = as_size("image_size", image_size)
    images = _check_nhwc(source, images)
    height, width = images.shape[1:3]
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
    prep = Preprocess(as_size("crop", crop), as_size("image_size", image_size))
    if not prep:
        return images
    images = _check_nhwc(source, images)
    first = prep.apply(images[:1], source)  # validates the sizes before any work
    out = np.empty((images.shape[0], *first.shape[1:]), np.uint8)
    # The temporaries scale with the larger of the input and output images (upsampling).
    chunk = max(1, _PREPROCESS_CHUNK_BYTES // (8 * max(int(np.prod(images.shape[1:])), int(np.prod(first.shape[1:])))))
    for start in range(0, images.shape[0], chunk):
        out[start : start + chunk] = prep.apply(images[start : start + chunk], source)
    return out


class Preprocess(NamedTuple):
    """Validated (height, width) pairs or None; falsy when there is nothing to do."""

    crop: tuple[int, int] | None = None
    image_size: tuple[int, int] | None = None

    def __bool__(self) -> bool:
        return self.crop is not None or self.image_size is not None

    def apply(self, images: np.ndarray, source: str) -> np.ndarray:
        """Crop, then resize, whichever is set; a contiguous uint8 array."""
        if self.crop is not None:
            images = center_crop(images, self.crop, source=source)
        if self.image_size is not None:
            images = area_resize(images, self.image_size, source=source)
        return np.ascontiguousarray(images)

    def suffix(self) -> str:
        """Canonical ``@crop=...,image_size=...`` (empty when nothing is set)."""
        items = [f"{k}={format_size(v)}" for k, v in zip(self._fields, self) if v is not None]
        return "@" + ",".join(items) if items else ""


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Integer overlaps ``|[i n_in, (i+1) n_in) ∩ [p n_out, (p+1) n_out)|``, shape (n_out, n_in)."""
    i = np.arange(n_out, dtype=np.int64)[:, None]
    p = np.arange(n_in, dtype=np.int64)[None, :]
    overlap = np.minimum((i + 1) * n_in, (p + 1) * n_out) - np.maximum(i * n_in, p * n_out)
    return np.maximum(overlap, 0)


def format_size(size: tuple[int, int]) -> str:
    """(64, 64) -> "64", (64, 48) -> "64x48": the form a spec suffix uses."""
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


def as_size(field: str, value) -> tuple[int, int] | None:
    """None, a positive int, an (h, w) pair, or the suffix forms "64" / "64x48" -> (h, w).

    ``image_size`` sides are at most :data:`MAX_IMAGE_SIDE` (a ConfigError saying why).
    """
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
        size = (int(value[0]), int(value[-1]))
        limit = _MAX_SIDE.get(field)
        require(
            limit is None or max(size) <= limit,
            field,
            given,
            f"at most {limit} pixels per side: jaxrae's networks hold whole images (a batch of 64 "
            f"{limit}x{limit}x3 images is 800 MB as float32), and larger sizes exhaust memory while resizing",
        )
        return size
    raise invalid(
        field,
        given,
        f"must be a positive integer or (height, width), e.g. {field}=64, "
        f"{field}=(64, 48), or {field}=64x48 in a spec suffix",
    )


def _check_nhwc(source: str, images) -> np.ndarray:
    images = np.asarray(images)
    require(
        images.ndim == 4 and images.dtype == np.uint8,
        f"{source} images",
        f"{images.dtype} {images.shape}",
        "expected uint8 images of shape (N, H, W, C)",
        DataError,
    )
    return images


# --------------------------------------------------------------------------------------------
# Raw arrays into a Dataset's types


def as_images_u8(source: str, what: str, x) -> np.ndarray:
    """Images (N, H, W) or (N, H, W, C) as uint8 NHWC: integers in [0, 255] as they are, floats
    in [0, 1] as ``rint(255 x)``. Anything else is a DataError naming ``source`` and ``what``."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]  # gray (N, H, W) -> NHWC with one channel
    require(x.ndim == 4, f"{source} {what} shape", x.shape, "must be (N, H, W) or (N, H, W, C)", DataError)
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.integer):
        if x.size:
            low, high = x.min().item(), x.max().item()
            require(
                low >= 0 and high <= 255,
                f"{source} {what} range",
                (low, high),
                "values must lie in [0, 255]",
                DataError,
            )
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x)
        if not finite.all():
            first = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise invalid(
                f"{source} {what}[{', '.join(map(str, first))}]",
                float(x[first]),
                f"values must be finite ({int(x.size - finite.sum())} NaN or inf in {what})",
                DataError,
            )
        if x.size:
            low, high = float(x.min()), float(x.max())
            require(
                low >= 0.0 and high <= 1.0,
                f"{source} {what} range",
                (low, high),
                "float values must lie in [0, 1]",
                DataError,
            )
        return np.rint(x.astype(np.float64) * 255.0).astype(np.uint8)
    raise invalid(
        f"{source} {what} dtype",
        str(x.dtype),
        "unsupported: give integer images in [0, 255] or float images in [0, 1]",
        DataError,
    )


def as_labels(source: str, what: str, y) -> np.ndarray:
    """1-D integer labels in [0, ``MAX_CLASSES``) as int32; anything else is a DataError."""
    y = np.asarray(y)
    require(y.ndim == 1, f"{source} {what} shape", y.shape, "must be 1-D", DataError)
    require(np.issubdtype(y.dtype, np.integer), f"{source} {what} dtype", str(y.dtype), "must be integers", DataError)
    if y.size:
        low, high = y.min().item(), y.max().item()
        require(
            low >= 0 and high < MAX_CLASSES,
            f"{source} {what} range",
            (low, high),
            f"must lie in [0, {MAX_CLASSES})",
            DataError,
        )
    return y.astype(np.int32)


def as_attributes(source: str, what: str, a, n: int) -> np.ndarray:
    """An (n, A) matrix of 0/1 values (bool or integer) as uint8; anything else is a DataError."""
    a = np.asarray(a)
    require(
        a.ndim == 2 and a.shape[0] == n,
        f"{source} {what} shape",
        a.shape,
        f"must be a matrix of shape ({n}, n_attributes)",
        DataError,
    )
    require(
        a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer),
        f"{source} {what} dtype",
        str(a.dtype),
        "must be boolean or 0/1 integers",
        DataError,
    )
    if a.size:
        low, high = int(a.min()), int(a.max())
        require(low >= 0 and high <= 1, f"{source} {what} range", (low, high), "must be 0 or 1", DataError)
    return np.ascontiguousarray(a, dtype=np.uint8)
