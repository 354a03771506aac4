"""Degenerate data gives warnings next to its numbers, and impossible mixtures stop before training.

A tiny comparison on constant (all-zero) images, through the Python API: every number is finite
and meaningless, so results.json and table.md must say why (a feature network at the majority
rule, codes at the covariance floor, fewer distinct codes than mixture components).
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from jaxrae import compare
from jaxrae.compare import run_compare
from jaxrae.data import IDX_FILES
from jaxrae.density import MAX_MIXTURE_COMPONENTS
from jaxrae.errors import ConfigError
from jaxrae.evaluate import ex_post_warnings
from jaxrae.experiment import Experiment

CONFIG = {"steps": 20, "chunk_size": 10, "batch_size": 32, "latent_dim": 4, "n_classes": 4}
N_TRAIN, N_TEST = 120, 40


def write_idx(path, array: np.ndarray) -> None:
    """An uncompressed uint8 IDX file: magic 0x0000 08 <ndim>, big-endian uint32 dims, the bytes."""
    path.write_bytes(bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


@pytest.fixture(scope="module")
def constant_images_run(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("zeros")
    labels = np.random.default_rng(0).integers(0, 10, size=N_TRAIN + N_TEST).astype(np.uint8)
    zeros = np.zeros((N_TRAIN + N_TEST, 8, 8), np.uint8)
    for key, array in (
        ("train_images", zeros[:N_TRAIN]),
        ("train_labels", labels[:N_TRAIN]),
        ("test_images", zeros[N_TRAIN:]),
        ("test_labels", labels[N_TRAIN:]),
    ):
        write_idx(data_dir / IDX_FILES[key], array)
    experiment = Experiment(
        data=f"idx:{data_dir}",
        methods=("ae", "drae"),
        seeds=(0, 1),
        n_eval=20,
        feature_steps=30,
        n_components=3,
        config=CONFIG,
    )
    out = tmp_path_factory.mktemp("out") / "run"
    run_compare(
        experiment,
        out,
        progress=False,
        feature_cache_dir=tmp_path_factory.mktemp("cache"),
        log=lambda *_: None,
        figures=False,
    )
    return out


def test_constant_images_warn_in_results_json(constant_images_run):
    results = json.loads((constant_images_run / "results.json").read_text())
    warned = results["warnings"]
    assert warned[0].startswith("the FD feature network is at or near the majority rule")
    ae = [w for w in warned if w.startswith("ae: ") and "converged" not in w]
    # (a two-step run is also too short to judge convergence: that warning is tested in test_convergence)
    drae = [w for w in warned if w.startswith("drae: ") and "converged" not in w]
    # continuous codes: every direction at the floor, for both seeds; one distinct code for 3 components
    assert any("codes at the covariance floor" in w and "seed 0: 4 of 4; seed 1: 4 of 4 directions" in w for w in ae)
    assert any(
        "fewer distinct training codes than the 3 mixture components (seed 0: 1; seed 1: 1 distinct)" in w for w in ae
    )
    # discrete codes have no covariance, but the same duplicate codes
    assert len(drae) == 1 and "fewer distinct training codes than the 3 mixture components" in drae[0]
    # the row's own record carries its warnings (so a resumed run reports them too)
    assert [f"ae: {w}" for w in results["methods"]["ae"]["notes"]["warnings"]] == ae


def test_constant_images_warn_in_table_md(constant_images_run):
    table = (constant_images_run / "table.md").read_text()
    results = json.loads((constant_images_run / "results.json").read_text())
    summary, rest = table.split("## Warnings (these numbers may mean little)\n\n")
    assert "## Summary" in summary  # under the summary table, before the per-metric detail
    for line in results["warnings"]:
        assert f"- {line}\n" in rest


def test_healthy_codes_give_no_warning():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(2, 100, 4)).astype(np.float32)
    assert ex_post_warnings(codes, [0, 1], 10, discrete=False) == []
    assert ex_post_warnings(rng.integers(0, 4, size=(2, 100, 6)), [0, 1], 10, discrete=True) == []
    # a diverged run (non-finite codes) is skipped, not reported as degenerate
    codes[1] = np.nan
    assert ex_post_warnings(codes, [0, 1], 10, discrete=False) == []
    collapsed = codes.copy()
    collapsed[0, :, 2] = 0.5
    assert ex_post_warnings(collapsed, [7, 8], 10, discrete=False)[0].startswith(
        "codes at the covariance floor (variance <= 1e-05) in seed 7: 1 of 4 directions"
    )


@pytest.mark.parametrize(
    "n_train, n_components, match",
    [
        (200, 500, r"^n_components=500 is invalid: more mixture components than the 200 points"),
        (None, 100000, rf"^n_components=100000 is invalid: at most {MAX_MIXTURE_COMPONENTS} mixture components"),
    ],
)
def test_too_many_components_stop_before_training(tmp_path, monkeypatch, n_train, n_components, match):
    def no_training(*args, **kwargs):
        raise AssertionError("trained although the mixture cannot be fitted")

    monkeypatch.setattr(compare, "train", no_training)
    experiment = Experiment(
        data="digits",
        methods=("ae",),
        seeds=(0,),
        n_train=n_train,
        n_test=40,
        n_eval=20,
        feature_steps=30,
        n_components=n_components,
        config=CONFIG,
    )
    with pytest.raises(ConfigError, match=match):
        run_compare(
            experiment,
            tmp_path / "out",
            progress=False,
            feature_cache_dir=tmp_path / "cache",
            log=lambda *_: None,
            figures=False,
        )
