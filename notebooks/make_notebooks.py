"""Write the notebooks of this folder (without outputs) from the cells below.

    python notebooks/make_notebooks.py          # rewrites notebooks/0*.ipynb

Every notebook reads JAXRAE_NOTEBOOK_TINY: set (to anything but "" or "0") it runs at a tiny size
on the embedded `digits` in well under a minute (the CI test, tests/test_notebooks.py); unset it
runs at the size given in its first code cell. Edit the cells here, not the .ipynb files, then
rerun this script and commit both.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''\
import os

# JAXRAE_NOTEBOOK_TINY=1: a few steps, 2 seeds, `digits` (what CI runs). Unset: the full size.
TINY = os.environ.get("JAXRAE_NOTEBOOK_TINY", "0") not in ("", "0")

import jax
import jax.numpy as jnp
import numpy as np
import matplotlib.pyplot as plt
from IPython.display import Image, Markdown, display

import jaxrae
from jaxrae.report import tile


def show_grid(ax, images, n_cols, title=None):
    """Images (n, H, W, C) in [0, 1] as one mosaic on ``ax``."""
    mosaic = tile(np.asarray(images), n_cols)
    ax.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([]); ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def show(fig):
    """Display a figure as PNG whatever the matplotlib backend (inline, Agg, ...), then free it."""
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    display(Image(data=buf.getvalue(), format="png"))
'''


def data_choice(tiny_data: str = "digits") -> str:
    return f'''\
def default_data():
    """Fashion-MNIST when its files are installed (Debian's dataset-fashion-mnist), else digits."""
    try:
        jaxrae.load_data("fashion_mnist", n_train=1, n_test=1)
        return "fashion_mnist"
    except jaxrae.JaxraeError:
        return "digits"


DATA = os.environ.get("JAXRAE_NOTEBOOK_DATA") or ("{tiny_data}" if TINY else default_data())
'''


def quickstart() -> list:
    return [
        new_markdown_cell(
            "# 01 - Quickstart: many seeds in one call, prior vs ex-post samples\n\n"
            "A regularized autoencoder (RAE-L2, Ghosh et al. 2020) has no prior to sample from: its "
            "codes are deterministic and its latent regularizer is 0.5||z||^2, not a KL term. The "
            "paper samples it by fitting a 10-component Gaussian mixture on the training codes "
            "after training (the *ex-post* density). This notebook trains several seeds in one "
            "vmapped program, draws its loss curves, and decodes samples from N(0, I) and from the "
            "GMM.\n\n"
            "`JAXRAE_NOTEBOOK_TINY=1` runs it in seconds on the embedded 8x8 `digits`; unset, it "
            "trains for 3000 steps on Fashion-MNIST when installed."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            data_choice()
            + '''
STEPS = 60 if TINY else 3000
SEEDS = [0, 1] if TINY else [0, 1, 2, 3]
METHOD = "rae-l2"

data = jaxrae.load_data(DATA)
print(data.name, "train", data.train_images.shape, "test", data.test_images.shape)
'''
        ),
        new_markdown_cell(
            "## Train every seed at once\n\n"
            "`jaxrae.train` vmaps the whole training loop (a `lax.scan` over steps) over the seeds: "
            "one compiled program, one set of weights per seed. `TrainConfig` fields left unset take "
            "the method's defaults (here the official MNIST beta and lambda of RAE-L2)."
        ),
        new_code_cell(
            '''\
config = jaxrae.TrainConfig(method=METHOD, steps=STEPS, chunk_size=min(250, STEPS))
runs = jaxrae.train(config, data, seeds=SEEDS, progress=not TINY)
print(config)
print("losses", runs.losses.shape, "| diverged:", (~runs.ok).sum(),
      f"| compile {runs.compile_time_s:.1f}s, train {runs.wall_time_s:.1f}s")
'''
        ),
        new_code_cell(
            '''\
fig, ax = plt.subplots(figsize=(6, 3.2))
window = max(1, STEPS // 50)
kernel = np.ones(window) / window
for seed, losses in zip(runs.seeds, runs.losses):
    ax.plot(np.convolve(losses, kernel, mode="valid"), lw=1, label=f"seed {seed}")
ax.set_xlabel("step"); ax.set_ylabel(f"training loss (moving mean of {window})")
ax.set_yscale("log"); ax.legend(fontsize=8); ax.set_title(f"{METHOD} on {data.name}")
show(fig)
'''
        ),
        new_markdown_cell(
            "## Reconstructions, prior samples, ex-post samples\n\n"
            "`fit_ex_post` encodes the training images under every seed's model and fits one GMM "
            "per seed in a single vmapped EM; `sample_ex_post` decodes samples from it. The "
            "N(0, I) prior ignores where the codes actually lie, so its samples are usually worse "
            "for a deterministic autoencoder: the first claim of the paper's Table 1."
        ),
        new_code_cell(
            '''\
key_fit, key_prior, key_post = jax.random.split(jax.random.PRNGKey(0), 3)
n_show = 16
recon = runs.reconstruct(data.test_images[:n_show])
prior = runs.sample_prior(key_prior, n_show)
gmm = runs.fit_ex_post(key_fit, data.train_images, n_components=10)
ex_post = runs.sample_ex_post(key_post, gmm, n_show)
print("GMM per seed: EM iterations", np.asarray(gmm.n_iter), "converged", np.asarray(gmm.converged))

rows = [("test images", np.broadcast_to(data.test_images[:n_show], recon.shape)),
        ("reconstructions", recon), ("N(0, I) samples", prior), ("ex-post GMM samples", ex_post)]
fig, axes = plt.subplots(len(runs.seeds), len(rows), figsize=(2.6 * len(rows), 2.6 * len(runs.seeds)), squeeze=False)
for r, seed in enumerate(runs.seeds):
    for c, (title, images) in enumerate(rows):
        show_grid(axes[r, c], images[r], 4, f"seed {seed}: {title}")
show(fig)
'''
        ),
        new_markdown_cell(
            "## How far are the prior samples from the codes?\n\n"
            "The test log-likelihood of codes under each density says the same thing in numbers: "
            "the fitted GMM explains held-out codes far better than N(0, I)."
        ),
        new_code_cell(
            '''\
test_codes = runs.encode(data.test_images)               # (seeds, n_test, latent_dim)
gmm_ll = np.asarray(jax.vmap(lambda d, c: d.log_prob(c))(gmm, test_codes)).mean(axis=1)
d = test_codes.shape[-1]
normal_ll = (-0.5 * (test_codes ** 2).sum(-1) - 0.5 * d * np.log(2 * np.pi)).mean(axis=1)
for seed, a, b in zip(runs.seeds, normal_ll, gmm_ll):
    print(f"seed {seed}: mean test code log-likelihood  N(0, I) {a:9.2f}   GMM {b:9.2f}  (nats)")
print("code std per dimension (seed 0):", np.round(test_codes[0].std(0), 2))
'''
        ),
    ]


def table_and_figures() -> list:
    return [
        new_markdown_cell(
            "# 02 - The table and its figures from a results directory\n\n"
            "`jaxrae compare` writes `results.json` (every per-seed number), `table.md` and PNG "
            "figures. Everything below is rebuilt from `results.json` alone with `jaxrae.report`.\n\n"
            "Where the results come from, first match wins:\n"
            "1. `JAXRAE_NOTEBOOK_RESULTS=<dir>`: any compare output directory;\n"
            "2. the committed `experiments/results/table1_digits/results.json` when present;\n"
            "3. otherwise a fresh comparison run here through the compare entry point: in tiny mode "
            "(`JAXRAE_NOTEBOOK_TINY=1`) 2 methods x 2 seeds x 40 steps on `digits`, else the "
            "README's main job (`jaxrae compare`'s defaults)."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            '''\
import json
import tempfile
from pathlib import Path

from jaxrae import compare, report


def find_repo_root():
    """The checkout holding experiments/: above the working directory, or above an editable install."""
    for start in (Path.cwd(), Path(jaxrae.__file__).resolve().parent):
        for p in [start, *start.parents]:
            if (p / "experiments").is_dir() and (p / "jaxrae").is_dir():
                return p
    return None


ROOT = find_repo_root()
chosen = os.environ.get("JAXRAE_NOTEBOOK_RESULTS")
committed = ROOT / "experiments" / "results" / "table1_digits" if ROOT else None
if chosen:
    RESULTS_DIR = Path(chosen)
elif committed is not None and (committed / "results.json").exists():
    RESULTS_DIR = committed
else:
    RESULTS_DIR = Path(tempfile.mkdtemp(prefix="jaxrae-compare-"))
    if TINY:
        experiment = compare.Experiment(data="digits", methods=("vae", "rae-l2"), seeds=(0, 1),
                                        config={"steps": 40, "chunk_size": 40}, n_eval=200,
                                        feature_steps=100, n_components=4)
    else:
        experiment = compare.Experiment()  # the README's main job
    compare.run_compare(experiment, RESULTS_DIR, progress=not TINY)
results = json.loads((RESULTS_DIR / "results.json").read_text())
print("results from", RESULTS_DIR)
print("data:", results["data"], "| methods:", ", ".join(results["methods"]),
      "| seeds:", results["experiment"]["seeds"], "| steps:", results["experiment"]["config"].get("steps"))
print("feature network:", results["feature_network"]["label"],
      f"(test accuracy {results['feature_network']['test_accuracy']:.3f})")
env = results["environment"]
print("versions:", env["versions"], "| backend:", env["backend"], env["devices"])
'''
        ),
        new_markdown_cell(
            "## The table\n\n"
            "Mean +- 95 % t-interval over seeds per metric; FD is the Frechet distance in the "
            "features of jaxrae's own classifier for the data set (not an Inception FID); lower is "
            "better except precision, recall and code log-likelihood."
        ),
        new_code_cell(
            '''\
rows = report.summary_table(results)
display(Markdown(report.render_markdown(results, rows)))
'''
        ),
        new_markdown_cell(
            "## Does the ex-post density beat the prior? Paired over seeds\n\n"
            "Seed s of a method sees the same evaluation draws for both samplers, so the per-seed "
            "difference FD(ex-post) - FD(prior) is the honest comparison. Negative means the "
            "ex-post density gives better samples."
        ),
        new_code_cell(
            '''\
names = list(results["methods"])
lines = ["| method | FD prior | FD ex-post | ex-post - prior (95% CI) |", "|---|---:|---:|---:|"]
diffs = {}
for name in names:
    m = results["methods"][name]
    prior = np.asarray(m["metrics"]["fd_prior"], float)
    post = np.asarray(m["metrics"]["fd_ex_post"], float)
    s = report.summarize(post - prior, m["ok"])
    diffs[name] = (post - prior, s)
    lines.append(f"| {name} | {report.fmt(np.nanmean(prior))} | {report.fmt(np.nanmean(post))} | "
                 f"{report.fmt(s['mean'])} [{report.fmt(s['ci_low'])}, {report.fmt(s['ci_high'])}] |")
display(Markdown("\\n".join(lines)))

fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 1), 3.2))
for i, name in enumerate(names):
    d, s = diffs[name]
    ax.scatter(np.full(len(d), i), d, s=12, color="0.5", zorder=2)
    if np.isfinite(s["half_width"]):
        ax.errorbar(i, s["mean"], yerr=s["half_width"], fmt="o", color="C0", capsize=4, zorder=3)
