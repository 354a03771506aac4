"""Checkpoint and result-file integrity: a file that was altered, truncated, or does not fit the
run is refused with one CheckpointError line that names the file (and the leaf) and says what to
do, before anything is trained or rewritten; the file itself is left as it was.

Checkpoints carry a SHA-256 per array and of the header (jaxrae.io), so corruption that still
decodes to valid numbers (a flipped mantissa bit, a negated Adam second moment) is caught; a
checkpoint whose leaves differ from the run's in path, shape or dtype is refused by
``restore_into`` before it reaches the compiled step. Finished compare rows
(``methods/<label>.json`` and ``.npz``) are checked when ``--resume`` reads them.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import chex
import numpy as np
import pytest
from flax import serialization

from jaxrae.compare import FIGURE_IMAGES, _load_finished, _load_images
from jaxrae.config import TrainConfig
from jaxrae.errors import CheckpointError
from jaxrae.io import (
    FORMAT,
    array_digest,
    atomic_write_npz,
    load_checkpoint,
    restore_into,
    save_checkpoint,
)
from jaxrae.train import MODEL_FILE, MODEL_FORMAT, ROW_MODELS_DIR, train

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
CONFIG = TrainConfig(method="ae", steps=4, batch_size=16, chunk_size=2, latent_dim=4)
SEEDS = [0, 1]


def _jaxrae(*args):
    return subprocess.run(
        [sys.executable, "-m", "jaxrae.cli", *args], check=False, capture_output=True, text=True, env=ENV, timeout=600
    )


def _files(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` and its bytes: what a refused run must leave as it was."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _assert_one_line_refusal(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith("jaxrae: error: "), done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in line, line


@pytest.fixture(scope="module")
def half_trained(tmp_path_factory, digits):
    """A real checkpoint of 2 ae runs stopped after the first of two chunks, and its bytes."""
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.msgpack"
    train(CONFIG, digits, SEEDS, checkpoint_path=path, stop_after_chunks=1, progress=False)
    return path, path.read_bytes()


def _copy(half_trained, tmp_path, raw: bytes | None = None) -> Path:
    path = tmp_path / "ckpt.msgpack"
    path.write_bytes(half_trained[1] if raw is None else raw)
    return path


def _leaf(tree, path: str):
    for key in path.split("/"):
        tree = tree[key]
    return tree


# ---------------------------------------------------------------------------------------------
# The digest: altered bytes that still decode to valid numbers


def test_digest_is_of_dtype_shape_and_bytes():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert array_digest(a) == array_digest(a.copy())
    assert array_digest(a) != array_digest(a.reshape(3, 2))  # same bytes, other shape
    assert array_digest(a) != array_digest(a.view(np.int32))  # same bytes, other dtype
    assert array_digest(a) != array_digest(a.astype(np.float64))
    assert array_digest(a.T) == array_digest(np.ascontiguousarray(a.T))  # values in C order, not memory layout
    b = a.copy()
    b.view(np.uint32)[0, 1] ^= 1  # lowest mantissa bit of 1.0
    assert b[0, 1] != a[0, 1] and array_digest(b) != array_digest(a)


@pytest.mark.parametrize(
    "leaf, element, change",
    [
        # one flipped mantissa bit of one weight: a valid float, 1 ulp away
        ("state/params/encoder/Dense_0/kernel", "first", "mantissa"),
        # the sign bit of Adam's second moment: a valid, negative nu (sqrt(nu) would be nan)
        ("state/opt_state/nu/decoder/Dense_0/kernel", "largest", "sign"),
        ("history/loss", "first", "mantissa"),  # the metric history is covered too
    ],
)
def test_one_changed_bit_in_a_checkpoint_is_refused(half_trained, tmp_path, digits, leaf, element, change):
    raw = half_trained[1]
    tree = serialization.msgpack_restore(raw)["tree"]
    array = np.ascontiguousarray(_leaf(tree, leaf), dtype="<f4")
    index = 0 if element == "first" else int(np.argmax(array))
    # the array's bytes follow its key (ae's history has loss == rec: the same bytes twice)
    key = leaf.split("/")[-1].encode()
    start = raw.find(array.tobytes(), raw.find(bytes([0xA0 | len(key)]) + key))  # msgpack fixstr key
    assert start > 0
    corrupted = bytearray(raw)
    if change == "mantissa":
        corrupted[start + 4 * index] ^= 0x01  # little-endian float32: byte 0 holds the lowest mantissa bits
    else:
        corrupted[start + 4 * index + 3] ^= 0x80  # byte 3 holds the sign bit
    corrupted = bytes(corrupted)

    # the change is invisible to the format: the file decodes, and to a valid (finite) number
    changed = _leaf(serialization.msgpack_restore(corrupted)["tree"], leaf).reshape(-1)[index]
    original = array.reshape(-1)[index]
    assert np.isfinite(changed) and changed != original
    if change == "sign":
        assert original > 0 and changed < 0

    path = _copy(half_trained, tmp_path, corrupted)
    with pytest.raises(CheckpointError, match=rf"{leaf} fails its SHA-256 check.*delete it .*--overwrite"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="SHA-256"):  # and so resuming it
        train(CONFIG, digits, SEEDS, checkpoint_path=path, progress=False)
    assert path.read_bytes() == corrupted  # refused, not rewritten


def test_changed_header_or_missing_checksums_are_refused(half_trained, tmp_path):
    raw = half_trained[1]
    _, header = load_checkpoint(_copy(half_trained, tmp_path))
    # the same length, still valid JSON, another number of steps: only the header's digest tells
    text = json.dumps(header)
    assert raw.count(text.encode()) == 1 and '"steps": 4' in text
    path = _copy(half_trained, tmp_path, raw.replace(text.encode(), text.replace('"steps": 4', '"steps": 5').encode()))
    with pytest.raises(CheckpointError, match="header fails its SHA-256 check"):
        load_checkpoint(path)

    blob = serialization.msgpack_restore(raw)
    path.write_bytes(serialization.msgpack_serialize({k: v for k, v in blob.items() if k != "sha256"}))
    with pytest.raises(CheckpointError, match="lacks its header, tree or checksums"):
        load_checkpoint(path)
    del blob["sha256"]["tree"]["history"]["loss"]  # an array without its checksum
    path.write_bytes(serialization.msgpack_serialize(blob))
    with pytest.raises(CheckpointError, match="history/loss has no checksum"):
        load_checkpoint(path)


def test_older_format_without_checksums_is_refused(half_trained, tmp_path):
    blob = serialization.msgpack_restore(half_trained[1])
    path = _copy(
        half_trained,
        tmp_path,
        serialization.msgpack_serialize(
            {"format": "jaxrae-checkpoint-v1", "header": blob["header"], "tree": blob["tree"]}
        ),
    )
    with pytest.raises(
        CheckpointError, match=r"older format jaxrae-checkpoint-v1, which carries no checksums .*delete it"
    ):
        load_checkpoint(path)
    assert FORMAT == "jaxrae-checkpoint-v2"


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.3, 0.5, 0.999])
def test_truncated_checkpoint_is_refused(half_trained, tmp_path, fraction):
    raw = half_trained[1]
    path = _copy(half_trained, tmp_path, raw[: int(len(raw) * fraction)])
    with pytest.raises(CheckpointError, match=r"corrupt or truncated.*delete it .*--overwrite"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# A verified checkpoint that does not fit this run: refused by restore_into, leaf by leaf


def _resave(half_trained, tmp_path, change) -> Path:
    """The checkpoint re-saved (valid digests, the same header) after ``change(tree)``."""
    tree, header = load_checkpoint(_copy(half_trained, tmp_path))
    change(tree)
    path = tmp_path / "resaved.msgpack"
    save_checkpoint(path, tree, header)
    return path


def test_checkpoint_round_trip_restores_every_leaf_bitwise(half_trained, tmp_path):
    tree, _ = load_checkpoint(_copy(half_trained, tmp_path))
    path = tmp_path / "again.msgpack"
    save_checkpoint(path, tree, {"x": 1})
    again, header = load_checkpoint(path)
    assert header == {"x": 1}
    chex.assert_trees_all_equal(again, tree)
    chex.assert_trees_all_equal(restore_into(tree["state"], again["state"], path), tree["state"])


def test_wrong_shape_is_refused_by_name(half_trained, tmp_path, digits):
    kernel = "state/params/encoder/Dense_0/kernel"

    def drop_a_unit(tree):
        _leaf(tree, "state/params/encoder/Dense_0")["kernel"] = _leaf(tree, kernel)[..., :-1]

    path = _resave(half_trained, tmp_path, drop_a_unit)
    before = path.read_bytes()
    shape = _leaf(serialization.msgpack_restore(half_trained[1])["tree"], kernel).shape
    smaller = shape[:-1] + (shape[-1] - 1,)
    message = f"does not match this run: params/encoder/Dense_0/kernel has shape {shape} in this run but {smaller} in the file; delete it"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        train(CONFIG, digits, SEEDS, checkpoint_path=path, progress=False)
    assert path.read_bytes() == before


def test_wrong_dtype_is_refused_by_name(half_trained, tmp_path, digits):
    def widen(tree):
        nu = _leaf(tree, "state/opt_state/nu/encoder/Dense_1")
        nu["bias"] = nu["bias"].astype(np.float64)

    path = _resave(half_trained, tmp_path, widen)
    with pytest.raises(
        CheckpointError, match="opt_state/nu/encoder/Dense_1/bias has dtype float32 in this run but float64 in the file"
    ):
        train(CONFIG, digits, SEEDS, checkpoint_path=path, progress=False)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t["state"]["params"]["decoder"].pop("Dense_2"), "params/decoder/Dense_2 is missing from the file"),
        (
            lambda t: t["state"]["params"]["encoder"].update(Dense_9={"bias": np.zeros((2, 3), np.float32)}),
            "params/encoder/Dense_9 is in the file but not in this run",
        ),
        (
            lambda t: t["state"]["opt_state"].__setitem__("count", {"0": np.zeros(2, np.int32)}),
            "opt_state/count is an array in this run but a subtree in the file",
        ),
    ],
    ids=["missing", "extra", "subtree-for-array"],
)
def test_other_tree_structure_is_refused_by_name(half_trained, tmp_path, digits, change, message):
    path = _resave(half_trained, tmp_path, change)
    with pytest.raises(CheckpointError, match=f"does not match this run: {message}"):
        train(CONFIG, digits, SEEDS, checkpoint_path=path, progress=False)


def test_restore_into_checks_leaves_of_a_plain_tree(tmp_path):
    target = {"w": np.zeros((2, 2), np.float32), "step": np.int32(0)}
    saved = {"w": np.ones((2, 2), np.float32), "step": np.asarray(3, np.int32)}
    chex.assert_trees_all_equal(restore_into(target, saved, "c"), saved)
    with pytest.raises(CheckpointError, match=r"w has shape \(2, 2\) in this run but \(4,\) in the file"):
        restore_into(target, {**saved, "w": np.ones(4, np.float32)}, "c")
    with pytest.raises(CheckpointError, match="step has dtype int32 in this run but int64 in the file"):
        restore_into(target, {**saved, "step": np.asarray(3, np.int64)}, "c")
    with pytest.raises(CheckpointError, match="the state is missing from the file"):
        restore_into(target, None, "c")  # a checkpoint without a state


# ---------------------------------------------------------------------------------------------
# Finished compare rows: methods/<label>.json and .npz


def _row_files(tmp_path) -> tuple[Path, dict]:
    """A finished row's record (with the fields the tables read) and images, as run_method writes them."""
    record = {
        "header": {"config": {"steps": 4}},
        "method": "ae",
        "seeds": [0, 1],
        "ok": [True, True],
        "metrics": {"rec_error": [1.0, 2.0]},
        "times": {"train_s": 1.0},
        "loss_curve": {"steps": [1.0], "loss": [[1.0], [2.0]]},
    }
    path = tmp_path / "methods" / "ae.json"
    path.parent.mkdir()
    path.write_text(json.dumps(record))
    atomic_write_npz(
        path.with_suffix(".npz"), {name: np.full((2, 8, 8), i, np.float32) for i, name in enumerate(FIGURE_IMAGES)}
    )
    save_checkpoint(
        tmp_path / ROW_MODELS_DIR / "ae" / MODEL_FILE,
        {"state": {"w": np.zeros(2, np.float32)}},
        {"model_format": MODEL_FORMAT},
    )
    return path, record


