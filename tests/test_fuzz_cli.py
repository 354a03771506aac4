"""Random flags and random TOML documents through the `jaxrae` command (hypothesis).

Whatever the input, the command must end with status 0 or 2 (never a traceback), write nothing
outside --out (the feature cache and the compilation cache aside, which live in $JAXRAE_CACHE and
$JAXRAE_COMPILATION_CACHE), and never delete an old
result on a failed run. The in-process examples call ``jaxrae.cli.main(argv)`` with training
replaced by a stop (:class:`ReachedTraining`): everything up to it runs for real (parsing, every
validation, loading the data, claiming and emptying --out), which is where these promises are
kept, and the module stays around a minute. A valid run trains and evaluates end to end in
tests/test_cli.py and tests/test_compare.py; a few examples here go through a subprocess, unstubbed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxrae import cli, compare
from jaxrae.io import MARKER

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

#: Values a hostile user types: numbers out of every range, the wrong type, empty, odd text.
WEIRD_TEXT = st.sampled_from(
    [
        "",
        "0",
        "-1",
        "1",
        "2",
        "3",
        "1e12",
        "1e23",
        "1e20",
        "10000000000",
        "4294967296",
        "nan",
        "inf",
        "-0.5",
        "0.001",
        "x",
        "a,b",
        "0,0",
        "-1,0",
        "0,4294967296",
        "ae",
        "drae",
        "\u00e9",
        "1,2,3",
    ]
)
SMALL_INT = st.integers(min_value=-2, max_value=4)

#: Flags whose values can make a run big are drawn from small values (the size bounds on steps,
#: images and feature steps are TrainConfig's and the data layer's, tested there).
SIZE_FLAGS = {
    "--steps": st.sampled_from(["1", "2", "0", "-1", "x", "1e12", "2.5"]),
    "--feature-steps": st.sampled_from(["1", "2", "0", "-3", "y"]),
    "--n-train": st.sampled_from(["100", "64", "0", "-5", "1", "abc"]),
    "--batch-size": st.sampled_from(["8", "16", "0", "101", "1e3"]),
}
OTHER_FLAGS = [
    "--seeds",
    "--lr",
    "--latent-dim",
    "--n-classes",
    "--beta",
    "--lam",
    "--tau",
    "--arch",
    "--estimator",
    "--fsq-levels",
    "--n-test",
    "--n-eval",
    "--n-components",
    "--baseline",
    "--data",
    "--methods",
    "--chunk-size",
    "--sweep",
    "--nonexistent-flag",
]


@st.composite
def flag_lists(draw):
    flags = []
    for flag in draw(st.lists(st.sampled_from(sorted(SIZE_FLAGS) + OTHER_FLAGS), max_size=5, unique=True)):
        if flag == "--sweep":
            value = draw(st.sampled_from(["lr=1e-3", "foo=1", "beta=", "=", "lr=x", "tau=0"]))
        elif flag == "--methods":
            value = draw(st.sampled_from(["ae", "nope", "ae,ae", "", "ae,drae"]))
        elif flag == "--data":
            value = draw(
                st.sampled_from(["digits", "idx:/nonexistent", "tfds:nope", "nonsense", "digits@image_size=0"])
            )
        else:
            value = draw(SIZE_FLAGS.get(flag, WEIRD_TEXT))
        flags += [f"{flag}={value}"]
    return flags


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def toml_document(doc: dict) -> str:
    """A TOML text for ``doc``: top-level keys first, then [table] and [table.sub] headers."""
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for key, table in doc.items():
        if not isinstance(table, dict):
            continue
        subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
        lines.append(f"[{json.dumps(key)}]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
        for sub, fields in subtables.items():
            lines.append(f"[{json.dumps(key)}.{json.dumps(sub)}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in fields.items() if not isinstance(v, dict)]
    return "\n".join(lines) + "\n"


SCALARS = st.one_of(
    SMALL_INT,
    st.sampled_from([2**32, 10**20, -(2**40)]),
    st.floats(allow_nan=True, width=32),
    st.booleans(),
    st.sampled_from(["ae", "drae", "nope", "", "mlp", "st", "x y"]),
)
VALUES = st.one_of(SCALARS, st.lists(st.one_of(SMALL_INT, st.sampled_from([8, 5, "a", 1.5])), max_size=4))
CONFIG_KEYS = st.sampled_from(
    ["latent_dim", "batch_size", "lr", "beta", "tau", "arch", "estimator", "fsq_levels", "n_classes", "method", "bogus"]
)
TABLE = st.dictionaries(CONFIG_KEYS, VALUES, max_size=3)
DOCUMENTS = st.fixed_dictionaries(
    {},
    optional={
        "methods": st.one_of(st.sampled_from([["ae"], ["ae", "nope"], [], "ae", ["ae", "ae"]]), SCALARS),
        "seeds": st.one_of(st.sampled_from([1, 2, 0, -1, 10**10, [0, 2**32], [-1, 0], [0, 0], [1e20]]), VALUES),
        "n_test": st.sampled_from([1, 3, 40, 0, "40", 2.5]),
        "n_components": st.sampled_from([2, 500, 0, -1]),
        "baseline": st.sampled_from(["ae", "nope", 3]),
        "data": st.sampled_from(["digits", "idx:/nonexistent", 3]),
        "bogus": SCALARS,
        "config": TABLE,
        "overrides": st.dictionaries(st.sampled_from(["ae", "nope"]), TABLE, max_size=2),
        "variants": st.one_of(
            st.dictionaries(
                st.sampled_from(["v1", "bad/label", "ae"]), TABLE.map(lambda t: {"method": "ae", **t}), max_size=2
            ),
            SCALARS,
        ),
    },
)

#: Every compare example runs small unless the example itself is refused: 100/40 images, 2 steps.
TINY = ["--n-train=100", "--n-eval=20", "--feature-steps=2", "--steps=2", "--chunk-size=2", "--quiet"]


class ReachedTraining(Exception):
    """Raised where training would start: every check before it passed."""


def stub_training():
    """Training and evaluation replaced by :class:`ReachedTraining` (``train`` after its claim of --out,
    ``compare`` once its claim is held and --out emptied)."""
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(cli, "train", side_effect=ReachedTraining))
    stack.enter_context(mock.patch.object(compare, "_run_claimed", side_effect=ReachedTraining))
    return stack


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_in_a_sandbox(argv_for, old_results: bool, *, subprocess_run: bool = False) -> tuple[int, str]:
    """Run ``argv_for(out)`` with a fresh working directory; check the three promises; return (status, stderr)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out = root / "out"
        if old_results:
            out.mkdir()
            (out / MARKER).write_text("jaxrae\n")
            (out / "results.json").write_text('{"old": true}')
        (root / "neighbour.txt").write_text("keep")
        argv = argv_for(out)
        outside_before = {k: v for k, v in files_under(root).items() if not k.startswith("out")}
        if subprocess_run:
            done = subprocess.run(
                [sys.executable, "-m", "jaxrae.cli", *argv],
                capture_output=True,
                text=True,
                cwd=root,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
                timeout=600,
            )
            status, err = done.returncode, done.stderr
        else:
            cwd = os.getcwd()
            stderr = io.StringIO()
            try:
                os.chdir(root)
                with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()), stub_training():
                    try:
                        status = cli.main(argv)
                    except ReachedTraining:
                        status = 0
            finally:
                os.chdir(cwd)
            err = stderr.getvalue()
        assert status in (0, 2), (argv, status, err)
        assert "Traceback" not in err, (argv, err)
        if status == 2:
            assert err.strip().startswith("jaxrae: error:") and "\n" not in err.strip(), (argv, err)
        outside_after = {k: v for k, v in files_under(root).items() if not k.startswith("out")}
        assert outside_after == outside_before, (argv, set(outside_after) ^ set(outside_before))
        if old_results and status != 0:
            assert (out / "results.json").read_text() == '{"old": true}', argv
        return status, err


