"""Helpers shared by the benchmarks: the machine header, a matmul roofline, analytic MLP FLOPs, timing.

Every benchmark prints ratios of quantities measured in the same process, interleaved, because
the machines these run on are shared: absolute rates move with the load, ratios much less.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def machine_header(argv: list[str]) -> str:
    """Command, CPU/accelerator, JAX version and load, as comment lines for a results table."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = f"{names[0]} x {len(names)} logical cores" if names else cpu
    except OSError:
        pass
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return "\n".join([
        f"# command: python {' '.join(argv)}",
        f"# machine: {cpu}; jax {jax.__version__} on {jax.default_backend()} ({len(jax.devices())} x {devices}); "
        f"os.cpu_count()={os.cpu_count()}",
        f"# load average at start (1/5/15 min): {load}  (shared machine: read the ratios, not the absolute rates)",
    ])


def matmul_flops_per_s(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
    """FLOP/s of one jitted (n x n) @ (n x n) product: 2 n^3 flops, median of ``repeats`` calls.

    The practical peak of this device for dense math: the reference the model's rate is held to.
    """
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(f(a, b))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(a, b))
        times.append(time.perf_counter() - t)
    return 2.0 * n**3 / statistics.median(times)


def mlp_train_flops_per_image(n_in: int, widths=(512, 256), latent: int = 16) -> int:
    """Analytic matmul FLOPs of one training step per image for the MLP autoencoder.

    Dense layers n_in-512-256-latent-256-512-n_in; each costs 2*m*n flops forward, 2*m*n for the
    weight gradient and 2*m*n for the input gradient (not needed for the first layer, whose
    input is the data). Element-wise work (bias, ReLU, sigmoid, loss, Adam) is left out: it is
    O(params + activations), not O(params * batch).
    """
    sizes = [n_in, *widths, latent, *reversed(widths), n_in]
    layers = list(zip(sizes[:-1], sizes[1:]))
    fwd = sum(2 * m * n for m, n in layers)
    bwd = sum(4 * m * n for m, n in layers) - 2 * layers[0][0] * layers[0][1]
    return fwd + bwd


def median(xs) -> float:
    return float(statistics.median(xs))


def fmt_rate(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.1f}"


def peak_rss_mib() -> float:
    """This process's peak resident memory (ru_maxrss is KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def tree_bytes(tree) -> int:
    return int(sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(tree)))


def write_table(out: str | None, lines: list[str]) -> None:
    """Write the printed lines to ``out`` (a markdown file under benchmarks/results/), if given."""
    if out:
        from pathlib import Path

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("\n".join(lines) + "\n")
