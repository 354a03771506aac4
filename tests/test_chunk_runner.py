"""The two ways train() runs a chunk: one compiled lax.scan, or a loop of the compiled, donated step.

Both take the same steps with the same keys (step t draws from fold_in(run_key, t)); XLA fuses the
straight-line step and the scan's loop body differently, so they agree to float32 rounding,
bounded in :func:`_assert_same_runs` from the arithmetic. Any difference in keys, batches, step
count, metric order or the divergence freeze changes a loss by far more (another batch: O(1)).
Configurations are tiny (conv-small on 8x8 digits, batch 8) and shared, so compiled programs are.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import chex
import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxrae.cli import build_parser, config_from_args
from jaxrae.config import CHUNK_RUNNERS, TrainConfig
from jaxrae.errors import ConfigError
from jaxrae.nets import Arch
from jaxrae.train import resolve_chunk_runner, train

T = importlib.import_module("jaxrae.train")  # the module (the package re-exports train, the function)

# 7 steps in chunks of 3: two full chunks and a remainder of 1, so the loop's stacking is checked
# on every chunk length train() makes.
CONV = TrainConfig(method="rae", arch="conv-small", steps=7, batch_size=8, chunk_size=3, latent_dim=4)
SEEDS = [0, 1]
SHAPE = (8, 8, 1)


def _assert_same_runs(loop, scan, config):
    """Equal up to float32 rounding. The widest sum of a step runs over batch x pixels terms, whose
    rounding is at most n * eps relative (eps = 2**-24); compounded over the steps, a metric or a
    batch statistic may differ by rtol = batch * pixels * steps * eps. Adam divides by sqrt(v), so
    a gradient at rounding level (a batch-norm bias, whose gradient nearly cancels) still moves its
    parameter by up to lr, either way: parameters may differ by 2 * lr * steps absolute. Counters
    and flags are exact."""
    rtol = config.batch_size * int(np.prod(SHAPE)) * config.steps * 2.0**-24
    exact = lambda runs: (runs.state.step, runs.state.diverged_at, runs.state.hparams)
    chex.assert_trees_all_equal(exact(loop), exact(scan))
    chex.assert_trees_all_close(loop.state.params, scan.state.params, rtol=0, atol=2 * config.lr * config.steps)
    chex.assert_trees_all_close(
        (loop.state.batch_stats, loop.metrics), (scan.state.batch_stats, scan.metrics), rtol=rtol, atol=rtol
    )


def _both(config, digits, **kwargs):
    return tuple(
        train(config.replace(chunk_runner=r), digits, SEEDS, progress=False, **kwargs) for r in ("scan", "loop")
    )


def test_loop_gives_the_scans_states_and_history(digits):
    scan, loop = _both(CONV, digits)
    assert loop.losses.shape == (2, CONV.steps) and set(loop.metrics) == set(scan.metrics)
    _assert_same_runs(loop, scan, CONV)
    assert np.all(np.diff(scan.losses, axis=1) != 0)  # every step is a new step, not a repeated one


def test_loop_gives_the_scans_first_step_with_batch_norm(digits):
    """conv-paper: batch statistics are carried through the loop too. One step, from the same
    initial state: its metrics, the batch statistics it leaves and the parameters agree within
    :func:`_assert_same_runs`'s bounds. Over several steps batch norm divides by the batch's
    standard deviation, which amplifies the rounding of earlier updates past any plain-sum bound
    (latent_reg 1.2e-4 relative after 2 steps), so longer runs are compared in the conv-small test.
    (Spectral norm is left out: its power iteration renormalizes u every step, likewise.)"""
    config = CONV.replace(method="rae", arch="conv-paper", steps=1, chunk_size=1, batch_size=4)
    scan, loop = _both(config, digits)
    assert jax.tree.leaves(scan.state.batch_stats)  # the state does carry batch statistics
    _assert_same_runs(loop, scan, config)
    means = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(scan.state.batch_stats) if "mean" in str(path)]
    assert means and all(np.any(np.asarray(m) != 0) for m in means)  # running means left their init (0)


def test_auto_runs_convolutions_on_cpu_as_a_loop_and_everything_else_as_a_scan():
    assert jax.default_backend() == "cpu"
    assert resolve_chunk_runner(CONV, SHAPE) == "loop"
    assert resolve_chunk_runner(CONV.replace(arch="conv-paper"), SHAPE) == "loop"
    assert resolve_chunk_runner(CONV.replace(arch="mlp"), SHAPE) == "scan"
    for backend in ("gpu", "tpu"):  # one compiled chunk per progress-bar update on accelerators
        assert resolve_chunk_runner(CONV, SHAPE, backend=backend) == "scan"
    for runner in ("scan", "loop"):  # an explicit choice is obeyed everywhere
        for backend in ("cpu", "gpu"):
            assert resolve_chunk_runner(CONV.replace(chunk_runner=runner), SHAPE, backend=backend) == runner


class _ConvEncoder(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        return nn.Conv(4, (3, 3))(x).reshape((x.shape[0], -1))


class _DenseEncoder(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        return nn.Dense(8)(x.reshape((x.shape[0], -1)))


class _DenseDecoder(nn.Module):
    @nn.compact
    def __call__(self, z, train):
        return nn.Dense(64)(z).reshape((z.shape[0], *SHAPE))


def test_auto_finds_a_convolution_in_your_own_modules():
    conv = CONV.replace(arch=Arch(_ConvEncoder(), _DenseDecoder()))
    dense = CONV.replace(arch=Arch(_DenseEncoder(), _DenseDecoder()))
    assert resolve_chunk_runner(conv, SHAPE) == "loop"
    assert resolve_chunk_runner(dense, SHAPE) == "scan"


def test_mlp_keeps_one_compiled_scan_per_chunk(digits):
    """auto on the MLP is the scan itself: the chunk programs train() compiles are the scan's."""
    config = TrainConfig(method="rae", steps=7, batch_size=8, chunk_size=3, latent_dim=4)
    train(config, digits, SEEDS, progress=False)
    # train() compiles for the config with its weights resolved for the images
    lengths = sorted(key[0] for key in T._vmapped_programs(config.for_images(SHAPE), SHAPE, False)[2])
    assert lengths == [1, 3]  # the full chunk and the remainder, one program each
    train(CONV, digits, SEEDS, progress=False)
    assert [key[0] for key in T._vmapped_programs(CONV.for_images(SHAPE), SHAPE, False)[2]] == [
        "one step"
    ]  # the loop's program
    # ...which holds no training loop (the while loops left are the PRNG's, on uint32 only)
    resolved = CONV.for_images(SHAPE)
    text = T._one_step_program(resolved, SHAPE, False).lower(*_example(resolved)).as_text()
    assert not [line for line in text.splitlines() if "stablehlo.while" in line and "f32" in line]


