"""Helpers shared by the benchmarks: the machine header, a matmul roofline, analytic MLP FLOPs,
timing, planted GMM codes, markdown tables, and a peer timed in its own process at its best threading.

Every benchmark prints ratios of quantities measured in the same run, because the machines these
run on are shared: absolute rates move with the load, ratios much less. A peer library (scikit-learn)
is timed in a process of its own, so that JAX's thread pool in the benchmark's process sits idle
meanwhile, and at every thread setting a user would try (``PEER_THREADINGS``); the benchmark
reports the fastest and says which it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def machine_header(argv: list[str]) -> str:
    """Command, CPU/accelerator, JAX version and load, as comment lines for a results table."""
    return "\n".join([f"# command: python {' '.join(argv)}", *machine_lines()])


def machine_lines() -> list[str]:
    """CPU/accelerator, JAX version and load average, as comment lines."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = f"{names[0]} x {len(names)} logical cores" if names else cpu
    except OSError:
        pass
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return [
        (
            f"# machine: {cpu}; jax {jax.__version__} on {jax.default_backend()} ({len(jax.devices())} x {devices}); "
            f"os.cpu_count()={os.cpu_count()}"
        ),
        f"# load average at start (1/5/15 min): {load}  (shared machine: read the ratios, not the absolute rates)",
    ]


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


def time_calls(fn, repeats: int):
    """(first call wall s, median wall s of ``repeats`` further calls, their median CPU s, last result).

    Every call's result is waited for with ``jax.block_until_ready`` (JAX dispatches
    asynchronously). The first call is reported apart because it compiles. CPU seconds (all
    threads of this process) are returned next to wall time because on a shared machine wall
    time also measures the neighbours' load.
    """
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = jax.block_until_ready(fn())
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu_start)
    return first, median(walls), median(cpus), result


def planted_codes(rng: np.random.Generator, n: int, dim: int, n_components: int) -> np.ndarray:
    """(n, dim) float32 codes from a random Gaussian mixture with random full covariances.

    The stand-in for a trained autoencoder's codes in the ex-post density benchmarks. Means are
    close (scale 0.5 against unit-scale noise) so that, as for real autoencoder codes, the
    components overlap, EM needs about ten iterations, and some inits end in local optima.
    """
    means = rng.normal(scale=0.5, size=(n_components, dim))
    mixing = rng.normal(size=(n_components, dim, dim)) / np.sqrt(dim)
    weights = rng.dirichlet(np.full(n_components, 5.0))
    component = rng.choice(n_components, size=n, p=weights)
    noise = rng.normal(size=(n, dim))
    return (means[component] + np.einsum("nd,nde->ne", noise, mixing[component])).astype(np.float32)


def markdown_table(header: list[str], rows: list[list], align: str | None = None) -> list[str]:
    """Lines of a markdown table; ``align`` has one character per column, "l" or "r" (default: all "l")."""
    align = align or "l" * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


# --------------------------------------------------------------------------------------------
# A peer library timed in its own process, at the thread setting that suits it best.

#: Thread settings a user of a NumPy/SciPy-based library would try, as keyword arguments of
#: ``threadpoolctl.threadpool_limits`` (None leaves the libraries' defaults: about one thread per
#: core for BLAS and OpenMP). On a small machine one thread can beat the default, because the
#: BLAS calls are small and the threads then mostly wait on each other.
PEER_THREADINGS: dict[str, dict | None] = {
    "default threads": None,
    "threadpool_limits(1)": {"limits": 1},
    "1 BLAS thread": {"limits": 1, "user_api": "blas"},
}


def peer_threading(name: str):
    """A context manager that applies ``PEER_THREADINGS[name]`` with threadpoolctl (a scikit-learn dependency)."""
    limits = PEER_THREADINGS[name]
    if limits is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(**limits)


def thread_pools() -> str:
    """The native thread pools this process has loaded and their threads, e.g. "openblas x1, openmp x2"
    (NumPy and SciPy may each load their own OpenBLAS: one entry per library and size)."""
    from threadpoolctl import threadpool_info

    return ", ".join(sorted({f"{p['internal_api']} x{p['num_threads']}" for p in threadpool_info()}))


def run_in_own_process(argv: list[str], timeout_s: float) -> dict:
    """Run ``python *argv`` in a fresh process; return the JSON object it prints on its last stdout line.

    This process waits in ``subprocess.run`` meanwhile, so its threads (JAX's pool included) are
    idle and the peer has the cores to itself. A failure raises RuntimeError with the child's
    stderr tail; a child that runs past ``timeout_s`` raises subprocess.TimeoutExpired.
    """
    proc = subprocess.run([sys.executable, *argv], check=False, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fastest_at_equal_quality(results: list[dict], quality: str, tolerance: float) -> dict:
    """The result with the fewest ``"seconds"`` among those whose ``quality`` is within
    ``tolerance`` of the highest any result reached.

    A configuration that stops at a worse optimum does not win on time alone.
    """
    best_quality = max(r[quality] for r in results)
    return min((r for r in results if r[quality] >= best_quality - tolerance), key=lambda r: r["seconds"])
