"""Scale: the run axis sharded over devices and processes gives the same runs as one device.

Each scenario needs a fresh interpreter (XLA_FLAGS must be set before JAX is imported;
``jax.distributed`` can be initialized once per process), so they run as subprocesses. They are
started together by one module fixture, so their imports and compilations overlap, and each
prints one JSON line that the tests read. Configurations are tiny (the ``ae`` MLP on digits,
batch 16, 10 steps in two equal chunks: one compilation, and a second call that checks the
state keeps the layout the chunk was compiled for).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxrae import distributed
from jaxrae.errors import ConfigError

CONFIG = dict(method="ae", steps=10, batch_size=16, chunk_size=5)
TIMEOUT = 240

# Shared head of every child: the config and a spy on distributed.to_host, through which
# train() passes the device state at the end (so its shardings can be inspected).
_HEAD = f"""
import json, sys
import jax, numpy as np
import jaxrae
from jaxrae import distributed
from jaxrae.config import TrainConfig
from jaxrae.train import train

CONFIG = TrainConfig(**{CONFIG!r})
layouts = []
_to_host = distributed.to_host
def _spy(tree):
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if isinstance(x, jax.Array)]
    if leaves and leaves[0].ndim >= 1:
        layouts.append([dict(spec=[str(a) for a in getattr(x.sharding, "spec", ["?"])], n_devices=len(x.sharding.device_set),
                             local_rows=sorted(s.index[0].start or 0 for s in x.addressable_shards),
                             shard_rows=[s.data.shape[0] for s in x.addressable_shards]) for x in leaves])
    return _to_host(tree)
distributed.to_host = _spy
data = jaxrae.load_data("digits")
"""

_FOUR_DEVICES = """
out = {"devices": len(jax.devices())}
for seeds in ([0, 1, 2, 3], [0, 1, 2]):
    layouts.clear()
    runs = train(CONFIG, data, seeds, progress=False)
    out[str(len(seeds))] = dict(losses=runs.losses.tolist(), layout=layouts[-1], n_runs=runs.n_runs,
                                params_rows=int(jax.tree_util.tree_leaves(runs.state.params)[0].shape[0]))
print("RESULT " + json.dumps(out))
"""

_TWO_PROCESSES = """
distributed.initialize()  # from JAXRAE_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID; before any computation
from jaxrae import io as jio
saves = []
_save = jio.save_checkpoint
jio.save_checkpoint = lambda *a, **k: (saves.append(1), _save(*a, **k))
runs = train(CONFIG, data, [0, 1, 2, 3], progress=False, checkpoint_path=sys.argv[1])
print("RESULT " + json.dumps(dict(process=jax.process_index(), processes=jax.process_count(), devices=len(jax.devices()),
      losses=runs.losses.tolist(), layout=layouts[-1], saves=len(saves), primary=distributed.is_primary())))
"""

_CACHE = """
from jax.experimental.compilation_cache import compilation_cache as cc
T = sys.modules["jaxrae.train"]  # the module (the package re-exports the function under that name)
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
distributed.enable_compilation_cache(sys.argv[1], min_compile_time_s=0.0)
first = train(CONFIG, data, [0, 1, 2, 3], progress=False)  # also the single-device reference
# Forget every in-memory compilation, as a new CLI process would, then train again.
T._vmapped_programs.cache_clear(); T._training_functions.cache_clear(); jax.clear_caches()
events.clear()
second = train(CONFIG, data, [0, 1, 2, 3], progress=False)
print("RESULT " + json.dumps(dict(hits=events.count("/jax/compilation_cache/cache_hits"), devices=len(jax.devices()), losses=first.losses.tolist(),
      same=bool(np.array_equal(first.losses, second.losses)))))
