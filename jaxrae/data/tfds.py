"""The tensorflow-datasets adapter: ``tfds:<name>`` specs, read a chunk at a time.

tensorflow-datasets is an optional heavy dependency (the extra ``jaxrae[tfds]``): it is imported
inside :func:`load_tfds`, only when a ``tfds:`` spec asks for it, so ``digits`` and ``idx:`` load
without it. Prepared ArrayRecord data is read with ``tfds.data_source`` (numpy only, no
TensorFlow; also what ``tfds.testing.mock_data`` mocks); TFRecord-prepared data falls back to
``tfds.load``, which needs TensorFlow.

Examples are decoded, stacked and preprocessed (crop, resize) ``TFDS_READ_CHUNK`` at a time into
preallocated arrays, so a split is never held at full size. Features used: ``image``, ``label``
(0 everywhere when absent, as for celeb_a) and ``attributes`` (a dict of booleans, as celeb_a's
40 of Liu et al. 2015, kept in sorted name order, or an (n, A) matrix).

Every failure is one DataError line that says what is missing and the one command that fixes
it: tensorflow-datasets itself (``pip install 'jaxrae[tfds]'``), a module it needs for this data
set (``pip install <package>``), TensorFlow for TFRecord-prepared data (``pip install
tensorflow``), an unknown name (the closest names, and the command that lists them all), or data
that is not prepared (``tfds build <name> --file_format=array_record``).
"""

from __future__ import annotations

import difflib
import os

import numpy as np

from jaxrae.data.preprocess import Preprocess, as_attributes, as_images_u8
from jaxrae.errors import ConfigError, DataError, invalid, require

#: tfds examples decoded, stacked and preprocessed at a time: memory for full-size images is one
#: chunk (CelebA: 512 x 116 KB = 60 MB), never a whole split.
TFDS_READ_CHUNK = 512

TFDS_INSTALL = "pip install 'jaxrae[tfds]'"
TENSORFLOW_INSTALL = "pip install tensorflow"
TFDS_LIST_NAMES = "python -c 'import tensorflow_datasets as tfds; print(tfds.list_builders())'"

#: pip's name for a module tensorflow-datasets may import, where the two differ.
_PIP_PACKAGES = {
    "PIL": "pillow",
    "cv2": "opencv-python",
    "apache_beam": "apache-beam",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "tensorflow_io": "tensorflow-io",
    "yaml": "pyyaml",
}


def load_tfds(name: str, cache_dir, limits=(None, None), prep: Preprocess | None = None, display: str | None = None):
    """Read the train and test splits, ``TFDS_READ_CHUNK`` examples at a time, preprocessing each chunk.

    ``limits`` = (n_train, n_test): read only the first n examples of each split (None: all).
    ``display`` names the data set in messages (default ``tfds:<name>``). Returns ``(train_x,
    train_y, test_x, test_y, train_a, test_a, attribute_names)``: uint8 NHWC images already
    cropped and resized by ``prep``, labels, uint8 attributes or None, and their names.
    """
    display = display or f"tfds:{name}"
    prep = Preprocess() if prep is None else prep
    try:
        import tensorflow_datasets as tfds  # optional extra; imported only when asked for
    except ImportError:
        raise invalid(
            "data", f"tfds:{name}", f"needs tensorflow-datasets, which is not installed; run: {TFDS_INSTALL}", DataError
        ) from None
    data_dir = None if cache_dir is None else os.fspath(cache_dir)
    split_names = ("train", "test")
    # tfds.data_source reads ArrayRecord files with numpy only (no TensorFlow); it is also what
    # tfds.testing.mock_data mocks without TensorFlow. Data sets prepared in the older TFRecord
    # format need tfds.load, which needs TensorFlow: try that second, and only for such data.
    try:
        sources = tfds.data_source(name, split=list(split_names), data_dir=data_dir)
        splits = [
            _read_tfds_source(name, display, split, source, limit, prep)
            for split, source, limit in zip(split_names, sources, limits)
        ]
    except (DataError, ConfigError):
        raise
    except Exception as first:
        if type(first).__name__ in ("DatasetNotFoundError", "DatasetCollectionNotFoundError"):
            raise _unknown_name(tfds, name) from None
        if isinstance(first, ImportError) and not _is_tensorflow(first):
            raise _missing_module(name, first) from None
        try:
            import tensorflow  # noqa: F401  (only to know whether the fallback can run)
        except ImportError:
            if "tfrecord" in str(first).lower() or _is_tensorflow(first):
                raise invalid(
                    "data",
                    f"tfds:{name}",
                    "it is prepared in TFRecord format, which only TensorFlow reads, "
                    f"and TensorFlow is not installed; run: {TENSORFLOW_INSTALL}",
                    DataError,
                ) from None
            raise invalid(
                "data",
                f"tfds:{name}",
                f"tensorflow-datasets cannot read it ({_one_line(first)}); "
                f"prepare it first: tfds build {name} --file_format=array_record"
                + (f" --data_dir {data_dir}" if data_dir else ""),
                DataError,
            ) from None
        try:
            splits = []
            for split, limit in zip(split_names, limits):
                # tfds' slicing reads only the first `limit` examples; load_data reports a short split.
                ds = tfds.load(name, split=split if limit is None else f"{split}[:{limit}]", data_dir=data_dir)
                batches = (_split_from_batch(name, b) for b in tfds.as_numpy(ds.batch(TFDS_READ_CHUNK)))
                splits.append(_assemble_split(display, split, len(ds), batches, prep))
        except (DataError, ConfigError):
            raise
        except ImportError as e:
            raise _missing_module(name, e) from None
        except Exception as e:
            raise invalid("data", f"tfds:{name}", f"cannot load it ({_one_line(e)})", DataError) from None
    (train_x, train_y, train_a, names), (test_x, test_y, test_a, test_names) = splits
    require(
        names == test_names, "data", f"tfds:{name}", "its train and test splits have different attributes", DataError
    )
    return train_x, train_y, test_x, test_y, train_a, test_a, names


