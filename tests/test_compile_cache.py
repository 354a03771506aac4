"""The CLI's persistent compilation cache: on by default in the user's cache directory, shared safely
by processes that run at once, the same losses from a cached program as from a fresh compile,
``--no-compile-cache`` to opt out, and a bad default location only a warning."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from jaxrae import distributed
from jaxrae.cli import main

TINY_TRAIN = [
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
    "2",
    "--quiet",
]

# Runs the CLI in a fresh process and counts JAX's persistent-cache events: a hit is a program loaded
# from the cache; JAX records a "miss" when it writes a freshly compiled program into the cache.
_COUNTING_CLI = textwrap.dedent("""
    import json, sys
    import jax
    events = []
    jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
    from jaxrae.cli import main
    status = main(sys.argv[1:])
    print("CACHE " + json.dumps(dict(status=status, hits=events.count("/jax/compilation_cache/cache_hits"),
                                     writes=events.count("/jax/compilation_cache/cache_misses"))))
""")


def _start(tmp_path, out: str, *flags: str) -> subprocess.Popen:
    # The default location, under a private XDG_CACHE_HOME (conftest's JAXRAE_COMPILATION_CACHE removed).
    env = {k: v for k, v in os.environ.items() if k != distributed.ENV_COMPILATION_CACHE}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), PYTHONWARNINGS="ignore")
    return subprocess.Popen(
        [sys.executable, "-c", _COUNTING_CLI, *TINY_TRAIN, "--out", str(tmp_path / out), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen, tmp_path, out: str) -> tuple[dict, dict]:
    stdout, stderr = proc.communicate(timeout=600)
    lines = [line for line in stdout.splitlines() if line.startswith("CACHE ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{stdout[-2000:]}\n{stderr[-3000:]}"
    counts = json.loads(lines[-1][len("CACHE ") :])
    assert counts["status"] == 0, stderr
    history = json.loads((tmp_path / out / "history.json").read_text())
    return counts, {k: history[k] for k in ("metrics", "test_reconstruction_error", "diverged_at")}


def test_a_second_train_process_is_served_from_the_cache_with_the_same_losses(tmp_path):
    # Two processes compile the same programs into one empty cache at once (the concurrent writers
    # enable_compilation_cache's docstring discusses), then a third starts warm and one opts out.
    first, second = _start(tmp_path, "a"), _start(tmp_path, "b")
    (counts_a, history_a), (counts_b, history_b) = _finish(first, tmp_path, "a"), _finish(second, tmp_path, "b")
    cache = tmp_path / "xdg" / "jaxrae" / "xla"
    assert counts_a["writes"] + counts_b["writes"] >= 1, (
        counts_a,
        counts_b,
    )  # the later one may be served by the other
    assert any(cache.iterdir())
    warm, opted_out = _start(tmp_path, "c"), _start(tmp_path, "d", "--no-compile-cache")
    (counts_c, history_c), (counts_d, history_d) = _finish(warm, tmp_path, "c"), _finish(opted_out, tmp_path, "d")
    # The training chunk (about a second to compile here) at least comes from the cache. Programs that
    # compile in about the threshold's time (0.1 s) may be written by one run and not another.
    assert counts_c["hits"] >= 1, counts_c
    assert counts_d == {"status": 0, "hits": 0, "writes": 0}
    # A torn entry (what a reader meets while a writer is still at work, or what a killed writer
    # leaves) is detected when read and compiled afresh, never run.
    for entry in cache.iterdir():
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    counts_e, history_e = _finish(_start(tmp_path, "e"), tmp_path, "e")
    assert counts_e["hits"] == 0, counts_e
    # json round-trips floats exactly (repr), so equal lists mean bitwise-equal losses.
    assert history_a == history_b == history_c == history_d == history_e


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert distributed.default_compilation_cache_dir() == tmp_path / "xdg" / "jaxrae" / "xla"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for unset in ("", "relative/path"):  # the XDG spec ignores a relative XDG_CACHE_HOME
        monkeypatch.setenv("XDG_CACHE_HOME", unset)
        assert distributed.default_compilation_cache_dir() == tmp_path / "home" / ".cache" / "jaxrae" / "xla"


@pytest.mark.parametrize("file_at", ["xdg", "xdg/jaxrae/xla"])
def test_a_default_cache_location_that_cannot_be_a_directory_is_one_warning(monkeypatch, tmp_path, capsys, file_at):
    # Under a file or at a file: the command runs on (caching only saves time), with one line saying why.
    (tmp_path / file_at).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / file_at).write_text("x")
    monkeypatch.delenv(distributed.ENV_COMPILATION_CACHE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert main(["methods"]) == 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("jaxrae: warning:") and "without the compilation cache" in err, err
    for argv in (
        ["--no-compile-cache", "methods"],
        ["methods", "--no-compile-cache"],
    ):  # opted out: nothing to warn about
        assert main(argv) == 0
        assert capsys.readouterr().err == ""


def test_an_explicit_cache_location_that_is_a_file_is_a_config_error(monkeypatch, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv(distributed.ENV_COMPILATION_CACHE, str(tmp_path / "file"))
    assert main(["methods"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("jaxrae: error:") and distributed.ENV_COMPILATION_CACHE in err, err
    assert main(["--no-compile-cache", "methods"]) == 0  # opting out does not look at the variable