ax.axhline(0, color="k", lw=0.8)
ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
ax.set_ylabel("FD ex-post - FD prior")
ax.set_title("per seed (grey) and mean with 95% interval")
show(fig)
'''
        ),
        new_markdown_cell("## The metric chart, and the figures compare wrote"),
        new_code_cell(
            '''\
chart = Path(tempfile.mkdtemp()) / "metrics.png"
report.plot_metrics(chart, results, rows)
display(Image(filename=str(chart)))
for name in ("samples.png", "interpolations.png", "reconstructions.png", "losses.png"):
    if (RESULTS_DIR / name).exists():
        print(name)
        display(Image(filename=str(RESULTS_DIR / name)))
'''
        ),
    ]


def relaxations() -> list:
    return [
        new_markdown_cell(
            "# 03 - Discrete relaxations: temperature, bias and variance\n\n"
            "A categorical code is not differentiable. `jaxrae.relax` offers the usual ways around "
            "it as pure, PRNG-keyed functions: the Gumbel-softmax relaxation (Jang et al. 2017; "
            "Maddison et al. 2017) and estimators that keep the forward code exactly one-hot but "
            "replace its gradient: straight-through (`st`), straight-through Gumbel-softmax "
            "(`st-gumbel`), Gumbel-Rao (Paulus et al. 2021) and ReinMax (Liu et al. 2023).\n\n"
            "Part 1 shows what the temperature does to Gumbel-softmax samples. Part 2 measures "
            "each estimator's bias and variance against the exact gradient of a tiny model whose "
            "expectation can be enumerated (the idea of `benchmarks/estimators.py`, at notebook "
            "size)."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            '''\
