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
# # 02 - The table and its figures from a results directory
#
# `jaxrae compare` writes `results.json` (every per-seed number), `table.md` and PNG figures.
# Everything below is rebuilt from `results.json` alone with `jaxrae.report`.
#
# Where the results come from, first match wins:
# 1. `JAXRAE_NOTEBOOK_RESULTS=<dir>`: any compare output directory;
# 2. the committed `experiments/results/table1_digits/results.json` when present;
# 3. otherwise a fresh comparison run here through the compare entry point: in tiny mode
#    (`JAXRAE_NOTEBOOK_TINY=1`) 2 methods x 2 seeds x 40 steps on `digits`, else the README's main
#    job (`jaxrae compare`'s defaults).
#
# The last section reloads the trained models with `jaxrae.load_runs` and draws from them.

# %%
import json
import os
import tempfile
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, Markdown, display

import jaxrae
from jaxrae import compare, report
from jaxrae.experiment import Experiment

# JAXRAE_NOTEBOOK_TINY=1: a few steps, 2 seeds, `digits` (what CI runs). Unset: the full size.
TINY = os.environ.get("JAXRAE_NOTEBOOK_TINY", "0") not in ("", "0")


# %%
def find_repo_root():
    """The checkout holding experiments/: above the working directory, or above an editable install."""
    for start in (Path.cwd(), Path(jaxrae.__file__).resolve().parent):
        for p in [start, *start.parents]:
            if (p / "experiments").is_dir() and (p / "jaxrae").is_dir():
                return p
    return None


def tiny_experiment():
    """2 methods x 2 seeds x 40 steps on `digits`, evaluated once with 50 importance samples: the
    comparison tiny mode runs."""
    return Experiment(
        data="digits",
        methods=("vae", "rae-l2"),
        seeds=(0, 1),
        config={"steps": 40, "chunk_size": 40},
        n_eval=200,
        feature_steps=100,
        n_components=4,
        likelihood_k=50,
        n_init=1,
        ex_post_refits=1,
    )


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
        experiment = tiny_experiment()
    else:
        experiment = Experiment()  # the README's main job
    compare.run_compare(experiment, RESULTS_DIR, progress=not TINY)
results = json.loads((RESULTS_DIR / "results.json").read_text())
print("results from", RESULTS_DIR)
print(
    "data:",
    results["data"],
    "| methods:",
    ", ".join(results["methods"]),
    "| seeds:",
    results["experiment"]["seeds"],
    "| steps:",
    results["experiment"]["config"].get("steps"),
)
print(
    "feature network:",
    results["feature_network"]["label"],
    f"(test accuracy {results['feature_network']['test_accuracy']:.3f})",
)
env = results["environment"]
print("versions:", env["versions"], "| backend:", env["backend"], env["devices"])


# %% [markdown]
# ## The table
#
# Mean +- 95 % t-interval over seeds per metric; FD is the Frechet distance in the features of
# jaxrae's own classifier for the data set (not an Inception FID); lower is better except precision,
# recall and code log-likelihood.

# %%
rows = report.summary_table(results)
display(Markdown(report.render_markdown(results, rows)))


# %% [markdown]
# ## Does the ex-post density beat the prior? Paired over seeds
#
# Seed s of a method sees the same evaluation draws for both samplers, so the per-seed difference
# FD(ex-post) - FD(prior) is the honest comparison. Negative means the ex-post density gives better
# samples.

# %%
names = list(results["methods"])
lines = ["| method | FD prior | FD ex-post | ex-post - prior (95% CI) |", "|---|---:|---:|---:|"]
diffs = {}
for name in names:
    m = results["methods"][name]
    prior = np.asarray(m["metrics"]["fd_prior"], float)
    post = np.asarray(m["metrics"]["fd_ex_post"], float)
    s = report.summarize(post - prior, m["ok"])
    diffs[name] = (post - prior, s)
    lines.append(
        f"| {name} | {report.fmt(np.nanmean(prior))} | {report.fmt(np.nanmean(post))} | "
        f"{report.fmt(s['mean'])} [{report.fmt(s['ci_low'])}, {report.fmt(s['ci_high'])}] |"
    )
display(Markdown("\n".join(lines)))

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
report.show_figure(fig)


# %% [markdown]
# ## The metric chart, and the figures compare wrote

# %%
chart = Path(tempfile.mkdtemp()) / "metrics.png"
report.plot_metrics(chart, results, rows)
display(Image(filename=str(chart)))
for name in ("samples.png", "interpolations.png", "reconstructions.png", "losses.png"):
    if (RESULTS_DIR / name).exists():
        print(name)
        display(Image(filename=str(RESULTS_DIR / name)))


# %% [markdown]
# ## Back to the trained models: `jaxrae.load_runs`
#
# `jaxrae compare` keeps every row's final models in `models/<label>/`; `jaxrae.load_runs(dir, row=label)`
# gives them back as a `Runs` (every seed), whose `reconstruct`, `fit_ex_post` and `sample_ex_post`
# return bitwise what the trained runs returned. Committed results keep numbers and figures but no
# models, so when the results directory has none, its experiment is trained again here (the tiny
# one in tiny mode; at full size this takes as long as the original run: point
# `JAXRAE_NOTEBOOK_RESULTS` at a compare directory with `models/` to skip it).

# %%
if (RESULTS_DIR / "models").is_dir():
    MODELS_DIR = RESULTS_DIR
else:
    MODELS_DIR = Path(tempfile.mkdtemp(prefix="jaxrae-models-"))
    again = tiny_experiment() if TINY else Experiment.from_dict(results["experiment"])
    compare.run_compare(again, MODELS_DIR, progress=not TINY, figures=False)
models_results = json.loads((MODELS_DIR / "results.json").read_text())
spec = models_results["experiment"]
data = jaxrae.load_data(spec["data"], n_train=spec["n_train"], n_test=spec["n_test"])
rows_with_models = [label for label in models_results["methods"] if (MODELS_DIR / "models" / label).is_dir()]
print("models from", MODELS_DIR, "| rows:", ", ".join(rows_with_models))


def image_grid(ax, images, title):
    """A row of images (n, H, W, C) in [0, 1] side by side on one axis."""
    tiles = np.clip(np.concatenate(list(images), axis=1), 0.0, 1.0)
    ax.imshow(tiles[..., 0] if tiles.shape[-1] == 1 else tiles, cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize=9, loc="left")
    ax.axis("off")


n_show = 8
test = data.test_images[:n_show]
fig, axes = plt.subplots(
    2 * len(rows_with_models) + 1, 1, figsize=(n_show * 0.9, 1.1 * (2 * len(rows_with_models) + 1))
)
image_grid(axes[0], test, "test images")
for i, label in enumerate(rows_with_models):
    runs = jaxrae.load_runs(MODELS_DIR, row=label)
    ex_post = runs.fit_ex_post(jax.random.key(0), data.train_images, n_components=spec["n_components"])
    samples = runs.sample_ex_post(jax.random.key(1), ex_post, n_show)
    image_grid(axes[1 + 2 * i], runs.reconstruct(test)[0], f"{label}, seed {runs.seeds[0]}: reconstructions")
    image_grid(axes[2 + 2 * i], samples[0], f"{label}, seed {runs.seeds[0]}: ex-post samples")
fig.tight_layout()
report.show_figure(fig)