def _one_line(error: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, cut at ``limit`` characters: tfds' messages run to
    hundreds of lines (an unknown name lists every data set), and an error is one line."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _is_tensorflow(error: BaseException) -> bool:
    return isinstance(error, ImportError) and (error.name or "").split(".")[0] == "tensorflow"


def _unknown_name(tfds, name: str) -> DataError:
    """No such builder: the closest registered names, and the command that lists them all."""
    base = name.split(":")[0].split("/")[0]
    try:
        close = difflib.get_close_matches(base, tfds.list_builders(with_community_datasets=False), n=3)
    except Exception:
        close = []
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return invalid(
        "data",
        f"tfds:{name}",
        f"tensorflow-datasets has no data set named {base!r}{hint}; list the names with: {TFDS_LIST_NAMES}",
        DataError,
    )


def _missing_module(name: str, error: ImportError) -> DataError:
    """A module tensorflow-datasets needs for this data set is missing: name it and the pip command."""
    module = (error.name or "").split(".")[0]
    if not module:
        return invalid(
            "data", f"tfds:{name}", f"tensorflow-datasets cannot import what it needs ({_one_line(error)})", DataError
        )
    package = _PIP_PACKAGES.get(module, module)
    return invalid(
        "data",
        f"tfds:{name}",
        f"tensorflow-datasets needs the Python module {module!r} to read it, "
        f"which is not installed; run: pip install {package}",
        DataError,
    )


def _read_tfds_source(name: str, display: str, split: str, source, limit, prep: Preprocess):
    n = len(source)
    require(n > 0, "data", f"tfds:{name}", f"the {split} split is empty", DataError)
    if limit is not None:
        require(limit <= n, f"n_{split}", limit, f"{display} has only {n} images in that split")
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
    require(
        "image" in first, f"tfds:{name} features", sorted(first), "no 'image' feature: jaxrae needs images", DataError
    )
    shapes = {np.shape(ex["image"]) for ex in examples}
    require(
        len(shapes) == 1,
        f"tfds:{name} image shapes",
        sorted(shapes)[:3],
        "images of different shapes; jaxrae needs one image shape: add @crop=<n> (at most the smallest side) "
        "to the spec",
        DataError,
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
    require(
        "image" in batch, f"tfds:{name} features", sorted(batch), "no 'image' feature: jaxrae needs images", DataError
    )
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
            attrs = as_attributes(f"tfds:{name}", "attributes", attrs, x.shape[0])
    return x, y, attrs, names


def _assemble_split(display: str, split: str, n: int, batches, prep: Preprocess):
    """Fill preallocated (n, ...) arrays from preprocessed chunks; nothing is held twice."""
    out_x = out_y = out_a = None
    names: tuple[str, ...] = ()
    pos = 0
    for x, y, attrs, batch_names in batches:
        x = as_images_u8(display, f"{split} images", x)
        if prep:
            x = prep.apply(x, display)
        rows = x.shape[0]
        require(
            pos + rows <= n,
            f"{display} {split} examples",
            f"more than {n}",
            f"the {split} split holds more examples than the {n} it declares",
            DataError,
        )
        if out_x is None:
            out_x = np.empty((n, *x.shape[1:]), np.uint8)
            out_y = np.empty(n, np.asarray(y).dtype)
            names = batch_names
            if attrs is not None:
                out_a = np.empty((n, attrs.shape[1]), np.uint8)
        else:
            require(
                x.shape[1:] == out_x.shape[1:],
                f"{display} {split} image shapes",
                [out_x.shape[1:], x.shape[1:]],
                "jaxrae needs one image shape: add @crop=<n> to the spec",
                DataError,
            )
        require(
            (attrs is None) == (out_a is None) and batch_names == names,
            f"{display} {split} attributes",
            list(batch_names),
            f"the {split} split's attributes differ between examples",
            DataError,
        )
        out_x[pos : pos + rows] = x
        out_y[pos : pos + rows] = y
        if out_a is not None:
            out_a[pos : pos + rows] = attrs
        pos += rows
    require(out_x is not None and pos > 0, "data", display, f"the {split} split is empty", DataError)
    if pos < n:
        out_x, out_y = out_x[:pos], out_y[:pos]
        out_a = None if out_a is None else out_a[:pos]
    return out_x, out_y, out_a, names