import itertools
from jaxrae import relax

N_SAMPLES = 2_000 if TINY else 100_000       # Monte Carlo draws per estimator and temperature
TEMPERATURES = (0.1, 0.5, 1.0, 2.0) if TINY else (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
'''
        ),
        new_markdown_cell(
            "## 1. Gumbel-softmax samples across temperatures\n\n"
            "y = softmax((logits + g) / tau) with g ~ Gumbel(0, 1). As tau -> 0 the samples become "
            "one-hot and argmax(y) ~ Cat(softmax(logits)) exactly; as tau grows they flatten "
            "towards the centre of the simplex (1/K each), whatever the logits."
        ),
        new_code_cell(
            '''\
logits = jnp.log(jnp.array([0.5, 0.25, 0.15, 0.07, 0.03]))
K = logits.shape[0]
keys = jax.random.split(jax.random.PRNGKey(0), N_SAMPLES)
sample_at = jax.jit(jax.vmap(lambda k, tau: relax.gumbel_softmax(k, logits, tau), in_axes=(0, None)))

fig, axes = plt.subplots(1, len(TEMPERATURES), figsize=(2.4 * len(TEMPERATURES), 2.6), sharey=True)
stats = []
for ax, tau in zip(axes, TEMPERATURES):
    y = np.asarray(sample_at(keys, tau))
    ax.imshow(y[:20], cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_title(f"tau = {tau:g}", fontsize=9); ax.set_xlabel("class")
    entropy = -(y * np.log(np.clip(y, 1e-12, None))).sum(-1).mean()
    freq = np.bincount(y.argmax(-1), minlength=K) / len(y)
    stats.append((tau, y.max(-1).mean(), entropy, freq))
axes[0].set_ylabel("20 samples")
show(fig)

print("softmax(logits)        ", np.round(np.asarray(jax.nn.softmax(logits)), 3))
for tau, top, entropy, freq in stats:
    print(f"tau={tau:<5g} mean max coordinate {top:.3f}  mean entropy {entropy:.3f} nats  "
          f"argmax frequencies {np.round(freq, 3)}")
'''
        ),
        new_markdown_cell(
            "The argmax frequencies do not depend on tau (the Gumbel-max trick), while the "
            "relaxed values do: a low temperature gives near-discrete samples whose gradients are "
            "large and noisy, a high one smooth samples that no longer look like codes.\n\n"
            "During training the temperature is usually annealed (Jang et al. 2017): "
            "tau_t = max(tau_min, tau_0 exp(-r t))."
        ),
        new_code_cell(
            '''\
steps = np.arange(0, 5001, 50)
fig, ax = plt.subplots(figsize=(5, 2.6))
for rate in (1e-4, 5e-4, 1e-3):
    ax.plot(steps, np.asarray(relax.exponential_temperature(steps, 1.0, rate, 0.5)), label=f"r = {rate:g}")
ax.set_xlabel("step"); ax.set_ylabel("tau"); ax.legend(fontsize=8); ax.set_title("tau_0 = 1, tau_min = 0.5")
show(fig)
'''
        ),
        new_markdown_cell(
            "## 2. Estimator bias and variance against the exact gradient\n\n"
            "N = 2 categorical variables with K = 3 classes, codes b (one-hot, flattened to 6 "
            "numbers), a fixed random quadratic f(b) = b'Ab + c'b and "
            "L(logits) = E_{b ~ Cat(softmax(logits))}[f(b)]. The exact gradient sums over all "
            "K^N = 9 codes. An estimator's gradient is grad f(code(key, logits)); averaging many "
            "keys gives its mean (bias = mean - exact) and its variance."
        ),
        new_code_cell(
            '''\
N, K = 2, 3
rng = np.random.default_rng(0)
A = jnp.asarray(rng.normal(size=(N * K, N * K)) / np.sqrt(N * K), jnp.float32)
c = jnp.asarray(rng.normal(size=N * K), jnp.float32)
theta = jnp.asarray(rng.normal(size=(N, K)), jnp.float32)


def f(code):
    b = code.reshape(-1)
    return b @ A @ b + c @ b


codes = jax.nn.one_hot(jnp.asarray(list(itertools.product(range(K), repeat=N))), K)  # (K^N, N, K)
values = jax.vmap(f)(codes)


def expected_f(logits):
    log_q = jnp.sum(codes * jax.nn.log_softmax(logits, -1), axis=(1, 2))
    return jnp.sum(jnp.exp(log_q) * values)


exact = jax.grad(expected_f)(theta)


def gradients(estimator, tau):
    """(N_SAMPLES, N, K) single-sample gradients of f through one estimator."""
    def one(key):
        if estimator == "gumbel-softmax":      # the relaxed objective, for contrast
            return jax.grad(lambda l: f(relax.gumbel_softmax(key, l, tau)))(theta)
        return jax.grad(lambda l: f(relax.discrete_code(key, l, estimator, tau, n_samples=10)))(theta)
    return jax.vmap(one)(keys)


def bias_variance(g):
    g = np.asarray(g, np.float64).reshape(len(g), -1)
    e = np.asarray(exact, np.float64).reshape(-1)
    mean = g.mean(0)
    return (np.linalg.norm(mean - e) / np.linalg.norm(e),            # relative bias
            g.var(0).sum() / np.sum(e ** 2),                          # relative variance
            np.sqrt(g.var(0).sum() / len(g)) / np.linalg.norm(e))    # Monte Carlo s.e. of the bias


ESTIMATORS = ["st-gumbel", "gumbel-rao", "reinmax", "gumbel-softmax"]
table = {"st": [bias_variance(gradients("st", 1.0))] * len(TEMPERATURES)}  # no tau, no noise
for est in ESTIMATORS:
    table[est] = [bias_variance(gradients(est, tau)) for tau in TEMPERATURES]
print(f"||exact gradient|| = {float(jnp.linalg.norm(exact)):.4f}; {N_SAMPLES} samples per cell")
print(f"{'estimator':<16}" + "".join(f"{'tau=' + format(t, 'g'):>24}" for t in TEMPERATURES))
for est, cells in table.items():
    print(f"{est:<16}" + "".join(f"{b:.3f} +- {se:.3f} / {v:.3g}".rjust(24) for b, v, se in cells))
print("cells: relative bias +- its Monte Carlo s.e. / relative variance")
'''
        ),
        new_code_cell(
            '''\
fig, (ax_b, ax_v) = plt.subplots(1, 2, figsize=(9, 3.2))
for est, cells in table.items():
    b, v, se = map(np.asarray, zip(*cells))
    ax_b.errorbar(TEMPERATURES, b, yerr=2 * se, marker="o", ms=3, capsize=2, label=est)
    ax_v.plot(TEMPERATURES, v, marker="o", ms=3, label=est)
for ax, what in ((ax_b, "relative bias ||E g - g*|| / ||g*||  (+- 2 s.e.)"), (ax_v, "relative variance E||g - E g||^2 / ||g*||^2")):
    ax.set_xscale("log"); ax.set_xlabel("tau"); ax.set_title(what, fontsize=9)
ax_v.set_yscale("log"); ax_b.legend(fontsize=8)
show(fig)
'''
        ),
        new_markdown_cell(
            "What to look for (the numbers above are the evidence; at the tiny size the Monte Carlo "
            "error bars are wide):\n\n"
            "- `st` is deterministic: zero variance, and a bias that no temperature can fix.\n"
            "- `st-gumbel` trades bias for variance through tau: small tau, smaller bias, "
            "exploding variance.\n"
            "- `gumbel-rao` has the same expected gradient as `st-gumbel` (it averages the same "
            "surrogate over the Gumbel noise given the code) with lower variance.\n"
            "- `reinmax` is second-order accurate: at tau near 1 its bias is the smallest of the "
            "one-hot estimators on this quadratic (exactly unbiased for quadratics at tau = 1 in "
            "expectation; see tests/test_relax.py).\n"
            "- `gumbel-softmax` (soft) estimates the gradient of a different, relaxed objective; "
            "its bias vanishes only as tau -> 0."
        ),
    ]


def interpolations() -> list:
    return [
        new_markdown_cell(
            "# 04 - Interpolations: continuous vs discrete codes\n\n"
            "Between two test images, a continuous code moves on a line, "
            "z_t = (1 - t) z_a + t z_b. A discrete code (N categorical variables) cannot: the "
            "natural path switches variables from a's class to b's one at a time, and its "
            "midpoint takes each variable from a or b by a fair coin (the expectation of that "
            "midpoint is the average of the one-hot codes; it is what `jaxrae compare`'s "
            "interpolation column uses). We compare an RAE-L2 with a discrete RAE with the "
            "gradient penalty (drae-gp, trained with the penalty at the relaxed code), and also "
            "feed the discrete decoder the *average* of the two one-hot codes, which it never "
            "saw in training."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            data_choice()
            + '''
from jaxrae.compare import interpolate_codes

STEPS = 60 if TINY else 3000
SEEDS = [0, 1] if TINY else [0, 1, 2]
N_PAIRS, N_FRAMES = (3, 7) if TINY else (6, 9)
data = jaxrae.load_data(DATA)
runs = {}
for method in ("rae-l2", "drae-gp"):
    config = jaxrae.TrainConfig(method=method, steps=STEPS, chunk_size=min(250, STEPS))
    runs[method] = jaxrae.train(config, data, seeds=SEEDS, progress=not TINY)
    print(method, "final loss per seed", np.round(runs[method].summary()["final_loss"], 3))
'''
        ),
        new_code_cell(
            '''\
rng = np.random.default_rng(0)
pairs = rng.choice(data.n_test, size=(N_PAIRS, 2), replace=False)
ts = np.linspace(0, 1, N_FRAMES)
a_imgs, b_imgs = data.test_images[pairs[:, 0]], data.test_images[pairs[:, 1]]


def strips(method):
    """(seeds, pairs, frames, H, W, C) decoded paths from a to b."""
    r = runs[method]
    za, zb = r.encode(a_imgs), r.encode(b_imgs)
    order = np.random.default_rng(1).permutation(za.shape[-1])  # which variable switches when
    frames = np.stack([interpolate_codes(za, zb, t, r.codec.discrete, order=order) for t in ts], axis=2)
    out = r.decode(frames.reshape(r.n_runs, -1, *frames.shape[3:]))
    return out.reshape(r.n_runs, N_PAIRS, N_FRAMES, *out.shape[2:])


paths = {m: strips(m) for m in runs}
fig, axes = plt.subplots(1, len(paths), figsize=(0.9 * N_FRAMES * len(paths), 0.9 * N_PAIRS + 0.6), squeeze=False)
for ax, (method, p) in zip(axes[0], paths.items()):
    show_grid(ax, p[0].reshape(-1, *p.shape[3:]), N_FRAMES,
              f"{method} (seed {runs[method].seeds[0]}): " + ("linear path" if method == "rae-l2" else "variables switched one by one"))
show(fig)
'''
        ),
        new_markdown_cell(
            "## The soft midpoint of a discrete code\n\n"
            "The decoder of a discrete model is a function of one-hot vectors; nothing stops us "
            "from evaluating it at 0.5 (e_a + e_b), the point between two codes. With the gradient "
            "penalty at the relaxed code the decoder was trained to be smooth there."
        ),
        new_code_cell(
            '''\
r = runs["drae-gp"]
seed_vars = jax.tree_util.tree_map(lambda v: v[0], r.variables)  # the first seed's model
za, zb = r.encode(a_imgs)[0], r.encode(b_imgs)[0]
K = r.codec.n_classes
soft = 0.5 * (jax.nn.one_hot(za, K) + jax.nn.one_hot(zb, K))
decode_soft = lambda v, c: r.model.apply(v, c.reshape(c.shape[0], -1), False, method=type(r.model).decode)
soft_mid = np.asarray(decode_soft(seed_vars, soft))
coins = np.random.default_rng(2).random(za.shape) < 0.5
coin_mid = r.decode(interpolate_codes(r.encode(a_imgs), r.encode(b_imgs), 0.5, True, coins=coins))[0]
lin_mid = paths["rae-l2"][0][:, N_FRAMES // 2]

fig, axes = plt.subplots(1, 5, figsize=(10, 0.9 * N_PAIRS + 0.8))
for ax, (title, images) in zip(axes, [("a", a_imgs), ("b", b_imgs), ("rae-l2 midpoint", lin_mid),
                                      ("drae-gp coin midpoint", coin_mid), ("drae-gp soft midpoint", soft_mid)]):
    show_grid(ax, images, 1, title)
show(fig)
'''
        ),
        new_markdown_cell(
            "## How smooth are the paths?\n\n"
            "The mean squared pixel change between consecutive frames, and its largest single "
            "jump, per method (mean over seeds and pairs). A discrete path moves in jumps by "
            "construction; the question is how large they are."
        ),
        new_code_cell(
            '''\
for method, p in paths.items():
    steps = ((p[:, :, 1:] - p[:, :, :-1]) ** 2).reshape(*p.shape[:2], N_FRAMES - 1, -1).sum(-1)
    total = ((p[:, :, -1] - p[:, :, 0]) ** 2).reshape(*p.shape[:2], -1).sum(-1)
    print(f"{method:8s} mean step {steps.mean():7.3f}   largest step {steps.max(-1).mean():7.3f}   "
          f"end-to-end {total.mean():7.3f}   (sum of squared pixel differences)")
'''
        ),
    ]


NOTEBOOKS = {
    "01_quickstart.ipynb": quickstart,
    "02_table_and_figures.ipynb": table_and_figures,
    "03_discrete_relaxations.ipynb": relaxations,
    "04_interpolations.ipynb": interpolations,
}


def build(name: str) -> nbformat.NotebookNode:
    nb = new_notebook(cells=NOTEBOOKS[name]())
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:2]}-{i:02d}"  # stable ids: regenerating gives identical files
    nbformat.validate(nb)
    return nb


def main() -> None:
    for name in NOTEBOOKS:
        nbformat.write(build(name), HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
