"""Live logs: TensorBoard event files read back with the ``tensorboard`` package's own reader (one
scalar series per run, one point per chunk, the chunk means of the training metrics), the CLI's
logs and flags, and Weights & Biases only when installed and asked for."""

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from _tiny_compare import TINY_COMPARE

from jaxrae import runlog
from jaxrae.config import TrainConfig
from jaxrae.errors import ConfigError
from jaxrae.train import train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

STEPS, CHUNK = 20, 10
CFG = TrainConfig(method="rae", steps=STEPS, batch_size=32, chunk_size=CHUNK)


def _scalars(run_dir: Path) -> dict[str, tuple[list[int], np.ndarray]]:
    acc = event_accumulator.EventAccumulator(str(run_dir))
    acc.Reload()
    return {
        tag: ([e.step for e in acc.Scalars(tag)], np.array([e.value for e in acc.Scalars(tag)]))
        for tag in acc.Tags()["scalars"]
    }


def test_crc32c_matches_the_standard_check_value_and_tensorboards_masked_crc():
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    assert runlog.crc32c(b"123456789") == 0xE3069283  # RFC 3720's CRC-32C check value
    rng = np.random.default_rng(0)
    for n in (0, 1, 8, 100, 1000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert runlog.masked_crc32c(data) == masked_crc32c(data)


def test_every_run_gets_one_series_per_metric_with_the_chunk_means(digits, tmp_path):
    runs = train(CFG, digits, seeds=[0, 1], sweep={"lr": [1e-3, 1e30]}, progress=False, logger=tmp_path / "rae")
    names = ["seed0-lr0.001", "seed1-lr0.001", "seed0-lr1e+30", "seed1-lr1e+30"]
    assert sorted(p.name for p in (tmp_path / "rae").iterdir()) == sorted(names)
    for i, name in enumerate(names):
        scalars = _scalars(tmp_path / "rae" / name)
        assert set(scalars) == {f"train/{k}" for k in runs.metrics} | {"train/diverged"}
        for tag, (steps, values) in scalars.items():
            assert steps == [CHUNK, STEPS], tag  # one point per chunk, at its last step count
            if tag != "train/diverged":
                chunks = runs.metrics[tag.removeprefix("train/")][i].reshape(2, CHUNK).astype(np.float64)
                expected = [np.mean(c[np.isfinite(c)]) if np.isfinite(c).any() else np.nan for c in chunks]
                np.testing.assert_allclose(values, expected, rtol=1e-6)
        assert list(scalars["train/diverged"][1]) == ([0.0, 0.0] if i < 2 else [1.0, 1.0])
        np.testing.assert_allclose(scalars["train/lr"][1], [1e-3, 1e-3] if i < 2 else [1e30, 1e30], rtol=1e-6)


def test_a_resumed_run_continues_its_series(digits, tmp_path):
    ckpt, logs = tmp_path / "ckpt.msgpack", tmp_path / "tb"
    train(CFG, digits, seeds=[0], checkpoint_path=ckpt, stop_after_chunks=1, progress=False, logger=logs)
    train(CFG, digits, seeds=[0], checkpoint_path=ckpt, progress=False, logger=logs)
    assert len(list((logs / "seed0").iterdir())) == 2  # one event file per invocation
    steps, _ = _scalars(logs / "seed0")["train/loss"]
    assert steps == [CHUNK, STEPS]


def test_wandb_without_wandb_installed_is_one_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ConfigError, match=r"^wandb=True is invalid: .*pip install wandb"):
        runlog.RunLogger(tmp_path, wandb=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    code = (
        "import sys; sys.modules['wandb'] = None; from jaxrae.cli import main; "
        f"sys.exit(main(['train', '--out', {str(tmp_path / 'out')!r}, '--steps', '2', '--wandb']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 2
    expected = "jaxrae: error: wandb=True is invalid: Weights & Biases is not installed; pip install wandb (or leave --wandb off)"
    assert proc.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_wandb_when_installed_gets_one_run_per_seed(digits, tmp_path, monkeypatch):
    logged: dict[str, list] = {}

    class FakeRun:
        def __init__(self, name):
            self.name, self.finished = name, False
            logged[name] = []

        def log(self, values, step):
            logged[self.name].append((step, values))

        def finish(self):
            self.finished = True

    fake = types.SimpleNamespace(init=lambda **kw: FakeRun(kw["name"]))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with runlog.RunLogger(None, wandb=True, group="rae", config=CFG.to_dict()) as logger:
        train(CFG, digits, seeds=[3, 4], progress=False, logger=logger)
        logger.log(STEPS, {"eval/score": [1.0, 2.0]})
    assert sorted(logged) == ["rae/seed3", "rae/seed4"]
    assert [step for step, _ in logged["rae/seed4"]] == [CHUNK, STEPS, STEPS]
    assert logged["rae/seed4"][-1][1] == {"eval/score": 2.0}
    assert not list(tmp_path.iterdir())  # log_dir=None: no event files


def test_cli_train_writes_logs_into_out_unless_told_not_to(tmp_path):
    from jaxrae.cli import main

    base = ["train", "--seeds", "2", "--steps", "4", "--chunk-size", "2", "--batch-size", "16", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    for seed in (0, 1):
        scalars = _scalars(tmp_path / "a" / "tensorboard" / "rae" / f"seed{seed}")
        assert scalars["train/loss"][0] == [2, 4]
        assert scalars["eval/test_reconstruction_error"][0] == [4]
    assert main([*base, "--out", str(tmp_path / "b"), "--no-tensorboard"]) == 0
    assert not (tmp_path / "b" / "tensorboard").exists()


# --------------------------------------------------------------------------------------------
# README.md's section "Watch it in TensorBoard" holds the same text as this test's body
# (between the markers); keep them in step.


def test_readme_watch_it_in_tensorboard(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The README holds this text verbatim: the formatter leaves it alone.
    # fmt: off
    # --- README snippet: watch it in TensorBoard ---
    import jaxrae

    data = jaxrae.load_data("digits")
    config = jaxrae.TrainConfig(method="rae", steps=40, batch_size=32, chunk_size=20)
    runs = jaxrae.train(config, data, seeds=[0, 1, 2], sweep={"beta": [1e-4, 1e-3]}, logger="runs/demo/tensorboard/rae")
    # six runs, six curves: runs/demo/tensorboard/rae/seed0-beta0.0001/ ... seed2-beta0.001/
    # view them with:  tensorboard --logdir runs/demo/tensorboard
    # --- end of README snippet ---
    # fmt: on
    run_dirs = sorted((tmp_path / "runs/demo/tensorboard/rae").iterdir())
    assert len(run_dirs) == runs.n_runs == 6
    for run_dir in run_dirs:
        assert _scalars(run_dir)["train/loss"][0] == [20, 40]


def test_compare_logs_training_curves_and_every_evaluation_metric_per_seed(tmp_path):
    from jaxrae.compare import run_compare
    from jaxrae.experiment import Experiment

    experiment = Experiment(
        **TINY_COMPARE,
        methods=("drae",),
        config={"steps": 20, "chunk_size": 10, "batch_size": 32, "latent_dim": 4, "n_classes": 4},
    )
    results = run_compare(
        experiment,
        tmp_path / "out",
        progress=False,
        feature_cache_dir=tmp_path / "cache",
        log=lambda *_: None,
        figures=False,
    )
    metrics = results["methods"]["drae"]["metrics"]
    for i, seed in enumerate((0, 1)):
        scalars = _scalars(tmp_path / "out" / "tensorboard" / "drae" / f"seed{seed}")
        assert scalars["train/tau"][0] == [10, 20]  # the Gumbel temperature, per chunk
        for name, per_seed in metrics.items():
            steps, values = scalars[f"eval/{name}"]
            assert steps == [20]
            np.testing.assert_allclose(values, [np.nan if per_seed[i] is None else per_seed[i]], rtol=1e-6)
