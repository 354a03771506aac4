"""The capacity of a discrete code in bits, log2 of the number of distinct codes, checked by
enumerating every code of tiny categorical, VQ and FSQ codes; and the tables that state it."""

import itertools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrae import grid, relax, report
from jaxrae.config import TrainConfig
from jaxrae.errors import ConfigError

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"


def test_formulas():
    assert relax.code_capacity_bits(16, 10) == pytest.approx(16 * math.log2(10))  # 53.15
    assert relax.code_capacity_bits(1, 2) == 1.0
    # FSQ: each of the N groups takes prod_j L_j grid points
    assert relax.fsq_capacity_bits((8, 5, 5, 5), 16) == pytest.approx(16 * math.log2(1000))
    assert relax.fsq_capacity_bits((8, 5, 5, 5), 16) == pytest.approx(relax.code_capacity_bits(16, 1000))
    assert relax.fsq_capacity_bits((10,), 16) == pytest.approx(relax.code_capacity_bits(16, 10))
    for bad in ((0, 10), (16, 1), (2.5, 10), (True, 10)):
        with pytest.raises(ConfigError, match="is invalid: must be an integer"):
            relax.code_capacity_bits(*bad)
    with pytest.raises(ConfigError, match="levels"):
        relax.fsq_capacity_bits((1, 5))
    with pytest.raises(ConfigError, match="n_groups=0 is invalid"):
        relax.fsq_capacity_bits((5,), 0)


def _distinct_decoder_inputs(config, params) -> int:
    """Enumerate every integer code of ``config``'s code path and count the distinct decoder inputs."""
    spec = grid.code_spec(config)
    path = grid.CODE_PATHS[config.method_spec.encoder]
    codes = jnp.asarray(list(itertools.product(range(spec.n_classes), repeat=spec.n_vars)), jnp.int32)
    decoder_in = np.asarray(path.decoder_input(config, params, codes)).reshape((codes.shape[0], -1))
    return len(np.unique(decoder_in, axis=0))


@pytest.mark.parametrize(
    "method, fields",
    [
        ("drae", dict(latent_dim=2, n_classes=3)),  # N x K categorical: 3^2 codes
        ("dvae", dict(latent_dim=3, n_classes=2)),
        ("vqvae", dict(latent_dim=2, n_classes=3, code_dim=2)),  # N vectors from a C-entry codebook: 3^2
        ("fsq", dict(latent_dim=2, fsq_levels=(3, 4))),  # N groups of prod(levels) = 12 values: 12^2
        ("fsq", dict(latent_dim=1, fsq_levels=(5, 3, 4))),
    ],
)
def test_capacity_is_log2_of_the_enumerated_codes(method, fields):
    config = TrainConfig(method=method, **fields)
    codebook = jax.random.normal(jax.random.key(0), (config.n_classes, config.code_dim))  # distinct entries
    n = _distinct_decoder_inputs(config, {"codebook": codebook})
    assert grid.code_bits(config) == pytest.approx(math.log2(n))


@pytest.mark.parametrize("levels", [(3, 4), (5, 6), (10,)])
def test_every_fsq_grid_point_is_reached_by_the_encoder(levels):
    """The FSQ capacity counts codes the encoder can produce, not just indices the decoder reads:
    a dense sweep of the encoder's outputs hits exactly prod(levels) grid points per group."""
    sweep = np.linspace(-8.0, 8.0, 401)
    z = np.stack(np.meshgrid(*([sweep] * len(levels)), indexing="ij"), axis=-1).reshape(-1, len(levels))
    index = np.asarray(relax.finite_scalar_quantize(jnp.asarray(z, jnp.float32), levels).index)
    assert len(np.unique(index)) == math.prod(levels)
    assert relax.fsq_capacity_bits(levels) == pytest.approx(math.log2(len(np.unique(index))))


def test_continuous_codes_have_no_capacity():
    assert grid.code_bits(TrainConfig(method="rae")) is None
    assert grid.code_bits(TrainConfig(method="vae")) is None


def _results(rows: dict) -> dict:
    methods = {
        label: {
            "discrete": discrete,
            "config": config,
            "seeds": [0, 1],
            "ok": [True, True],
            "metrics": {"rec_error": [1.0, 1.1]},
        }
        for label, (discrete, config) in rows.items()
    }
    return {"methods": methods, "baseline": None, "data": "digits"}


def test_tables_state_bits_per_code_for_discrete_rows():
    results = _results(
        {
            "rae": (False, TrainConfig(method="rae").to_dict()),
            "drae": (True, TrainConfig(method="drae").to_dict()),
            "fsq": (True, TrainConfig(method="fsq").to_dict()),
            "fsq-53bits": (True, TrainConfig(method="fsq", fsq_levels=(10,)).to_dict()),
            "renamed": (True, {"method": "no-such-preset"}),  # an old row whose preset is gone
        }
    )
    assert report.code_capacity(results) == [
        ["drae", "16 variables x 10 classes", "53.2"],
        ["fsq", "16 groups of levels 8-5-5-5 (1000 values each)", "159"],
        ["fsq-53bits", "16 groups of levels 10 (10 values each)", "53.2"],
        ["renamed", "not recorded", "-"],
    ]
    markdown = report.render_markdown(results)
    assert "## Code capacity (discrete rows)" in markdown
    assert "| fsq | 16 groups of levels 8-5-5-5 (1000 values each) | 159 |" in markdown
    assert "bits per code (discrete rows): drae 53.2, fsq 159, fsq-53bits 53.2, renamed -" in report.render_summary(
        results
    )
    one = _results({"drae": (True, TrainConfig(method="drae").to_dict())})
    assert "every discrete row: 16 variables x 10 classes, 53.2 bits per code." in report.render_markdown(one)
    continuous = _results({"rae": (False, TrainConfig(method="rae").to_dict())})
    assert "Code capacity" not in report.render_markdown(continuous)
    assert "bits per code" not in report.render_summary(continuous)


def test_committed_discrete_table_states_the_fsq_capacity():
    """An old results.json (written before this section existed) renders it from its configs."""
    results = json.loads((RESULTS / "table1_discrete_fashion_mnist" / "results.json").read_text())
    capacity = {row: bits for row, _, bits in report.code_capacity(results)}
    assert capacity["fsq"] == "159" and capacity["drae"] == "53.2" and capacity["vqvae"] == "53.2"
