# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 - Discrete relaxations: temperature, bias and variance
#
# A categorical code is not differentiable. `jaxrae.relax` offers the usual ways around it as pure,
# PRNG-keyed functions: the Gumbel-softmax relaxation (Jang et al. 2017; Maddison et al. 2017) and
# estimators that keep the forward code exactly one-hot but replace its gradient: straight-through
# (`st`), straight-through Gumbel-softmax (`st-gumbel`), Gumbel-Rao (Paulus et al. 2021) and ReinMax
# (Liu et al. 2023).
#
# Part 1 shows what the temperature does to Gumbel-softmax samples. Part 2 measures each estimator's
# bias and variance against the exact gradient of a tiny model whose expectation can be enumerated
# (the idea of `benchmarks/estimators.py`, at notebook size).

# %%
import functools
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from jaxrae import relax
from jaxrae.report import show_figure

# JAXRAE_NOTEBOOK_TINY=1: a few steps, 2 seeds, `digits` (what CI runs). Unset: the full size.
TINY = os.environ.get("JAXRAE_NOTEBOOK_TINY", "0") not in ("", "0")


# %%
N_SAMPLES = 2_000 if TINY else 100_000  # Monte Carlo draws per estimator and temperature
TEMPERATURES = (0.1, 0.5, 1.0, 2.0) if TINY else (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


# %% [markdown]
# ## 1. Gumbel-softmax samples across temperatures
#
# y = softmax((logits + g) / tau) with g ~ Gumbel(0, 1). As tau -> 0 the samples become one-hot and
# argmax(y) ~ Cat(softmax(logits)) exactly; as tau grows they flatten towards the centre of the
# simplex (1/K each), whatever the logits.

# %%
logits = jnp.log(jnp.array([0.5, 0.25, 0.15, 0.07, 0.03]))
K = logits.shape[0]
key = jax.random.key(0)
keys = jax.random.split(key, N_SAMPLES)
sample_at = jax.jit(jax.vmap(lambda k, tau: relax.gumbel_softmax(k, logits, tau), in_axes=(0, None)))

fig, axes = plt.subplots(1, len(TEMPERATURES), figsize=(2.4 * len(TEMPERATURES), 2.6), sharey=True)
stats = []
for ax, tau in zip(axes, TEMPERATURES):
    y = np.asarray(sample_at(keys, tau))
    ax.imshow(y[:20], cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_title(f"tau = {tau:g}", fontsize=9)
    ax.set_xlabel("class")
    entropy = -(y * np.log(np.clip(y, 1e-12, None))).sum(-1).mean()
    freq = np.bincount(y.argmax(-1), minlength=K) / len(y)
    stats.append((tau, y.max(-1).mean(), entropy, freq))
axes[0].set_ylabel("20 samples")
show_figure(fig)

print("softmax(logits)        ", np.round(np.asarray(jax.nn.softmax(logits)), 3))
for tau, top, entropy, freq in stats:
    print(
        f"tau={tau:<5g} mean max coordinate {top:.3f}  mean entropy {entropy:.3f} nats  "
        f"argmax frequencies {np.round(freq, 3)}"
    )


# %% [markdown]
# The argmax frequencies do not depend on tau (the Gumbel-max trick), while the relaxed values do: a
# low temperature gives near-discrete samples whose gradients are large and noisy, a high one smooth
# samples that no longer look like codes.
#
# During training the temperature is usually annealed (Jang et al. 2017): tau_t = max(tau_min, tau_0
# exp(-r t)).

# %%
steps = np.arange(0, 5001, 50)
fig, ax = plt.subplots(figsize=(5, 2.6))
for rate in (1e-4, 5e-4, 1e-3):
    ax.plot(steps, np.asarray(relax.exponential_temperature(steps, 1.0, rate, 0.5)), label=f"r = {rate:g}")
ax.set_xlabel("step")
ax.set_ylabel("tau")
ax.legend(fontsize=8)
ax.set_title("tau_0 = 1, tau_min = 0.5")
show_figure(fig)


# %% [markdown]
# ## 2. Estimator bias and variance against the exact gradient
#
# N = 2 categorical variables with K = 3 classes, codes b (one-hot, flattened to 6 numbers), a fixed
# random quadratic f(b) = b'Ab + c'b and L(logits) = E_{b ~ Cat(softmax(logits))}[f(b)]. The exact
# gradient sums over all K^N = 9 codes. An estimator's gradient is grad f(code(key, logits));
# averaging many keys gives its mean (bias = mean - exact) and its variance.
# `relax.estimator_gradient_moments` computes all three in one pure function (the one behind
# `benchmarks/estimators.py`), so a whole row of temperatures is one `vmap`.

# %%
N, K = 2, 3
rng = np.random.default_rng(0)
A = jnp.asarray(rng.normal(size=(N * K, N * K)) / np.sqrt(N * K), jnp.float32)
c = jnp.asarray(rng.normal(size=N * K), jnp.float32)
theta = jnp.asarray(rng.normal(size=(N, K)), jnp.float32)


def f(code):
    b = code.reshape(-1)
    return b @ A @ b + c @ b


exact = relax.expected_objective_gradient(theta, f)  # the sum over all K^N codes


@functools.partial(jax.jit, static_argnums=0)
def moments_over_temperatures(estimator, taus):
    """Mean and variance of one estimator's gradient over N_SAMPLES keys (those of part 1), per tau."""
    return jax.vmap(
        lambda tau: relax.estimator_gradient_moments(key, theta, f, estimator, tau, N_SAMPLES, n_samples=10)
    )(taus)


def bias_variance(moments):
    """Per temperature: (relative bias, relative variance, Monte Carlo s.e. of the relative bias)."""
    mean, variance, exact_grad = (np.asarray(x, np.float64).reshape(len(TEMPERATURES), -1) for x in moments)
    scale = np.linalg.norm(exact_grad, axis=1)
    return list(
        zip(
            np.linalg.norm(mean - exact_grad, axis=1) / scale,  # relative bias
            variance.sum(1) / scale**2,  # relative variance
            np.sqrt(variance.sum(1) / N_SAMPLES) / scale,
        )
    )  # Monte Carlo s.e. of the bias


ESTIMATORS = ["st", "st-gumbel", "gumbel-rao", "reinmax", "gumbel-softmax"]  # st ignores tau: no noise
table = {est: bias_variance(moments_over_temperatures(est, jnp.asarray(TEMPERATURES))) for est in ESTIMATORS}
print(f"||exact gradient|| = {float(jnp.linalg.norm(exact)):.4f}; {N_SAMPLES} samples per cell")
print(f"{'estimator':<16}" + "".join(f"{'tau=' + format(t, 'g'):>24}" for t in TEMPERATURES))
for est, cells in table.items():
    print(f"{est:<16}" + "".join(f"{b:.3f} +- {se:.3f} / {v:.3g}".rjust(24) for b, v, se in cells))
print("cells: relative bias +- its Monte Carlo s.e. / relative variance")


# %%
fig, (ax_b, ax_v) = plt.subplots(1, 2, figsize=(9, 3.2))
for est, cells in table.items():
    b, v, se = map(np.asarray, zip(*cells))
    ax_b.errorbar(TEMPERATURES, b, yerr=2 * se, marker="o", ms=3, capsize=2, label=est)
    ax_v.plot(TEMPERATURES, v, marker="o", ms=3, label=est)
for ax, what in (
    (ax_b, "relative bias ||E g - g*|| / ||g*||  (+- 2 s.e.)"),
    (ax_v, "relative variance E||g - E g||^2 / ||g*||^2"),
):
    ax.set_xscale("log")
    ax.set_xlabel("tau")
    ax.set_title(what, fontsize=9)
ax_v.set_yscale("log")
ax_b.legend(fontsize=8)
show_figure(fig)


# %% [markdown]
# What to look for (the numbers above are the evidence; at the tiny size the Monte Carlo error bars
# are wide):
#
# - `st` is deterministic: zero variance, and a bias that no temperature can fix.
# - `st-gumbel` trades bias for variance through tau: small tau, smaller bias, exploding variance.
# - `gumbel-rao` has the same expected gradient as `st-gumbel` (it averages the same surrogate over
#   the Gumbel noise given the code) with lower variance.
# - `reinmax` is second-order accurate: at tau near 1 its bias is the smallest of the one-hot
#   estimators on this quadratic (exactly unbiased for quadratics at tau = 1 in expectation; see
#   tests/test_relax.py).
# - `gumbel-softmax` (soft) estimates the gradient of a different, relaxed objective; its bias
#   vanishes only as tau -> 0.
