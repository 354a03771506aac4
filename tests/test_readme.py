"""README.md's snippets run as written, and the tests its guarantees table names exist.

Every fenced block of README.md names its language. A ``python`` or ``bash`` block is one of:

- run here: the blocks of one ``## `` section run in order in one temporary working directory
  (so a ``jaxrae train --out runs/x`` block feeds the ``load_runs("runs/x")`` block after it),
  each ``python`` block in a fresh interpreter, each ``bash`` block with ``bash -euo pipefail``;
  a bash block run here holds only ``jaxrae`` command lines (and ``export``/``wait``/comments).
  The one change made to a snippet: a ``127.0.0.1:<port>`` in it gets a free port, so two
  runs of this test on one machine cannot collide;
- run by another test: ``<!-- run by tests/<file>.py::<test> -->`` above the fence, and that
  test's body holds the same text between ``# --- README snippet: ... ---`` and
  ``# --- end of README snippet ---`` (checked here, so the two cannot drift apart);
- not run: ``<!-- not run: <why> -->`` above the fence (package installs, accelerators,
  clusters, multi-minute jobs).

The snippets are written small (a few hundred steps on ``digits``), so running them costs
about a minute; the README says in prose what a realistic length is.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TIMEOUT_S = 300  # per section; the slowest (two processes, 200 steps) takes well under a minute
RUNNABLE = ("python", "bash")

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[^`\s]*)\s*$")
_NOTE = re.compile(r"^<!--\s*(?P<kind>not run|run by)\s*:?\s*(?P<text>.*?)\s*-->$")
_LOCAL_ADDRESS = re.compile(r"127\.0\.0\.1:\d+")
# bash lines a block run here may hold besides jaxrae command lines
_SHELL_GLUE = re.compile(r"^(export \w+=\S+( \w+=\S+)*|wait( \$!)?)(\s+#.*)?$")


@dataclass(frozen=True)
class Block:
    language: str
    code: str
    line: int  # 1-based line of the opening fence
    section: str  # the "## " heading it sits under
    note_kind: str | None  # "not run", "run by" or None (run here)
    note: str  # the reason, or the test that runs it

    @property
    def name(self) -> str:
        return f"README.md:{self.line} ({self.section}, {self.language})"


def parse_blocks(text: str) -> list[Block]:
    """Every fenced block of ``text`` with its language, section and the note above it.

    A fence may be indented (inside a list item); its body is dedented. An unclosed fence is
    an error, so a broken README cannot hide blocks from the tests.
    """
    lines = text.splitlines()
    blocks, section, i = [], "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        m = _FENCE.match(line)
        if not m:
            i += 1
            continue
        indent, start = m["indent"], i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != indent + "```":
            j += 1
        assert j < len(lines), f"README.md:{start + 1}: the fence opened here is never closed"
        above = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        note = _NOTE.match(above)
        blocks.append(
            Block(
                language=m["lang"],
                code=textwrap.dedent("\n".join(lines[start + 1 : j])) + "\n",
                line=start + 1,
                section=section,
                note_kind=note["kind"] if note else None,
                note=note["text"] if note else "",
            )
        )
        i = j + 1
    return blocks


BLOCKS = parse_blocks(README.read_text(encoding="utf-8"))
RUN_HERE = [b for b in BLOCKS if b.language in RUNNABLE and b.note_kind is None]
SECTIONS = list(dict.fromkeys(b.section for b in RUN_HERE))


def _command_lines(code: str) -> list[str]:
    """The shell lines of a bash block, with backslash continuations joined and comments dropped."""
    joined = code.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _is_jaxrae_command(line: str) -> bool:
    words = shlex.split(line, comments=True)
    while words and re.fullmatch(r"\w+=\S*", words[0]):  # VAR=value prefixes
        words = words[1:]
    return bool(words) and words[0] == "jaxrae"


# ------------------------------------------------------------------------------------------
# The README's structure (fast: no JAX)


def test_the_parser_finds_the_blocks_this_file_relies_on():
    assert len(BLOCKS) >= 10 and all(b.code.strip() for b in BLOCKS)
    sections = {b.section for b in RUN_HERE}
    for needed in ("Using it", "Load a trained run", "Run on several GPUs or hosts"):
        assert needed in sections, f"no block run here under '## {needed}'"
    assert any(b.note_kind == "run by" for b in BLOCKS) and any(b.note_kind == "not run" for b in BLOCKS)
    # the parser itself: an indented fence, a note above, an unclosed fence
    parsed = parse_blocks(
        "## A\n\n<!-- not run: needs a GPU -->\n```bash\npip x\n```\n\n- item\n\n  ```toml\n  a = 1\n  ```\n"
    )
    assert [(b.language, b.section, b.note_kind, b.note, b.code) for b in parsed] == [
        ("bash", "A", "not run", "needs a GPU", "pip x\n"),
        ("toml", "A", None, "", "a = 1\n"),
    ]
    with pytest.raises(AssertionError, match="never closed"):
        parse_blocks("```python\nx = 1\n")


def test_every_block_names_its_language_and_is_run_or_says_why_not():
    for block in BLOCKS:
        assert block.language, f"{block.name}: a fence without a language (the tests key on it)"
        if block.note_kind == "not run":
            assert len(block.note.split()) >= 3, f"{block.name}: 'not run' must say why"
        if block.language == "bash" and block.note_kind is None:
            for line in _command_lines(block.code):
                assert _is_jaxrae_command(line) or _SHELL_GLUE.match(line), (
                    f"{block.name}: `{line}` is not a jaxrae command line; run it here or mark the block "
                    "<!-- not run: why -->"
                )


def test_snippets_use_typed_keys_and_jax_tree():
    for block in BLOCKS:
        if block.language != "python":
            continue
        for old in ("PRNGKey", "jax.tree_util", "tree_map(", "tree_leaves("):
            if old in ("tree_map(", "tree_leaves(") and re.search(r"jax\.tree\." + re.escape(old), block.code):
                continue
            assert old not in block.code, f"{block.name}: uses {old} (use jax.random.key and jax.tree.*)"


def _test_functions(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name: node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def test_every_test_the_guarantees_table_names_exists():
    text = README.read_text(encoding="utf-8")
    table = text.split("## What jaxrae guarantees", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("|---")][1:]
    assert len(rows) >= 20
    cited = 0
    for row in rows:
        current = None  # the file a bare "::test_x" or "test_x" refers to: the last one named in the row
        for token in re.findall(r"`([^`]+)`", row.split(" | ")[-1]):
            m = re.fullmatch(r"(tests/\w+\.py)(?:::(\w+))?", token)
            if m:
                current = REPO / m[1]
                assert current.is_file(), f"guarantees table: {m[1]} does not exist"
                name = m[2]
            elif re.fullmatch(r"(::)?test_\w+", token):
                assert current is not None, f"guarantees table: `{token}` follows no tests/ file in its row"
                name = token.removeprefix("::")
            else:
                continue
            if name:
                assert name in _test_functions(current), f"guarantees table: {current.name}::{name} does not exist"
                cited += 1
    assert cited >= 50  # the parser finds the citations (59 when written)


def _marked_snippet(test: str) -> str:
    path, name = test.split("::")
    source = (REPO / path).read_text(encoding="utf-8")
    function = _test_functions(REPO / path)[name]
    body = "\n".join(source.splitlines()[function.lineno - 1 : function.end_lineno])
    m = re.search(
        r"\n[ \t]*# --- README snippet: [^\n]*---\n(.*?)\n[ \t]*# --- end of README snippet ---", body, re.DOTALL
    )
    assert m, f"{test} has no '# --- README snippet' markers"
    return textwrap.dedent(m[1])


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.note_kind == "run by"], ids=lambda b: f"line{b.line}")
def test_a_block_run_by_another_test_is_that_tests_text(block):
    assert re.fullmatch(r"tests/\w+\.py::test_\w+", block.note), f"{block.name}: 'run by' names tests/<file>.py::<test>"
    expected = _marked_snippet(block.note)
    assert block.code.strip("\n") == expected.strip("\n"), f"{block.name} differs from the snippet in {block.note}"


# ------------------------------------------------------------------------------------------
# Running the snippets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(tmp: Path) -> dict:
    """A clean environment: this repository's jaxrae first, CPU, caches in the temporary directory,
    and a ``jaxrae`` on PATH that is this interpreter running this checkout's CLI."""
    bin_dir = tmp / ".bin"
    bin_dir.mkdir()
    launcher = bin_dir / "jaxrae"
    launcher.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "import sys; from jaxrae.cli import main; sys.exit(main())" "$@"\n'
    )
    launcher.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "JAX_", "JAXRAE_", "PYTHONPATH"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(REPO),
        JAX_PLATFORMS="cpu",
        JAXRAE_CACHE=str(tmp / ".cache"),
        # The suite's compilation cache (tests/conftest.py), not the user's ~/.cache: it changes
        # no result, and snippets that compile what other tests compiled load it instead.
        JAXRAE_COMPILATION_CACHE=os.environ["JAXRAE_COMPILATION_CACHE"],
        MPLBACKEND="Agg",
    )
    return env


def _run(argv: list[str], cwd: Path, env: dict, name: str) -> None:
    # A session of its own, so that a background process a snippet starts (the second process of
    # the multi-host block) is killed with it whatever happens.
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        out = ""
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, f"{name} failed (exit {proc.returncode}):\n{(out or '')[-4000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("section", SECTIONS)
def test_the_snippets_of_a_section_run_in_order(section, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = _environment(tmp_path)
    for block in (b for b in RUN_HERE if b.section == section):
        port = _free_port()
        code = _LOCAL_ADDRESS.sub(f"127.0.0.1:{port}", block.code)
        if block.language == "python":
            script = tmp_path / f"snippet_line{block.line}.py"
            script.write_text(code)
            _run([sys.executable, str(script)], work, env, block.name)
        else:
            _run(["bash", "-euo", "pipefail", "-c", code], work, env, block.name)