@SETTINGS
@given(
    command=st.sampled_from(["train", "compare"]),
    flags=flag_lists(),
    old=st.booleans(),
    mode=st.sampled_from([[], ["--resume"], ["--overwrite"], ["--resume", "--overwrite"]]),
)
def test_random_flags(command, flags, old, mode):
    extra = ["--method=ae"] if command == "train" else ["--methods=ae", "--n-test=40", "--seeds=1"]
    run_in_a_sandbox(
        lambda out: [
            command,
            *extra,
            *TINY[3:],
            *([] if command == "train" else TINY[:3]),
            *flags,
            *mode,
            f"--out={out}",
        ],
        old,
    )


@SETTINGS
@given(
    doc=DOCUMENTS,
    old=st.booleans(),
    mode=st.sampled_from([[], ["--overwrite"], ["--resume"]]),
    corrupt=st.sampled_from([None, None, None, b"\xff\xfe", b"[config\n", b"\x00"]),
)
def test_random_toml_documents(doc, old, mode, corrupt):
    def argv(out):
        path = out.parent / "experiment.toml"
        text = toml_document(doc).encode("utf-8", "surrogatepass")
        path.write_bytes(text + corrupt if corrupt else text)
        return ["compare", "--config", str(path), *TINY, *mode, f"--out={out}"]

    run_in_a_sandbox(argv, old)


@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(flags=flag_lists(), old=st.booleans())
def test_random_flags_through_a_subprocess(flags, old):
    run_in_a_sandbox(lambda out: ["compare", "--methods=nope", *TINY, *flags, f"--out={out}"], old, subprocess_run=True)
