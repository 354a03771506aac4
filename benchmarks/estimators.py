"""Bias and variance of the discrete gradient estimators against the exact gradient.

A small categorical model where the exact gradient is enumerable: N = 3 variables with K = 4
classes, b = one_hot codes (flattened to 12 numbers), a fixed random quadratic

    f(b) = b^T A b + c^T b,       L(logits) = E_{b ~ prod_n Cat(softmax(logits_n))}[f(b)].

The exact gradient of L sums over all K^N = 64 codes. Each estimator's gradient is the gradient
of f(code(key, logits)); many keys in one vmapped call give its mean and spread. Rows:

- st, st-gumbel, gumbel-rao (n conditional samples), reinmax: ``jaxrae.relax.discrete_code``;
- gumbel-softmax (soft): gradient of f at the relaxed sample (a biased objective, for contrast);
- reinforce: the score-function estimator f(b) grad log q(b), unbiased, as a sanity reference.

Columns: bias norm ||E[g] - g*||, its Monte Carlo standard error sqrt(variance / samples),
variance E||g - E[g]||^2, cosine(E[g], g*), relative MSE E||g - g*||^2 / ||g*||^2.

    python benchmarks/estimators.py [--samples 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxrae.relax import discrete_code, gumbel_softmax

NUM_VARIABLES, NUM_CLASSES = 3, 4
TEMPERATURES = (0.1, 0.5, 1.0, 2.0)


def make_problem(seed: int):
    rng = np.random.default_rng(seed)
    size = NUM_VARIABLES * NUM_CLASSES
    quadratic = rng.normal(size=(size, size)) / np.sqrt(size)
    linear = rng.normal(size=size)
    logits = rng.normal(size=(NUM_VARIABLES, NUM_CLASSES))
    as_jax = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return as_jax(quadratic), as_jax(linear), as_jax(logits)


def make_objective(quadratic, linear):
    def objective(code):  # code: (N, K), one-hot or relaxed
        flat = code.reshape(-1)
        return flat @ quadratic @ flat + linear @ flat

    return objective


def exact_gradient(objective, logits):
    """grad of sum_b q(b) f(b) over all K^N codes."""
    all_codes = jnp.asarray(
        list(itertools.product(range(NUM_CLASSES), repeat=NUM_VARIABLES)), jnp.int32
    )
    one_hots = jax.nn.one_hot(all_codes, NUM_CLASSES)  # (K^N, N, K)
    values = jax.vmap(objective)(one_hots)

    def expected_value(logits):
        log_q = jax.nn.log_softmax(logits, axis=-1)
        log_prob_codes = jnp.sum(one_hots * log_q, axis=(1, 2))
        return jnp.sum(jnp.exp(log_prob_codes) * values)

    return jax.grad(expected_value)(logits)


def sampled_gradients(objective, logits, keys, estimator, tau, n_samples):
    """(S, N, K) per-key gradients of one estimator; tau is traced (one compile per row kind)."""

    def one(key):
        if estimator == "gumbel-softmax (soft)":
            code_of = lambda l: gumbel_softmax(key, l, tau)  # noqa: E731
        elif estimator == "reinforce":
            sample = jax.nn.one_hot(jax.random.categorical(key, logits), NUM_CLASSES)
            log_prob = lambda l: jnp.sum(sample * jax.nn.log_softmax(l, axis=-1))  # noqa: E731
            return objective(sample) * jax.grad(log_prob)(logits)
        else:
            code_of = lambda l: discrete_code(key, l, estimator, tau, n_samples)  # noqa: E731
        return jax.grad(lambda l: objective(code_of(l)))(logits)

    return jax.vmap(one)(keys)


def summarize(grads, exact):
    grads = np.asarray(grads, np.float64).reshape(grads.shape[0], -1)
    exact = np.asarray(exact, np.float64).reshape(-1)
    mean = grads.mean(0)
    variance = np.sum(grads.var(0))
    bias = mean - exact
    return {
        "bias": np.linalg.norm(bias),
        "bias_se": np.sqrt(variance / grads.shape[0]),
        "variance": variance,
        "cosine": mean @ exact / (np.linalg.norm(mean) * np.linalg.norm(exact) + 1e-30),
        "rel_mse": np.mean(np.sum((grads - exact) ** 2, axis=1)) / np.sum(exact**2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    quadratic, linear, logits = make_problem(args.seed)
    objective = make_objective(quadratic, linear)
    exact = exact_gradient(objective, logits)
    keys = jax.random.split(jax.random.key(args.seed + 1), args.samples)

    rows = [("reinforce", None, 1), ("st", None, 1)]
    for tau in TEMPERATURES:
        rows += [
            ("st-gumbel", tau, 1),
            ("gumbel-rao", tau, 1),
            ("gumbel-rao", tau, 10),
            ("gumbel-rao", tau, 100),
            ("reinmax", tau, 1),
            ("gumbel-softmax (soft)", tau, 1),
        ]

    compiled = {}
    print(
        f"N={NUM_VARIABLES} K={NUM_CLASSES}, f(b) = b'Ab + c'b, {args.samples} samples per row, "
        f"||exact grad|| = {float(jnp.linalg.norm(exact)):.4f}, backend {jax.default_backend()}"
    )
    header = (
        f"{'estimator':<24}{'tau':>5}{'bias norm':>11}{'(MC s.e.)':>11}"
        f"{'variance':>11}{'cosine':>9}{'rel. MSE':>11}"
    )
    print(header)
    print("-" * len(header))
    start = time.perf_counter()
    for estimator, tau, n_samples in rows:
        kind = (estimator, n_samples)
        if kind not in compiled:
            compiled[kind] = jax.jit(
                lambda tau, e=estimator, n=n_samples: sampled_gradients(
                    objective, logits, keys, e, tau, n
                )
            )
        grads = compiled[kind](jnp.float32(1.0 if tau is None else tau))
        stats = summarize(grads, exact)
        name = estimator if estimator != "gumbel-rao" else f"gumbel-rao (n={n_samples})"
        tau_text = "-" if tau is None else f"{tau:g}"
        print(
            f"{name:<24}{tau_text:>5}{stats['bias']:>11.4f}{stats['bias_se']:>11.4f}"
            f"{stats['variance']:>11.4f}{stats['cosine']:>9.4f}{stats['rel_mse']:>11.4f}"
        )
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