def test_finished_row_files_load_when_intact(tmp_path):
    path, record = _row_files(tmp_path)
    assert _load_finished(path, record["header"]) == record
    assert _load_finished(tmp_path / "methods" / "vae.json", record["header"]) is None  # not finished
    images = _load_images(path.with_suffix(".npz"), path)
    assert sorted(images) == sorted(FIGURE_IMAGES) and float(images["ex_post"][0, 0, 0]) == FIGURE_IMAGES.index(
        "ex_post"
    )


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
            "unreadable or truncated (JSONDecodeError)",
        ),
        (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "unreadable or truncated (UnicodeDecodeError)"),
        (lambda p: p.write_text("[1, 2]"), "lacks part of a finished row's record"),
        (
            lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "metrics": {"rec_error": [1.0]}})),
            "lacks part of a finished row's record",
        ),
        (
            lambda p: p.write_text(
                json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "loss_curve"})
            ),
            "lacks part of a finished row's record",
        ),
    ],
    ids=["truncated", "not-utf8", "not-a-record", "one-seed-short", "no-loss-curve"],
)
def test_damaged_record_is_refused(tmp_path, damage, message):
    path, record = _row_files(tmp_path)
    damage(path)
    before = path.read_bytes()
    with pytest.raises(
        CheckpointError,
        match=rf"ae\.json (is )?{re.escape(message)}.*delete .*ae\.json to redo ae, or rerun with --overwrite",
    ):
        _load_finished(path, record["header"])
    assert path.read_bytes() == before


