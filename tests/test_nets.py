"""Architectures: output shapes for every arch and image size, the paper's filter counts."""

import jax
import jax.numpy as jnp
import pytest

from jaxrae.errors import ConfigError
from jaxrae.nets import AutoEncoder, count_params


@pytest.mark.parametrize("arch", ["mlp", "conv-small", "conv-paper"])
@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3), (64, 64, 3)])
def test_shapes(arch, shape):
    model = AutoEncoder(arch, shape, encoder_out=10, spectral_norm=arch == "conv-small")
    x, z = jnp.zeros((2, *shape)), jnp.zeros((2, 10))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, z, False))
    h, x_hat = jax.eval_shape(lambda v: model.apply(v, x, z, False), variables)[:2]
    assert h.shape == (2, 10) and x_hat.shape == (2, *shape)


def test_paper_architecture_filters_and_batch_norm():
    model = AutoEncoder("conv-paper", (28, 28, 1), encoder_out=16)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jnp.zeros((1, 16)), False)
    )
    enc = variables["params"]["encoder"]
    filters = [enc[f"Conv_{i}"]["kernel"].shape[-1] for i in range(4)]
    assert filters == [128, 256, 512, 1024]
    assert enc["Conv_0"]["kernel"].shape[:2] == (4, 4)
    dec = variables["params"]["decoder"]
    assert dec["Dense_0"]["kernel"].shape == (16, 8 * 8 * 1024)
    # 8 -> 16 -> 32 by stride-2 transposed convolutions, then a stride-1 one to the channels
    assert [dec[f"ConvTranspose_{i}"]["kernel"].shape[-1] for i in range(3)] == [512, 256, 1]
    assert "batch_stats" in variables and "BatchNorm_0" in variables["batch_stats"]["encoder"]
    assert count_params(variables["params"]) > 10_000_000


def test_unknown_arch():
    model = AutoEncoder("resnet", (8, 8, 1), encoder_out=2)
    with pytest.raises(ConfigError, match="resnet"):
        model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 2)), False)
