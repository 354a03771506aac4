"""IWAE-k of the Fashion-MNIST test set: one run and 8 runs vmapped; time, memory, FLOP rate.

The workload of a test-likelihood table: IWAE-k (Burda et al. 2016) of the 10,000 test images for
k = 1, 100, 1000, with a Gaussian-posterior MLP VAE shaped like jaxrae's ``mlp`` network (encoder
784-512-256-2x16, decoder 16-256-512-784 Bernoulli logits), evaluated by
:func:`jaxrae.likelihood.iwae_bound` on a fixed Bernoulli draw of the grey levels (timing only).
Parameters are random (timing does not depend on their values); runs differ by their init key.

One jit-compiled program per (k, runs): ``lax.map`` over blocks of test images, and inside
``iwae_bound`` a ``lax.scan`` over chunks of samples, so memory is set by block x chunk, not by
k. For every row it prints

- wall time of one evaluation of all test images (compilation excluded, reported apart),
- the achieved FLOP rate: decoder matmul FLOPs (2 * sum of layer sizes products per sample,
  k samples per image; the encoder's once-per-image cost is left out) over the wall time,
  next to the rate of a large float32 matmul measured in the same process
  (:func:`_common.matmul_flops_per_s`), and their ratio,
- the compiled program's temporary memory (XLA's memory analysis) and the process's peak RSS.

Target on a CPU: IWAE-1000 at >= 50 % of the matmul rate (the work is decoder matmuls), and the
compiled temporary memory the same for k = 100 and 1000 at the same chunk size.

    python benchmarks/likelihood.py [--data fashion_mnist] [--ks 1 100 1000] [--runs 1 8]
                                    [--chunk-size 100] [--image-block 100] [--out FILE]
    python benchmarks/likelihood.py --quick     # small sizes, a smoke test that runs anywhere
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

import jaxrae
from jaxrae import likelihood

LATENT = 16
ENCODER_WIDTHS = (512, 256)
DECODER_WIDTHS = (256, 512)


class GaussianEncoder(nn.Module):
    """x -> (mean, log_var) of q(z|x): the jaxrae mlp encoder with a 2 x LATENT head."""

    @nn.compact
    def __call__(self, x):
        h = x.reshape((x.shape[0], -1))
        for width in ENCODER_WIDTHS:
            h = nn.relu(nn.Dense(width)(h))
        out = nn.Dense(2 * LATENT)(h)
        return out[:, :LATENT], out[:, LATENT:]


class BernoulliDecoder(nn.Module):
    """z (n, LATENT) -> pixel logits (n, H, W, C): the jaxrae mlp decoder without the sigmoid."""

    image_shape: tuple[int, int, int]

    @nn.compact
    def __call__(self, z):
        h = z
        for width in DECODER_WIDTHS:
            h = nn.relu(nn.Dense(width)(h))
        return nn.Dense(math.prod(self.image_shape))(h).reshape((z.shape[0], *self.image_shape))


def decoder_flops_per_sample(n_pixels: int) -> int:
    sizes = [LATENT, *DECODER_WIDTHS, n_pixels]
    return sum(2 * m * n for m, n in itertools.pairwise(sizes))


def make_program(image_shape, k, chunk_size, image_block, runs):
    """Compiled IWAE-k of all test images for `runs` parameter sets (vmapped when runs > 1)."""
    encoder, decoder = GaussianEncoder(), BernoulliDecoder(image_shape)

    def one_run(params, key, x_blocks):
        def block(args):
            index, x = args
            mean, log_var = encoder.apply(params["encoder"], x)

            def log_px_given_z(image, z):
                return likelihood.bernoulli_log_likelihood(image, decoder.apply(params["decoder"], z))

            return likelihood.iwae_bound(
                jax.random.fold_in(key, index),
                x,
                likelihood.GaussianProposal(mean, log_var),
                log_px_given_z,
                k=k,
                chunk_size=chunk_size,
            )

        return jax.lax.map(block, (jnp.arange(x_blocks.shape[0]), x_blocks)).reshape(-1)

    fn = one_run if runs == 1 else jax.vmap(one_run, in_axes=(0, 0, None))
    return jax.jit(fn)


def init_params(key, image_shape, runs):
    encoder, decoder = GaussianEncoder(), BernoulliDecoder(image_shape)

    def init(key):
        key_e, key_d = jax.random.split(key)
        return {
            "encoder": encoder.init(key_e, jnp.zeros((1, *image_shape))),
            "decoder": decoder.init(key_d, jnp.zeros((1, LATENT))),
        }

    keys = jax.random.split(key, runs)
    return (init(keys[0]), keys[0]) if runs == 1 else (jax.vmap(init)(keys), keys)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data spec (default fashion_mnist; digits with --quick)")
    parser.add_argument("--n-test", type=int, default=None, help="test images (default all; 200 with --quick)")
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="k values (default 1 100 1000)")
    parser.add_argument("--runs", type=int, nargs="+", default=None, help="runs per program (default 1 8)")
    parser.add_argument("--chunk-size", type=int, default=None, help="samples per image per scan step (default 100)")
    parser.add_argument("--image-block", type=int, default=None, help="images per lax.map step (default 100)")
    parser.add_argument("--repeats", type=int, default=1, help="timed evaluations per row (median)")
    parser.add_argument("--matmul-n", type=int, default=None, help="side of the reference matmul (default 2048)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, its times mean nothing")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    quick = args.quick
    data_spec = args.data or ("digits" if quick else "fashion_mnist")
    ks = args.ks or ([1, 10, 50] if quick else [1, 100, 1000])
    runs_list = args.runs or ([1, 2] if quick else [1, 8])
    chunk_size = args.chunk_size or (25 if quick else 100)
    image_block = args.image_block or (50 if quick else 100)
    matmul_n = args.matmul_n or (512 if quick else 2048)

    data = jaxrae.load_data(data_spec, n_test=args.n_test or (200 if quick else None))
    grey = data.test_images
    n_test = (grey.shape[0] // image_block) * image_block
    if n_test == 0:
        raise SystemExit(f"--image-block {image_block} is larger than the {grey.shape[0]} test images")
    # a fixed Bernoulli draw of the grey levels: binary pixels, as the likelihood tables use (timing only)
    x = (np.random.default_rng(0).uniform(size=grey[:n_test].shape) < grey[:n_test]).astype(np.float32)
    image_shape = data.image_shape
    x_blocks = jnp.asarray(x.reshape(n_test // image_block, image_block, *image_shape))
    flops_per_sample = decoder_flops_per_sample(math.prod(image_shape))

    lines = [
        _common.machine_header(sys.argv),
        (
            f"# data {data.name}: {n_test} test images {image_shape}; "
            f"chunk_size {chunk_size} samples, image block {image_block}; decoder {flops_per_sample} FLOP/sample"
        ),
        "",
        "| k | runs | compile s | eval s | images/s | GFLOP/s | matmul GFLOP/s | fraction | compiled temp MiB | peak RSS MiB | mean IWAE-k nats |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for runs in runs_list:
        params, keys = init_params(jax.random.key(0), image_shape, runs)
        for k in ks:
            program = make_program(image_shape, k, chunk_size, image_block, runs)
            start = time.perf_counter()
            compiled = program.lower(params, keys, x_blocks).compile()
            compile_s = time.perf_counter() - start
            memory = compiled.memory_analysis()
            temp_mib = (
                getattr(memory, "temp_size_in_bytes", float("nan")) / 2**20 if memory is not None else float("nan")
            )
            walls, rates = [], []
            for _ in range(args.repeats):
                matmul_rate = _common.matmul_flops_per_s(matmul_n)  # interleaved: the reference under the same load
                start = time.perf_counter()
                values = jax.block_until_ready(compiled(params, keys, x_blocks))
                walls.append(time.perf_counter() - start)
                rates.append(matmul_rate)
            wall, matmul_rate = _common.median(walls), _common.median(rates)
            flops = runs * n_test * k * flops_per_sample
            row = (
                f"| {k} | {runs} | {compile_s:.1f} | {wall:.3f} | {runs * n_test / wall:.0f} | {flops / wall / 1e9:.2f} | "
                f"{matmul_rate / 1e9:.2f} | {flops / wall / matmul_rate:.2f} | {temp_mib:.1f} | {_common.peak_rss_mib():.0f} | "
                f"{float(jnp.mean(values)):.2f} |"
            )
            lines.append(row)
            print(row, flush=True)
    _common.write_table(args.out, lines)


if __name__ == "__main__":
    main()