def _flip_a_stored_byte(p: Path) -> None:
    """One bit flipped in the middle of the last member's compressed data (its CRC-32 no longer matches)."""
    with zipfile.ZipFile(p) as z:
        info = z.infolist()[-1]
    raw = bytearray(p.read_bytes())
    # a local file header is 30 bytes, then the name and the extra field, then the data
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + info.compress_size // 2] ^= 0x10
    p.write_bytes(bytes(raw))


def _npy_bytes() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
        lambda p: p.write_bytes(p.read_bytes()[:-30]),  # only the end of the zip's central directory lost
        _flip_a_stored_byte,
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(_npy_bytes()),  # an .npy, not an .npz
        lambda p: p.unlink(),
        lambda p: atomic_write_npz(p, {"originals": np.zeros(2)}),  # the other images missing
    ],
    ids=["half", "no-central-directory", "flipped-byte", "empty", "npy", "missing", "incomplete"],
)
def test_damaged_images_are_refused(tmp_path, damage):
    path, record = _row_files(tmp_path)
    npz = path.with_suffix(".npz")
    damage(npz)
    before = _files(tmp_path)
    with pytest.raises(
        CheckpointError,
        match=r"ae\.npz (is missing, truncated or not an \.npz file|lacks the image array).*"
        r"delete .*ae\.json to redo ae, or rerun with --overwrite",
    ):
        _load_finished(path, record["header"])
    assert _files(tmp_path) == before


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "is corrupt or truncated"),
        (lambda p: p.unlink(), "is missing: a finished row keeps its model there"),
        (
            lambda p: save_checkpoint(p, {"state": {"w": np.zeros(2, np.float32)}}, {"config": {}}),
            "is not a jaxrae-model-v1 model",
        ),
    ],
    ids=["truncated", "missing", "resume-checkpoint"],
)
def test_finished_row_without_a_sound_model_is_refused(tmp_path, damage, message):
    path, record = _row_files(tmp_path)
    damage(tmp_path / ROW_MODELS_DIR / "ae" / MODEL_FILE)
    before = _files(tmp_path)
    with pytest.raises(
        CheckpointError, match=rf"{re.escape(message)}.*delete .*ae\.json to redo ae, or rerun with --overwrite"
    ):
        _load_finished(path, record["header"])
    assert _files(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# Through the command line: one line, exit 2, nothing rewritten

COMPARE = [
    "compare",
    "--methods",
    "ae",
    "--seeds",
    "2",
    "--steps",
    "4",
    "--chunk-size",
    "2",
    "--batch-size",
    "32",
    "--latent-dim",
    "4",
    "--n-train",
    "300",
    "--n-test",
    "120",
    "--n-eval",
    "40",
    "--feature-steps",
    "30",
    "--n-components",
    "3",
    "--quiet",
]


@pytest.fixture(scope="module")
def finished_compare(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "out"
    done = _jaxrae(*COMPARE, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, needle",
    [
        ("methods/ae.npz", "ae.npz is missing, truncated or not an .npz file (BadZipFile)"),
        ("methods/ae.json", "ae.json is unreadable or truncated (JSONDecodeError)"),
        ("models/ae/model.msgpack", "model.msgpack is corrupt or truncated"),
    ],
)
def test_compare_resume_refuses_a_truncated_row_file(finished_compare, tmp_path, name, needle):
    out = tmp_path / "out"
    shutil.copytree(finished_compare, out)
    target = out / name
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    before = _files(out)
    done = _jaxrae(*COMPARE, "--out", str(out), "--resume")
    _assert_one_line_refusal(done, needle, "delete", "methods/ae.json to redo ae", "--overwrite")
    assert _files(out) == before  # results.json, table.md, figures, the row's files: all as they were


@pytest.mark.slow
def test_train_resume_refuses_a_checkpoint_with_a_flipped_bit(tmp_path):
    out = tmp_path / "out"
    args = [
        "train",
        "--method",
        "ae",
        "--seeds",
        "2",
        "--steps",
        "4",
        "--chunk-size",
        "2",
        "--batch-size",
        "16",
        "--latent-dim",
        "4",
        "--out",
        str(out),
        "--quiet",
    ]
    done = _jaxrae(*args)
    assert done.returncode == 0, done.stderr
    ckpt = out / "checkpoint.msgpack"
    kernel = serialization.msgpack_restore(ckpt.read_bytes())["tree"]["state"]["params"]["decoder"]["Dense_1"]["kernel"]
    raw = bytearray(ckpt.read_bytes())
    raw[raw.find(kernel.tobytes()) + 40] ^= 0x01  # the lowest mantissa bit of the 11th weight
    ckpt.write_bytes(bytes(raw))
    before = _files(out)
    done = _jaxrae(*args, "--resume")
    _assert_one_line_refusal(
        done,
        "checkpoint.msgpack is corrupt: state/params/decoder/Dense_1/kernel fails its SHA-256 check",
        "delete it",
        "--overwrite",
    )
    assert _files(out) == before
