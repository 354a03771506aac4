"""The tiny comparison the compare-level tests share: 8x8 digits cut to 300 training and 120
test images, two seeds, 40 evaluation images, a 30-step feature network and 3 mixture components.

One set of sizes for every file that runs ``run_compare`` in-process: the same data and feature
steps give the same feature network, which the suite's cache then trains once, and a change to
the tiny size is made here, not in each file. Each test adds its rows, ``likelihood_k`` and
training config: ``Experiment(**TINY_COMPARE, methods=..., config=...)``.
"""

TINY_COMPARE = dict(
    data="digits",
    seeds=(0, 1),
    n_train=300,
    n_test=120,
    n_eval=40,
    feature_steps=30,
    n_components=3,
)
