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
# # 04 - Interpolations: continuous vs discrete codes
#
# Between two test images, a continuous code moves on a line, z_t = (1 - t) z_a + t z_b. A discrete
# code (N categorical variables) cannot: the natural path switches variables from a's class to b's
# one at a time, and its midpoint takes each variable from a or b by a fair coin (the expectation of
# that midpoint is the average of the one-hot codes; it is what `jaxrae compare`'s interpolation
# column uses). We compare an RAE-L2 with a discrete RAE with the gradient penalty (drae-gp, trained
# with the penalty at the relaxed code), and also feed the discrete decoder the *average* of the two
# one-hot codes, which it never saw in training.

# %%
import os

import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxrae
from jaxrae.evaluate import interpolate_codes
from jaxrae.report import show_figure, show_grid

# JAXRAE_NOTEBOOK_TINY=1: a few steps, 2 seeds, `digits` (what CI runs). Unset: the full size.
TINY = os.environ.get("JAXRAE_NOTEBOOK_TINY", "0") not in ("", "0")


# %%
def default_data():
    """Fashion-MNIST when its files are installed (Debian's dataset-fashion-mnist), else digits."""
    try:
        jaxrae.load_data("fashion_mnist", n_train=1, n_test=1)
        return "fashion_mnist"
    except jaxrae.JaxraeError:
        return "digits"


DATA = os.environ.get("JAXRAE_NOTEBOOK_DATA") or ("digits" if TINY else default_data())

STEPS = 60 if TINY else 3000
SEEDS = [0, 1] if TINY else [0, 1, 2]
N_PAIRS, N_FRAMES = (3, 7) if TINY else (6, 9)
data = jaxrae.load_data(DATA)
runs = {}
for method in ("rae-l2", "drae-gp"):
    config = jaxrae.TrainConfig(method=method, steps=STEPS, chunk_size=min(250, STEPS))
    runs[method] = jaxrae.train(config, data, seeds=SEEDS, progress=not TINY)
    print(method, "final loss per seed", np.round(runs[method].summary()["final_loss"], 3))


# %%
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
    show_grid(
        ax,
        p[0].reshape(-1, *p.shape[3:]),
        N_FRAMES,
        f"{method} (seed {runs[method].seeds[0]}): "
        + ("linear path" if method == "rae-l2" else "variables switched one by one"),
    )
show_figure(fig)


# %% [markdown]
# ## The soft midpoint of a discrete code
#
# The decoder of a discrete model is a function of one-hot vectors; nothing stops us from evaluating
# it at 0.5 (e_a + e_b), the point between two codes. With the gradient penalty at the relaxed code
# the decoder was trained to be smooth there.

# %%
r = runs["drae-gp"]
seed_vars = jax.tree.map(lambda v: v[0], r.variables)  # the first seed's model
za, zb = r.encode(a_imgs)[0], r.encode(b_imgs)[0]
K = r.codec.n_classes
soft = 0.5 * (jax.nn.one_hot(za, K) + jax.nn.one_hot(zb, K))


def decode_soft(variables, codes):
    """The decoder applied to (n, N, K) points of the simplex, flattened as in training."""
    return r.model.apply(variables, codes.reshape(codes.shape[0], -1), False, method=type(r.model).decode)


soft_mid = np.asarray(decode_soft(seed_vars, soft))
coins = np.random.default_rng(2).random(za.shape) < 0.5
coin_mid = r.decode(interpolate_codes(r.encode(a_imgs), r.encode(b_imgs), 0.5, True, coins=coins))[0]
lin_mid = paths["rae-l2"][0][:, N_FRAMES // 2]

fig, axes = plt.subplots(1, 5, figsize=(10, 0.9 * N_PAIRS + 0.8))
for ax, (title, images) in zip(
    axes,
    [
        ("a", a_imgs),
        ("b", b_imgs),
        ("rae-l2 midpoint", lin_mid),
        ("drae-gp coin midpoint", coin_mid),
        ("drae-gp soft midpoint", soft_mid),
    ],
):
    show_grid(ax, images, 1, title)
show_figure(fig)


# %% [markdown]
# ## How smooth are the paths?
#
# The mean squared pixel change between consecutive frames, and its largest single jump, per method
# (mean over seeds and pairs). A discrete path moves in jumps by construction; the question is how
# large they are.

# %%
for method, p in paths.items():
    steps = ((p[:, :, 1:] - p[:, :, :-1]) ** 2).reshape(*p.shape[:2], N_FRAMES - 1, -1).sum(-1)
    total = ((p[:, :, -1] - p[:, :, 0]) ** 2).reshape(*p.shape[:2], -1).sum(-1)
    print(
        f"{method:8s} mean step {steps.mean():7.3f}   largest step {steps.max(-1).mean():7.3f}   "
        f"end-to-end {total.mean():7.3f}   (sum of squared pixel differences)"
    )
