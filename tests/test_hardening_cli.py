"""The command under hostile use: output directories (claim, marker, --overwrite safety, refused
--resume), seeds, validation before training, bad TOML, bad paths and cache variables, argparse
errors, Ctrl-C. Process-level behaviour runs the real command in a subprocess, as a user would."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxrae import cli, io
from jaxrae.compare import run_compare
from jaxrae.config import TrainConfig
from jaxrae.errors import ConfigError
from jaxrae.experiment import Experiment, load_experiment
from jaxrae.io import MARKER, prepare_out_dir
from jaxrae.train import MAX_SEEDS, SEED_LIMIT, check_seeds, run_grid

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}

#: A compare run small enough to finish in seconds (one row, one seed, 2 steps).
TINY_COMPARE = [
    "compare",
    "--methods",
    "ae",
    "--seeds",
    "1",
    "--n-train",
    "100",
    "--n-test",
    "40",
    "--n-eval",
    "20",
    "--feature-steps",
    "2",
    "--n-components",
    "2",
    "--steps",
    "2",
    "--chunk-size",
    "2",
    "--batch-size",
    "16",
    "--latent-dim",
    "2",
    "--quiet",
]
TINY_TRAIN = [
    "train",
    "--method",
    "ae",
    "--seeds",
    "1",
    "--steps",
    "2",
    "--chunk-size",
    "2",
    "--batch-size",
    "16",
    "--latent-dim",
    "2",
    "--quiet",
]


def jaxrae(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "jaxrae.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        cwd=cwd,
        timeout=600,
    )


def assert_one_line_error(done, *needles):
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith("jaxrae: error:"), line
    for needle in needles:
        assert needle in line, line


def jaxrae_output(path, files=("results.json",)):
    """A directory as jaxrae leaves it: the marker and some results."""
    path.mkdir(parents=True)
    (path / MARKER).write_text("jaxrae\n")
    for name in files:
        (path / name).write_text('{"old": true}')
    return path


# ---------------------------------------------------------------------------------------------
# Output directories: the claim


def test_a_claimed_directory_refuses_a_second_claim_until_released(tmp_path):
    out = tmp_path / "out"
    first = prepare_out_dir(out, resume=False, overwrite=False)
    assert (out / MARKER).is_file()
    with pytest.raises(ConfigError, match="another jaxrae process is writing to it"):
        prepare_out_dir(out, resume=True, overwrite=False)
    first.release()
    with prepare_out_dir(out, resume=True, overwrite=False):
        pass


def test_second_process_on_a_claimed_out_is_refused_and_deletes_nothing(tmp_path):
    out = tmp_path / "out"
    with prepare_out_dir(out, resume=False, overwrite=False):  # a run in progress holds the directory
        (out / "results.json").write_text('{"first": true}')
        done = jaxrae(*TINY_COMPARE, "--out", out, "--overwrite")
        assert_one_line_error(done, "another jaxrae process")
        assert (out / "results.json").read_text() == '{"first": true}'


def test_two_concurrent_compares_on_one_out_one_wins(tmp_path):
    out = tmp_path / "out"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jaxrae.cli", *TINY_COMPARE, "--out", str(out), "--lr", lr],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for lr in ("1e-3", "2e-3")
    ]
    outcomes = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 2], outcomes
    winner = 1e-3 if outcomes[0][0] == 0 else 2e-3
    results = json.loads((out / "results.json").read_text())
    assert results["methods"]["ae"]["config"]["lr"] == winner  # every file is the winner's


# ---------------------------------------------------------------------------------------------
# --resume refused: nothing written; --overwrite: validate first, delete last, only jaxrae's


def test_refused_resume_leaves_config_json_untouched(tmp_path):
    out = tmp_path / "run"
    assert jaxrae(*TINY_TRAIN, "--out", out).returncode == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    done = jaxrae(*TINY_TRAIN, "--out", out, "--resume", "--lr", "1e-3")
    assert_one_line_error(done, "config.json", "lr")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("bad", [["--sweep", "foo=1"], ["--data", "idx:/nonexistent"], ["--seeds", "0,0"]])
def test_overwrite_validates_everything_before_deleting(tmp_path, bad):
    out = jaxrae_output(tmp_path / "old", ("config.json", "history.json"))
    done = jaxrae(*TINY_TRAIN, "--out", out, "--overwrite", *bad)
    assert_one_line_error(done)
    assert (out / "history.json").read_text() == '{"old": true}'


def test_compare_overwrite_with_a_bad_data_spec_deletes_nothing(tmp_path):
    out = jaxrae_output(tmp_path / "old")
    assert_one_line_error(
        jaxrae(*TINY_COMPARE, "--out", out, "--overwrite", "--data", "idx:/nonexistent"), "/nonexistent"
    )
    assert (out / "results.json").exists()


def test_overwrite_refuses_a_directory_jaxrae_did_not_write(tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    assert_one_line_error(jaxrae(*TINY_TRAIN, "--out", mine, "--overwrite"), MARKER)
    assert (mine / "chapter1.tex").read_text() == "precious"


@pytest.mark.parametrize("where", ["cwd", "parent"])
def test_overwrite_never_deletes_the_working_directory_or_a_parent(tmp_path, where):
    out = jaxrae_output(tmp_path / "old")  # marked as jaxrae's: still refused
    cwd = out if where == "cwd" else out / "sub"
    cwd.mkdir(exist_ok=True)
    target = "." if where == "cwd" else ".."
    assert_one_line_error(jaxrae(*TINY_TRAIN, "--out", target, "--overwrite", cwd=cwd), "working directory")
    assert (out / "results.json").exists()


def test_overwrite_of_a_marked_directory_replaces_it(tmp_path):
    out = jaxrae_output(tmp_path / "old", ("results.json", "stale.png"))
    with prepare_out_dir(out, resume=False, overwrite=True):
        assert sorted(p.name for p in out.iterdir()) == [MARKER]


# ---------------------------------------------------------------------------------------------
# Paths that cannot hold results, cache variables


@pytest.mark.parametrize("kind", ["file", "under-file", "unwritable"])
def test_out_that_cannot_be_a_directory_is_one_line(tmp_path, kind):
    (tmp_path / "f").write_text("x")
    out = {"file": tmp_path / "f", "under-file": tmp_path / "f" / "out", "unwritable": "/sys/jaxrae-out"}[kind]
    assert_one_line_error(jaxrae(*TINY_TRAIN, "--out", out), "--out=")


@pytest.mark.parametrize("flag", ["--resume", "--overwrite", None])
def test_read_only_out_is_one_line(tmp_path, monkeypatch, capsys, flag):
    out = jaxrae_output(tmp_path / "old")

    def read_only(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(io, "_open_marker", read_only)
    args = [*TINY_TRAIN, "--out", str(out if flag else tmp_path / "new")] + ([flag] if flag else [])
    assert cli.main(args) == 2
    assert "Read-only file system" in capsys.readouterr().err
    assert (out / "results.json").exists()


@pytest.mark.parametrize("var", ["JAXRAE_CACHE", "JAXRAE_COMPILATION_CACHE"])
def test_cache_variable_naming_a_file_is_one_line(tmp_path, var):
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "file", tmp_path / "file" / "below"):
        assert_one_line_error(jaxrae(*TINY_TRAIN, "--out", tmp_path / "out", env={var: str(path)}), var)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Seeds


def test_seed_limit_is_where_jax_keys_start_to_repeat():
    def key_of(s):
        return np.asarray(jax.random.key_data(jax.random.key(s)))

    assert not np.array_equal(key_of(SEED_LIMIT - 1), key_of(0))
    np.testing.assert_array_equal(key_of(SEED_LIMIT), key_of(0))  # 2**32 would alias seed 0
    np.testing.assert_array_equal(key_of(-1), key_of(SEED_LIMIT - 1))  # and -1 the largest seed


def test_check_seeds_accepts_the_key_range_and_nothing_else():
    # The Python API refuses the same seeds as the command line (run_grid is what train() calls).
    for bad in ([-1], [SEED_LIMIT], [0, 0]):
        with pytest.raises(ConfigError, match="seeds"):
            run_grid(TrainConfig(), bad)
    assert check_seeds([0, SEED_LIMIT - 1, np.int64(7)]) == (0, SEED_LIMIT - 1, 7)
    for bad in ([-1], [SEED_LIMIT], [0, SEED_LIMIT], [10**20], [1.0], [0, 0], [], list(range(MAX_SEEDS + 1))):
        with pytest.raises(ConfigError, match="seeds=.* is invalid"):
            check_seeds(bad)


@pytest.mark.parametrize("command", ["train", "compare"])
@pytest.mark.parametrize(
    "seeds, needle",
    [
        ("0,4294967296", "[0, 4294967296)"),
        ("-1,0", "[0, 4294967296)"),
        ("10000000000", f"between 1 and {MAX_SEEDS}"),
        ("0,100000000000000000000", "[0, 4294967296)"),
        ("1e20", "a count"),
        ("0,0", "no seed may repeat"),
    ],
)
def test_bad_seeds_are_refused_the_same_by_train_and_compare_before_training(tmp_path, command, seeds, needle):
    base = TINY_TRAIN if command == "train" else TINY_COMPARE
    args = [a for a in base if a != "--seeds"]
    args.remove("1")  # the value of --seeds
    assert_one_line_error(jaxrae(*args, f"--seeds={seeds}", "--out", tmp_path / "out"), "--seeds", needle)
    assert not (tmp_path / "out").exists()


def test_toml_seeds_out_of_range_are_refused(tmp_path):
    for text, needle in (
        ("seeds = [0, 4294967296]", "4294967296"),
        ("seeds = [1e20]", "seeds"),
        ("seeds = 10000000000", "10000000000"),
        ("seeds = [-1]", "-1"),
    ):
        path = tmp_path / "e.toml"
        path.write_text(f'methods = ["ae"]\n{text}\n')
        with pytest.raises(ConfigError, match=needle):
            load_experiment(path)


# ---------------------------------------------------------------------------------------------
# The whole experiment is validated before the first row trains


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--n-test", "1"], "n_test=1"),
        (["--n-test", "3"], "n_test=3"),
        (["--n-components", "500"], "n_components=500"),
        (["--batch-size", "101"], "batch_size=101"),
    ],
)
def test_compare_refuses_before_training(tmp_path, flags, needle):
    out = tmp_path / "out"
    assert_one_line_error(jaxrae(*TINY_COMPARE, *flags, "--out", out), needle)
    assert not (out / "methods").exists() and not (out / "checkpoints").exists()


@pytest.mark.parametrize(
    "body, needle",
    [
        ('methods = ["fsq"]\n[config]\nfsq_levels = 8\n', "config.fsq_levels=8"),
        ('methods = ["ae"]\n[config]\nsteps = "ten"\n', "config.steps='ten'"),
        ('methods = ["ae"]\n[overrides.ae]\narch = 3\n', "overrides.ae.arch=3"),
        ("methods = 5\n", "methods=5"),
        ('data = 3\nmethods = ["ae"]\n', "data=3"),
        ('methods = ["ae"]\nn_test = 2.5\n', "n_test=2.5"),
        ("methods = [1]\n", "methods=[1]"),
    ],
)
def test_toml_values_of_the_wrong_type_are_one_line(tmp_path, body, needle):
    path = tmp_path / "e.toml"
    path.write_text(body)
    assert_one_line_error(jaxrae("compare", "--config", path, "--out", tmp_path / "out"), needle)


def test_toml_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('methods = ["ae"]\n# r\xe9sum\xe9\n'.encode("latin-1"))
    assert_one_line_error(jaxrae("compare", "--config", path, "--out", tmp_path / "out"), "UTF-8")


# ---------------------------------------------------------------------------------------------
# argparse's own errors


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["nope"],
        ["train", "--no-such-flag"],
        ["compare", "--steps", "x"],
        ["train", "--steps", "1e12", "--out", "o"],
        ["train"],
    ],
)
def test_argument_errors_are_one_line_exit_2(args):
    done = jaxrae(*args)
    assert_one_line_error(done)
    assert "usage:" not in done.stderr


# ---------------------------------------------------------------------------------------------
# Ctrl-C


def test_ctrl_c_exits_130_cleanly_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "--method",
        "ae",
        "--seeds",
        "1",
        "--steps",
        "400",
        "--chunk-size",
        "10",
        "--batch-size",
        "16",
        "--latent-dim",
        "2",
        "--quiet",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxrae.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.msgpack").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130, err  # not -11 (SIGSEGV) or a traceback
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("jaxrae: interrupted")
    resumed = jaxrae(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert len(json.loads((out / "history.json").read_text())["metrics"]["loss"][0]) == 400


def test_a_swallowed_ctrl_c_still_ends_with_130(monkeypatch, capsys):
    def swallows_the_interrupt(args):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:  # what a finalizer or a C++ callback may do with it
            pass
        return 0

    monkeypatch.setattr(cli, "cmd_methods", swallows_the_interrupt)
    assert cli.main(["methods"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_compare_stops_between_rows_when_asked(tmp_path):
    experiment = Experiment(
        methods=("ae",),
        seeds=(0,),
        n_train=100,
        n_test=40,
        n_eval=20,
        feature_steps=2,
        n_components=2,
        config={"steps": 2, "chunk_size": 2, "batch_size": 16, "latent_dim": 2},
    )
    with pytest.raises(KeyboardInterrupt):
        run_compare(experiment, tmp_path / "out", progress=False, should_stop=lambda: True, log=lambda *_: None)
    assert not (tmp_path / "out" / "methods").exists()
    with prepare_out_dir(tmp_path / "out", resume=True, overwrite=False):  # the claim was released
        pass