def _example(config):
    """A stacked initial state of 2 runs and a few images, to lower a program with."""
    init = T._vmapped_programs(config, SHAPE, False)[0]
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    hparams = jax.tree.map(lambda v: np.full((2,), v, np.float32), T.default_hparams(config))
    return init(keys, hparams), np.zeros((10, *SHAPE), np.uint8)


def test_loop_resumes_from_a_checkpoint_to_the_uninterrupted_result(digits, tmp_path):
    config = CONV.replace(chunk_runner="loop")
    path = tmp_path / "ckpt.msgpack"
    partial = train(config, digits, SEEDS, checkpoint_path=path, stop_after_chunks=1, progress=False)
    assert partial.losses.shape == (2, 3)
    resumed = train(config, digits, SEEDS, checkpoint_path=path, progress=False)
    straight = train(config, digits, SEEDS, progress=False)
    chex.assert_trees_all_equal((resumed.state, resumed.metrics), (straight.state, straight.metrics))


def test_loop_freezes_a_diverging_run_as_the_scan_does(digits):
    sweep = {"lr": [5e-4, 1e30]}
    scan, loop = _both(CONV, digits, sweep=sweep)
    assert list(loop.diverged_at[:2]) == [-1, -1] and np.all(loop.diverged_at[2:] >= 0)
    np.testing.assert_array_equal(loop.diverged_at, scan.diverged_at)
    first_two = lambda runs: SimpleNamespace(
        **jax.tree.map(lambda leaf: leaf[:2], dict(state=runs.state, metrics=runs.metrics))
    )
    _assert_same_runs(first_two(loop), first_two(scan), CONV)
    chex.assert_tree_all_finite(loop.state.params)  # frozen at the last finite parameters


def test_chunk_runner_is_validated_and_a_flag():
    for bad in ("fast", "Scan", "", None, 1):
        with pytest.raises(ConfigError, match="chunk_runner"):
            TrainConfig(chunk_runner=bad)
    assert TrainConfig().chunk_runner == "auto" and CHUNK_RUNNERS == ("auto", "scan", "loop")
    assert TrainConfig.from_dict(TrainConfig(chunk_runner="loop").to_dict()).chunk_runner == "loop"
    # At its default it is left out of the dict, so headers written before the field existed
    # (checkpoints, finished comparison rows) still match, and read back as auto.
    assert "chunk_runner" not in TrainConfig().to_dict()
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    args = build_parser().parse_args(["train", "--out", "x", "--chunk-runner", "loop"])
    assert config_from_args(args).chunk_runner == "loop"


# The run axis sharded over 4 (virtual) devices, 3 runs padded to 4: the loop's donated step keeps
# the layout it was compiled for from step to step, and gives the runs of one device.
_SHARDED = """
import json, jax, jaxrae
from jaxrae.config import TrainConfig
from jaxrae.train import train
config = TrainConfig(**{config!r})
runs = train(config, jaxrae.load_data("digits"), [0, 1, 2], progress=False)
print("RESULT " + json.dumps(dict(devices=len(jax.devices()), losses=runs.losses.tolist())))
"""


@pytest.mark.slow
def test_loop_over_sharded_runs_matches_one_device(digits):
    fields = dict(method="rae", arch="conv-small", steps=4, batch_size=8, chunk_size=2, latent_dim=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_FLAGS", "JAX_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SHARDED.format(config=fields))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["devices"] == 4
    reference = train(TrainConfig(**fields), digits, [0, 1, 2], progress=False)
    assert resolve_chunk_runner(TrainConfig(**fields), SHAPE) == "loop"
    # Across batch shapes (1 run per device vs 3 in one program) to float rounding, as tests/test_scale.py.
    np.testing.assert_allclose(result["losses"], reference.losses, rtol=1e-5, atol=1e-6)
