"""The IDX format of the MNIST family: a strict reader, gzipped or not, and a directory loader.

LeCun, Cortes & Burges published MNIST (http://yann.lecun.com/exdb/mnist/) in this format: a
magic number ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the
big-endian payload in C order. Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) uses the same files
and names (:data:`IDX_FILES`). :func:`read_idx` reads one file; :func:`load_idx_dir` reads the
four files of a directory (the ``idx:<dir>`` spec) into uint8 images and int32 labels.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import struct
import zlib

import numpy as np

from jaxrae.data.preprocess import as_images_u8, as_labels
from jaxrae.errors import DataError, invalid, require

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

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 24  # decompress in 16 MiB pieces: memory follows the real data, not a declared size


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
        raise invalid("IDX file", str(path), "file not found", DataError) from None
    except IsADirectoryError:
        raise invalid("IDX file", str(path), "it is a directory; expected an IDX file", DataError) from None
    except OSError as e:
        raise invalid("IDX file", str(path), f"cannot open it: {e.strerror or e}", DataError) from None
    with raw:
        try:
            head = raw.read(2)
            raw.seek(0)
        except OSError as e:
            raise invalid("IDX file", str(path), f"cannot read it: {e.strerror or e}", DataError) from None
        if head == _GZIP_MAGIC:
            return _read_idx_stream(path, gzip.GzipFile(fileobj=raw, mode="rb"), None, compressed=True)
        size = os.fstat(raw.fileno()).st_size
        return _read_idx_stream(path, raw, size, compressed=False)


# --------------------------------------------------------------------------------------------
# Parser and directory loader


def _read_idx_stream(path: pathlib.Path, f, size: int | None, *, compressed: bool) -> np.ndarray:
    """Parse IDX from a binary stream; ``size`` is the total byte count when known (plain files).

    Every fault is ``invalid("<path> <part>", value, what is wrong, DataError)``.
    """
    what = "gzipped IDX file" if compressed else "IDX file"

    def fault(part: str, value, allowed: str) -> DataError:
        return invalid(f"{path} {part}", value, allowed, DataError)

    def read(n: int) -> bytes:
        # Read up to n bytes, in chunks, so memory grows with the data actually present; a
        # corrupt gzip stream may raise any of these from the decompressor.
        out = bytearray()
        while len(out) < n:
            try:
                piece = f.read(min(_CHUNK, n - len(out)))
            except (OSError, EOFError, zlib.error, ValueError, struct.error, IndexError) as e:
                raise fault("stream", str(e), f"corrupt {what}: re-create or re-download it") from None
            if not piece:
                break
            out += piece
        return bytes(out)

    magic = read(4)
    if len(magic) < 4:
        raise fault("length", len(magic), f"truncated {what}: the magic number needs 4 bytes")
    if magic[0] != 0 or magic[1] != 0:
        raise fault("magic number", magic.hex(" "), "an IDX file starts with 00 00 <dtype code> <ndim>")
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise fault("dtype code", f"0x{code:02X}", f"unknown IDX dtype code; known: {known}")
    if ndim == 0 or ndim > IDX_MAX_DIMS:
        raise fault("dimensions", ndim, f"an IDX file declares 1 to {IDX_MAX_DIMS} dimensions")
    dims_bytes = read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise fault(
            "size bytes",
            len(dims_bytes),
            f"truncated {what}: the header declares {ndim} dimensions, which need {4 * ndim} size bytes",
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
            raise fault(
                "payload bytes",
                size - header,
                f"truncated IDX file: dims {dims} of {dtype.name} need {n_bytes} payload bytes",
            )
        if size - header > n_bytes:
            raise fault(
                "payload bytes",
                size - header,
                f"{size - header - n_bytes} trailing bytes after the IDX payload "
                f"(dims {dims} of {dtype.name} need {n_bytes})",
            )
    payload = read(n_bytes)
    if len(payload) < n_bytes:
        raise fault(
            "payload bytes", len(payload), f"truncated {what}: dims {dims} of {dtype.name} need {n_bytes} payload bytes"
        )
    # Reading one more byte both detects trailing data and, for gzip, runs the decompressor to
    # the end of the stream, where it verifies the CRC and length.
    extra = read(1)
    if extra:
        raise fault(
            "payload bytes",
            f"more than {n_bytes}",
            f"trailing bytes after the IDX payload (dims {dims} of {dtype.name} need {n_bytes})",
        )
    return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx_file(directory: pathlib.Path, stem: str) -> pathlib.Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise invalid("IDX directory", str(directory), f"missing IDX file {stem} (or {stem}.gz)", DataError)


def load_idx_dir(directory: pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) from the :data:`IDX_FILES` in
    ``directory``: images uint8 (N, H, W, C), labels int32. Every fault is a DataError naming the file."""
    require(directory.exists(), "IDX directory", str(directory), "directory not found", DataError)
    require(
        directory.is_dir(),
        "IDX directory",
        str(directory),
        "not a directory; idx:<dir> needs a directory of IDX files",
        DataError,
    )
    paths = {k: _find_idx_file(directory, stem) for k, stem in IDX_FILES.items()}
    arrays = {k: read_idx(p) for k, p in paths.items()}
    # Check each file's role here, where its path is known, so the message names the file.
    for split in ("train", "test"):
        xp, yp = paths[f"{split}_images"], paths[f"{split}_labels"]
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        require(
            x.ndim in (3, 4), f"{xp} shape", x.shape, "images must have 3 or 4 dimensions (N, H, W[, C])", DataError
        )
        require(y.ndim == 1, f"{yp} shape", y.shape, "labels must have 1 dimension", DataError)
        require(
            x.shape[0] == y.shape[0],
            f"{yp} labels",
            y.shape[0],
            f"{xp} has {x.shape[0]} images: need one label per image",
            DataError,
        )
        arrays[f"{split}_images"] = as_images_u8(str(xp), "images", x)
        arrays[f"{split}_labels"] = as_labels(str(yp), "labels", y)
    return (arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"])
