"""Bias and variance of the discrete gradient estimators against the exact gradient.

A small categorical model where the exact gradient is enumerable: N = 3 variables with K = 4
classes, b = one_hot codes (flattened to 12 numbers), a fixed random quadratic

    f(b) = b^T A b + c^T b,       L(logits) = E_{b ~ prod_n Cat(softmax(logits_n))}[f(b)].

The exact gradient of L sums over all K^N = 64 codes. Each estimator's gradient is the gradient
of f(code(key, logits)); many keys in one vmapped call give its mean and spread
(``jaxrae.relax.estimator_gradient_moments``, which also computes the exact gradient). Rows:

- st, st-gumbel, gumbel-rao (n conditional samples), reinmax: ``jaxrae.relax.discrete_code``;
- gumbel-softmax (soft): gradient of f at the relaxed sample (a biased objective, for contrast);
- reinforce: the score-function estimator f(b) grad log q(b), unbiased, as a sanity reference.

Columns: bias norm ||E[g] - g*||, its Monte Carlo standard error sqrt(variance / samples),
variance E||g - E[g]||^2, cosine(E[g], g*), relative MSE E||g - g*||^2 / ||g*||^2.

    python benchmarks/estimators.py [--samples 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrae.relax import estimator_gradient_moments, expected_objective_gradient

NUM_VARIABLES, NUM_CLASSES = 3, 4
TEMPERATURES = (0.1, 0.5, 1.0, 2.0)


def make_problem(seed: int):
    rng = np.random.default_rng(seed)
    size = NUM_VARIABLES * NUM_CLASSES
    quadratic = rng.normal(size=(size, size)) / np.sqrt(size)
    linear = rng.normal(size=size)
    logits = rng.normal(size=(NUM_VARIABLES, NUM_CLASSES))
    as_jax = lambda a: jnp.asarray(a, jnp.float32)
    return as_jax(quadratic), as_jax(linear), as_jax(logits)


def make_objective(quadratic, linear):
    def objective(code):  # code: (N, K), one-hot or relaxed
        flat = code.reshape(-1)
        return flat @ quadratic @ flat + linear @ flat

    return objective


def summarize(moments, n_draws: int) -> dict:
    """The table's columns from the moments of one estimator (float64)."""
    mean, variance, exact = (np.asarray(x, np.float64).reshape(-1) for x in moments)
    bias = mean - exact
    return {
        "bias": np.linalg.norm(bias),
        "bias_se": np.sqrt(variance.sum() / n_draws),
        "variance": variance.sum(),
        "cosine": mean @ exact / (np.linalg.norm(mean) * np.linalg.norm(exact) + 1e-30),
        # E||g - g*||^2 = ||E g - g*||^2 + sum Var g
        "rel_mse": (np.sum(bias**2) + variance.sum()) / np.sum(exact**2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    quadratic, linear, logits = make_problem(args.seed)
    objective = make_objective(quadratic, linear)
    exact = expected_objective_gradient(logits, objective)
    key = jax.random.key(args.seed + 1)

    rows = [("reinforce", None, 1), ("st", None, 1)]
    for tau in TEMPERATURES:
        rows += [
            ("st-gumbel", tau, 1),
            ("gumbel-rao", tau, 1),
            ("gumbel-rao", tau, 10),
            ("gumbel-rao", tau, 100),
            ("reinmax", tau, 1),
            ("gumbel-softmax", tau, 1),
        ]

    compiled = {}
    print(
        f"N={NUM_VARIABLES} K={NUM_CLASSES}, f(b) = b'Ab + c'b, {args.samples} samples per row, "
        f"||exact grad|| = {float(jnp.linalg.norm(exact)):.4f}, backend {jax.default_backend()}"
    )
    header = (
        f"{'estimator':<24}{'tau':>5}{'bias norm':>11}{'(MC s.e.)':>11}{'variance':>11}{'cosine':>9}{'rel. MSE':>11}"
    )
    print(header)
    print("-" * len(header))
    start = time.perf_counter()
    for estimator, tau, n_samples in rows:
        kind = (estimator, n_samples)
        if kind not in compiled:
            compiled[kind] = jax.jit(
                lambda tau, e=estimator, n=n_samples: estimator_gradient_moments(
                    key, logits, objective, e, tau, args.samples, n
                )
            )
        stats = summarize(compiled[kind](jnp.float32(1.0 if tau is None else tau)), args.samples)
        name = {"gumbel-rao": f"gumbel-rao (n={n_samples})", "gumbel-softmax": "gumbel-softmax (soft)"}.get(
            estimator, estimator
        )
        tau_text = "-" if tau is None else f"{tau:g}"
        print(
            f"{name:<24}{tau_text:>5}{stats['bias']:>11.4f}{stats['bias_se']:>11.4f}"
            f"{stats['variance']:>11.4f}{stats['cosine']:>9.4f}{stats['rel_mse']:>11.4f}"
        )
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