"""


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "JAX_", "JAXRAE_"))}
    env.update(JAX_PLATFORMS="cpu", **extra)
    return env


def _start(body: str, *args: str, **env) -> subprocess.Popen:
    code = textwrap.dedent(_HEAD) + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _result(proc: subprocess.Popen) -> dict:
    if hasattr(proc, "result"):
        return proc.result
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"child failed (rc={proc.returncode}):\n{err[-3000:]}"
    proc.result = json.loads(lines[-1][len("RESULT ") :])
    return proc.result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    """Start every scenario at once; the tests collect their results."""
    tmp = tmp_path_factory.mktemp("scale")
    port = _free_port()
    procs = {
        "four_devices": _start(_FOUR_DEVICES, XLA_FLAGS="--xla_force_host_platform_device_count=4"),
        "cache": _start(_CACHE, str(tmp / "cache")),
    }
    for pid in range(2):
        procs[f"process{pid}"] = _start(
            _TWO_PROCESSES,
            str(tmp / "checkpoint.msgpack"),
            JAXRAE_COORDINATOR=f"127.0.0.1:{port}",
            JAXRAE_NUM_PROCESSES="2",
            JAXRAE_PROCESS_ID=str(pid),
        )
    yield procs, tmp
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()


class _Reference:
    def __init__(self, losses):
        self.losses = np.asarray(losses)


@pytest.fixture(scope="module")
def reference(children):
    """The same 4 runs in one process on one device (the cache child's first, uncached training)."""
    res = _result(children[0]["cache"])
    assert res["devices"] == 1
    return _Reference(res["losses"])


def test_sharded_over_four_devices_matches_one_device(children, reference):
    res = _result(children[0]["four_devices"])
    assert res["devices"] == 4
    # 4 runs on 4 devices: one run per device, for every leaf of the state.
    for leaf in res["4"]["layout"]:
        assert leaf["spec"][0] == "runs" and set(leaf["spec"][1:]) <= {"None"} and leaf["n_devices"] == 4
        assert leaf["shard_rows"] == [1, 1, 1, 1] and leaf["local_rows"] == [0, 1, 2, 3]
    np.testing.assert_allclose(res["4"]["losses"], reference.losses, rtol=1e-5, atol=1e-6)
    # 3 runs are padded to 4 on the devices, and the padding is dropped from the result.
    assert res["3"]["n_runs"] == 3 and res["3"]["params_rows"] == 3
    assert all(leaf["shard_rows"] == [1, 1, 1, 1] for leaf in res["3"]["layout"])
    np.testing.assert_allclose(res["3"]["losses"], reference.losses[:3], rtol=1e-5, atol=1e-6)


def test_two_processes_match_one_process(children, reference):
    procs, tmp = children
    results = sorted((_result(procs[f"process{i}"]) for i in range(2)), key=lambda r: r["process"])
    for pid, res in enumerate(results):
        assert res["processes"] == 2 and res["devices"] == 2  # the mesh spans both processes
        # Each process holds (trains) only its half of the runs: rows 2*pid, 2*pid + 1.
        for leaf in res["layout"]:
            assert leaf["spec"][0] == "runs" and set(leaf["spec"][1:]) <= {"None"} and leaf["n_devices"] == 2
            assert leaf["local_rows"] == [2 * pid] and leaf["shard_rows"] == [2]
        # ...and returns every run, gathered.
        np.testing.assert_allclose(res["losses"], reference.losses, rtol=1e-5, atol=1e-6)
    assert results[0]["primary"] and not results[1]["primary"]
    assert results[0]["saves"] == 2 and results[1]["saves"] == 0  # one writer, once per chunk
    assert (tmp / "checkpoint.msgpack").exists()


def test_persistent_compilation_cache_serves_a_fresh_compile(children):
    res = _result(children[0]["cache"])
    res.pop("losses")
    assert res["hits"] >= 1, res
    assert res["same"]


def test_initialize_names_missing_settings(monkeypatch):
    for name in ("JAXRAE_COORDINATOR", "JAXRAE_NUM_PROCESSES", "JAXRAE_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAXRAE_NUM_PROCESSES", "two")
    with pytest.raises(ConfigError, match="JAXRAE_NUM_PROCESSES='two'"):
        distributed.initialize()
    with pytest.raises(ConfigError, match="process_id=3"):
        distributed.initialize("127.0.0.1:1", num_processes=2, process_id=3)


def test_single_process_helpers():
    assert distributed.is_primary() and distributed.process_count() == 1
    tree = {"a": np.arange(6.0).reshape(3, 2), "b": np.int32(4)}
    back = distributed.to_host(distributed.put(tree, None))
    np.testing.assert_array_equal(back["a"], tree["a"])
    assert isinstance(back["a"], np.ndarray) and back["b"] == 4


@pytest.mark.slow
def test_two_process_compare_writes_once_and_matches_one_process(tmp_path):
    """`jaxrae --distributed compare` in two processes: the primary claims --out and writes every
    file, the other process exits 0 having written nothing, and the trained runs equal one
    process's to the rounding bound of test_two_processes_match_one_process (two processes run a
    program of another shape; the evaluation's mixture fits and FDs can amplify that rounding, so
    the numbers compared are the final training losses)."""
    args = [
        "compare",
        "--methods",
        "ae",
        "--seeds",
        "2",
        "--steps",
        "20",
        "--n-train",
        "200",
        "--n-test",
        "60",
        "--likelihood-k",
        "4",
        "--no-tensorboard",
        "--quiet",
    ]
    jaxrae = [sys.executable, "-m", "jaxrae.cli"]
    port = _free_port()
    procs = [
        subprocess.Popen(
            [*jaxrae, "--distributed", *args, "--out", str(tmp_path / "two")],
            cwd=tmp_path,
            env=_env(
                JAXRAE_COORDINATOR=f"127.0.0.1:{port}",
                JAXRAE_NUM_PROCESSES="2",
                JAXRAE_PROCESS_ID=str(pid),
                PYTHONPATH=os.getcwd(),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(2)
    ]
    one = subprocess.run(
        [*jaxrae, *args, "--out", str(tmp_path / "one")],
        cwd=tmp_path,
        env=_env(PYTHONPATH=os.getcwd()),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    for proc, (_out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-2000:]
    assert "rows (methods and variants)" in outputs[0][0] and " ok, " in outputs[0][0]  # the primary reports
    assert "rows (methods and variants)" not in outputs[1][0] and " ok, " not in outputs[1][0]
    assert one.returncode == 0, one.stderr[-2000:]
    two_results = json.loads((tmp_path / "two" / "results.json").read_text())["methods"]["ae"]
    one_results = json.loads((tmp_path / "one" / "results.json").read_text())["methods"]["ae"]
    assert two_results["seeds"] == one_results["seeds"] == [0, 1]
    np.testing.assert_allclose(two_results["final_loss"], one_results["final_loss"], rtol=1e-5, atol=1e-6)
    assert set(two_results["metrics"]) == set(one_results["metrics"])
