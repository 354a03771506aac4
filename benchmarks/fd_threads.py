"""The Frechet distance's BLAS threading: the library's BLAS default against one thread.

jaxrae.metrics runs its statistics (FD, Gaussian statistics, precision/recall) with the BLAS
limited to one thread (``metrics._one_blas_thread``). This script measures why: one FD between
the statistics of two feature sets (``--n`` samples of ``--dim`` ReLU features, the feature
network's 128 by default), computed by the same function with the BLAS's default threading and
with one thread, alternating, ``--repeats`` times each, in one process. With ``--busy`` a second
process keeps one core busy with a JAX matmul loop meanwhile, as the next row's training (or
the other pytest worker) does while an evaluation computes its FDs.

    python benchmarks/fd_threads.py [--dim 128] [--n 2000] [--repeats 20] [--busy]

Prints the median milliseconds per FD of each setting and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import numpy as np
from threadpoolctl import ThreadpoolController

from jaxrae import metrics

_BUSY = """
import jax, jax.numpy as jnp
x = jnp.ones((512, 512))
f = jax.jit(lambda a: jnp.tanh(a @ a) / 512)
while True:
    x = f(x).block_until_ready()
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--busy", action="store_true", help="keep one core busy with a JAX loop meanwhile")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=(args.n, args.dim)), 0.0)
    b = np.maximum(rng.normal(size=(args.n, args.dim)) + 0.1, 0.0)
    stats = (*metrics.gaussian_stats(a), *metrics.gaussian_stats(b))
    fd = metrics.frechet_distance_from_stats.__wrapped__  # the function without the thread limit
    controller = ThreadpoolController()
    blas = [(info["internal_api"], info["num_threads"]) for info in controller.info() if info["user_api"] == "blas"]

    busy = subprocess.Popen([sys.executable, "-c", _BUSY]) if args.busy else None
    try:
        if busy is not None:
            time.sleep(5.0)  # its compile done, the loop running
        times = {"default": [], "one thread": []}
        values = {}
        for _ in range(args.repeats):
            for label in times:
                t0 = time.perf_counter()
                if label == "one thread":
                    with controller.limit(limits=1, user_api="blas"):
                        values[label] = fd(*stats)
                else:
                    values[label] = fd(*stats)
                times[label].append(time.perf_counter() - t0)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()

    median = {label: statistics.median(t) * 1e3 for label, t in times.items()}
    print(f"BLAS: {blas}; FD of {args.n} x {args.dim} features; {args.repeats} repeats; busy core: {args.busy}")
    print("| BLAS threads | ms per FD (median) |")
    print("|---|---|")
    for label, ms in median.items():
        print(f"| {label} | {ms:.1f} |")
    print(f"default / one thread: {median['default'] / median['one thread']:.1f}x")
    print(f"|FD(default) - FD(one thread)| = {abs(values['default'] - values['one thread']):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
