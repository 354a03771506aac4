"""One row's evaluation: every metric for every seed of a trained :class:`~jaxrae.train.Runs`.

For every seed, on the same draws (Ghosh et al. 2020, Table 1, carried to discrete codes):

- test reconstruction error (sum of squares per image, :func:`jaxrae.metrics.reconstruction_error`);
- the Frechet distance in the penultimate features of a classifier trained by jaxrae for the data
  set (:func:`jaxrae.features.feature_network`; "FD (classifier features)", Heusel et al. 2017's
  form, *not* an Inception FID) between the first ``n_eval`` test images and
  (a) their reconstructions, (b) ``n_eval`` decoded prior samples (N(0, I), or uniform codes),
  (c) ``n_eval`` decoded samples of the ex-post density (a 10-component GMM, or a mixture of
  categoricals, fitted on the seed's training codes), (d) ``n_eval`` decoded midpoints of random
  pairs of test codes;
- improved precision and recall (Kynkaanniemi et al. 2019, k = 3) of the ex-post samples;
- the mean test log-likelihood of codes under the ex-post density (nats per code);
- for discrete codes, the mean per-variable perplexity and the number of distinct test codes;
- for a row with a posterior (:func:`jaxrae.grid.has_posterior`: vae, cv-vae, dvae, dvae-st,
  drae-noise) the reconstruction error and FD of reconstructions twice: from the deterministic
  code every row is scored with (argmax of the logits, the posterior mean), and from the code the
  decoder read in training (:func:`trained_codes`: the code path's own ``train_code`` at the run's
  final temperature, so a relaxed sample at tau_final for a Gumbel-softmax code, the hard sampled
  one-hot of a straight-through estimator, mu + sigma * eps for a Gaussian one), ``rec_error_trained``
  and ``fd_rec_trained``. A dVAE trains on soft codes and the argmax scores it on hard ones: the
  pair separates what the model learned from what the change of code costs;
- test likelihoods of the first ``n_eval`` test images under the decoder's likelihood
  (:data:`jaxrae.grid.LIKELIHOODS`), in nats per image and bits per dimension
  (:mod:`jaxrae.likelihood`): for a VAE (a row whose code noise is the decoder regularizer and
  whose latent term is the KL to the prior: vae, cv-vae with a Gaussian posterior; dvae, dvae-st,
  drae-noise with the categorical posterior and the uniform prior) "test -ELBO" and "test NLL
  (IWAE-k)" (Burda et al. 2016); for every other row "test NLL (ex-post IS-k)", importance
  sampling with the seed's ex-post density as the prior and a proposal around the encoder's code
  (continuous: N(E(x), s^2 I); discrete: :func:`jaxrae.likelihood.categorical_proposal` of the
  code path's ``proposal_logits`` at temperature T with uniform mass), s or T chosen per seed by
  the mean estimate on training images (:func:`jaxrae.likelihood.select_proposal_scale`). A
  Gaussian decoder is evaluated at the observation variance fitted by maximum likelihood on the
  seed's training reconstructions (:func:`jaxrae.likelihood.fit_observation_variance`), not at
  the sigma^2 = 1/2 its squared error corresponds to.

Under dynamic binarization (``data.binarize == "dynamic"``) the training images that the ex-post
density, the observation variance and the proposal choice read are the static binarization of the
training split (:func:`jaxrae.data.binarize_static`), binary like every batch the model saw.

Midpoint of two discrete codes: each categorical variable is copied from one endpoint chosen by
a fair coin (the same coins for every method and seed). Its expectation is the average of the two
one-hot codes, the discrete counterpart of the continuous midpoint, and it stays a valid code.

Evaluation noise: the ex-post density is fitted (best of ``n_init`` k-means++ starts, default
:data:`N_INIT`) and samples drawn ``ex_post_refits`` = R times per trained model (default
:data:`EX_POST_REFITS`), with independent keys. Every metric that reads the fit or draws
(:data:`REFIT_METRICS`) is reported per seed as the mean over the R refits, and its SD over them
is kept in ``notes["refits"]``: the within-model evaluation noise, which :mod:`jaxrae.report`
prints next to the between-seed SD. Refits ride on the run axis of the same vmapped programs.

Evaluation randomness is keyed by the seed *value* (``fold_in(key, seed)``), never by its position
in the seed list, so seed s gets identical numbers alone or among other seeds, and every method's
seed s sees the same test pairs and coins: the paired comparison in :mod:`jaxrae.report` relies
on this.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrae import density, grid, likelihood
from jaxrae import metrics as M
from jaxrae.data import binarize_static
from jaxrae.errors import invalid, require
from jaxrae.nets import AutoEncoder

PR_NEIGHBOURS = 3  # Kynkaanniemi et al. 2019: k = 3
EVAL_SEED = 2020
N_FIGURE_IMAGES = 10  # test images in reconstructions.png
N_FIGURE_SAMPLES = 32  # per sample grid
N_FIGURE_PAIRS, N_FIGURE_STEPS = 4, 8  # interpolation strips
DECODE_BATCH = 1000  # codes per decode call (Runs.decode's default)
MAX_LOSS_POINTS = 500  # loss curves are block-averaged down to this many points
#: Every per-seed metric :func:`evaluate` can return (perplexity and distinct_codes for discrete
#: codes only, the TRAINED_CODE_METRICS and -ELBO/IWAE for rows with a posterior only): the names
#: experiment files use in ``primary`` and ``[equivalence]``.
METRIC_KEYS = (
    "rec_error",
    "rec_error_trained",
    "fd_rec",
    "fd_rec_trained",
    "fd_prior",
    "fd_ex_post",
    "fd_interp",
    "precision",
    "recall",
    "code_loglik",
    "perplexity",
    "distinct_codes",
    "neg_elbo",
    "nll_iwae",
    "nll_ex_post",
    "neg_elbo_bpd",
    "nll_iwae_bpd",
    "nll_ex_post_bpd",
)

LIKELIHOOD_K = 1000  # importance samples per test image (Burda et al. 2016 use 5000)
LIKELIHOOD_CHUNK = 250  # samples per image decoded at once: memory is set by this, not by k
LIKELIHOOD_IMAGE_BATCH = 100  # test images per call of the compiled likelihood program
ELBO_SAMPLES = 100  # draws of the ELBO's reconstruction term per image (at most k)
PROPOSAL_IMAGES = 200  # training images on which a proposal's scale or temperature is chosen
PROPOSAL_K = 100  # samples per image while choosing it
PROPOSAL_SCALES = (0.01, 0.03, 0.1, 0.3, 1.0)  # std of N(E(x), s^2 I) around continuous codes
PROPOSAL_TEMPERATURES = (0.1, 0.3, 1.0, 3.0)  # T of the discrete proposal's softmax(scores / T)
PROPOSAL_UNIFORM_WEIGHT = 0.01  # uniform mass of the discrete proposal (covers the mixture's support)

#: Initializations of every ex-post fit (the best final lower bound is kept): EM from one
#: k-means++ start lands in a visibly worse local optimum often enough to move code LL and the
#: ex-post FD between seeds for reasons unrelated to the model. The library's fit_gmm and
#: fit_categorical_mixture keep scikit-learn's default of 1; the evaluation asks for 4.
N_INIT = 4
#: Independent ex-post fits and sample draws per trained model (the evaluation noise, see evaluate).
EX_POST_REFITS = 3
#: fold_in(PRNGKey(EVAL_SEED), REFIT_STREAM + r) roots refit r > 0 (apart from the fold_in 12 of the likelihood key).
REFIT_STREAM = 1000
#: The metrics that depend on the ex-post fit or on sample draws: computed once per refit.
REFIT_METRICS = (
    "rec_error_trained",
    "fd_rec_trained",
    "fd_prior",
    "fd_ex_post",
    "precision",
    "recall",
    "code_loglik",
    "neg_elbo",
    "nll_iwae",
    "nll_ex_post",
    "neg_elbo_bpd",
    "nll_iwae_bpd",
    "nll_ex_post_bpd",
)
#: Rows with a posterior only: the reconstruction scored from the codes the decoder read in training
#: (:func:`trained_codes`), next to ``rec_error``/``fd_rec`` from the deterministic codes. They draw
#: those codes, so they are refit metrics (every refit draws afresh).
TRAINED_CODE_METRICS = ("rec_error_trained", "fd_rec_trained")
#: fold_in(root, TRAINED_CODES_STREAM) keys the trained-code draws: apart from the split, so the
#: other purposes' keys stay as they were.
TRAINED_CODES_STREAM = 13


def _seed_keys(key, seeds: Sequence[int]):
    """One key per seed, derived from the seed's value (not its position): (n_seeds, ...)."""
    fold = _compiled(("seed_keys",), lambda: jax.vmap(jax.random.fold_in, in_axes=(None, 0)))
    return fold(key, jnp.asarray([int(s) for s in seeds], jnp.uint32))


def _eval_keys(refit: int = 0):
    """The evaluation's keys by purpose for refit ``refit``: the same for every method and seed.

    Refit 0 draws from :data:`EVAL_SEED` exactly as an evaluation without refits always did (its
    numbers are unchanged); refit r > 0 from ``fold_in(PRNGKey(EVAL_SEED), REFIT_STREAM + r)``,
    a stream of its own, so refits are independent draws and refit r is the same in every row.
    """
    root = jax.random.PRNGKey(EVAL_SEED)
    if refit:
        root = jax.random.fold_in(root, REFIT_STREAM + refit)
    names = ("prior", "fit", "ex_post", "strip")
    keys = dict(zip(names, jax.random.split(root, len(names))))
    keys["likelihood"] = jax.random.fold_in(root, 12)  # apart, so the others stay as they were
    keys["trained_codes"] = jax.random.fold_in(root, TRAINED_CODES_STREAM)  # likewise
    return keys


def _refit_seed_keys(purpose: str, seeds: Sequence[int], refits: int):
    """Keys of ``purpose`` for every (refit, seed), refit-major: (refits * n_seeds, ...).

    Row ``r * n_seeds + i`` is seed i's key in refit r; with one refit this is ``_seed_keys`` of
    the evaluation's key, so an evaluation without refits draws exactly as before.
    """
    # numpy, not jnp: an eager jnp.concatenate compiles a program of its own per shape
    return np.concatenate([np.asarray(_seed_keys(_eval_keys(r)[purpose], seeds)) for r in range(refits)])


def training_images(data) -> np.ndarray:
    """The training images the model saw, float32 in [0, 1]: ``data.train_images``, or under
    dynamic binarization their static binarization (binary, like every training batch)."""
    if data.binarize == "dynamic":
        return binarize_static(data.train_images_u8, "train").astype(np.float32) / 255.0
    return data.train_images


def interpolation_pairs(n_ref: int, n_pairs: int, seed: int = EVAL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i != j, into the reference test images; the same for every method."""
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n_ref, n_pairs)
    j = (i + 1 + rng.integers(0, n_ref - 1, n_pairs)) % n_ref
    return i, j


def interpolate_codes(
    codes_a: np.ndarray,
    codes_b: np.ndarray,
    t: float,
    discrete: bool,
    order: np.ndarray | None = None,
    coins: np.ndarray | None = None,
) -> np.ndarray:
    """Codes a fraction ``t`` of the way from ``codes_a`` to ``codes_b`` (..., n, n_vars or d).

    Continuous: ``(1 - t) a + t b``. Discrete: either ``coins`` (boolean (n, n_vars): take b's class
    where true; the midpoint with fair coins) or ``order`` (a permutation of the variables: the
    first ``round(t * n_vars)`` of them take b's class, so a strip switches variables one by one).
    """
    if not discrete:
        return ((1.0 - t) * codes_a + t * codes_b).astype(np.float32)
    if coins is None:
        n_vars = codes_a.shape[-1]
        coins = np.zeros(n_vars, bool)
        coins[order[: int(round(t * n_vars))]] = True
    return np.where(coins, codes_b, codes_a)


_COMPILED: dict = {}


def _compiled(key, make: Callable) -> Callable:
    """jax.jit(make()) cached under ``key``: one compilation per program, not one per primitive
    (an un-jitted vmap dispatches, and compiles, every operation separately)."""
    if key not in _COMPILED:
        _COMPILED[key] = jax.jit(make())
    return _COMPILED[key]


def finite_or_nan(fn: Callable, *arrays) -> float:
    """fn(*arrays), or nan when an input is not finite (a diverged run's output)."""
    if not all(np.all(np.isfinite(a)) for a in arrays):
        return math.nan
    return float(fn(*arrays))


def _fit_ex_post(runs, train_codes: np.ndarray, keys, n_components: int, n_init: int = 1):
    """One vmapped density fit over runs; runs whose codes are not finite get a stand-in.

    ``train_codes`` has a leading run axis (runs, or refits x runs stacked refit-major) and
    ``keys`` one key per entry of it; ``n_init`` initializations per fit, the best kept.
    A diverged run can leave non-finite codes, which the density fit rejects for the whole
    stack. Such a run fits the first finite run's codes instead (so the others are unchanged)
    and is returned in ``bad`` so that its ex-post numbers are reported as nan.
    """
    finite = np.array([np.all(np.isfinite(c)) for c in train_codes])
    bad = ~finite
    if bad.all():
        return None, bad
    if bad.any():
        train_codes = train_codes.copy()
        train_codes[bad] = train_codes[np.argmax(finite)]
    if runs.codec.discrete:
        fitted = density.fit_categorical_mixture(keys, train_codes, runs.codec.n_classes, n_components, n_init=n_init)
    else:
        fitted = density.fit_gmm(keys, train_codes, n_components, n_init=n_init)
    return fitted, bad


def _runs_major(stacked: np.ndarray, refits: int, n_runs: int) -> np.ndarray:
    """(refits * n_runs, n, ...) refit-major -> (n_runs, refits * n, ...): every refit's draws of
    one run side by side, so one decode call serves all refits (the identity for one refit)."""
    if refits == 1:
        return stacked
    per = stacked.reshape(refits, n_runs, *stacked.shape[1:])
    return np.swapaxes(per, 0, 1).reshape(n_runs, refits * stacked.shape[1], *stacked.shape[2:])


def _repeat_runs(a, refits: int):
    """The run axis of ``a`` R = ``refits`` times, refit-major (entry r * n_runs + i: run i, as
    :func:`_refit_seed_keys` stacks keys), so all refits ride one vmapped program; the identity for
    one refit. NumPy, so no eager JAX program per call."""
    return a if refits == 1 else np.concatenate([np.asarray(a)] * refits)


def last_steps(runs) -> np.ndarray:
    """Per run, the step index of its last training step, ``state.step - 1`` (0 for an untrained
    run): the step whose temperature :func:`jaxrae.grid.temperature` gave the final loss. (n_runs,) int32."""
    return np.maximum(np.asarray(runs.state.step, np.int32) - 1, 0).astype(np.int32)


def _trained_code_fn(config, model) -> Callable:
    """``draw(variables, key, x, tau0, step) -> (code, tau)``: the code the decoder read in training.

    The code path's own ``train_code`` (the function :func:`jaxrae.grid.make_loss_fn` calls, so the
    two cannot drift apart) of the encoder's output, at ``tau = grid.temperature(config, tau0, step)``,
    the temperature of training step ``step``; ``code`` is its ``decoder_in`` (B, decoder_in). The
    encoder runs in evaluation mode (running batch statistics), as for every other metric: only the
    code differs from the deterministic reconstruction.
    """
    path = grid.CODE_PATHS[config.method_spec.encoder]

    def draw(variables, key, x, tau0, step):
        h = model.apply(variables, x, False, method=AutoEncoder.encode)
        tau = grid.temperature(config, tau0, step)
        return path.train_code(config, variables["params"], h, key, tau).decoder_in, jnp.asarray(tau, jnp.float32)

    return draw


def trained_codes(runs, images: np.ndarray, keys) -> np.ndarray:
    """Per run, the codes the decoder read in training for ``images`` (n, H, W, C), one draw each:
    (n_runs, n, decoder_in) float, the decoder's input (a one-hot or relaxed one-hot flattened, or z).

    ``keys`` holds one key per run; run i draws from ``keys[i]`` at the temperature of its last
    training step (:func:`last_steps`, the run's own, possibly swept, tau0). For a relaxed code
    (Gumbel-softmax, Jang et al. 2017) this is ``softmax((logits + g) / tau_final)``, for an
    ``argmax`` code the forward value of its estimator (straight-through Gumbel: the hard sampled
    one-hot), for a Gaussian code ``mu + sigma * eps`` (Kingma & Welling 2014): whatever the code
    path's ``train_code`` gives (:func:`_trained_code_fn`).
    """
    config = runs.config
    draw = _trained_code_fn(config, runs.model)
    program = _compiled(
        ("trained_codes", config, runs.image_shape),
        lambda: jax.vmap(lambda v, k, x, t, s: draw(v, k, x, t, s)[0], in_axes=(0, 0, None, 0, 0)),
    )
    return np.asarray(
        program(runs.variables, keys, jnp.asarray(images, jnp.float32), runs.state.hparams.tau, last_steps(runs))
    )


def _trained_reconstructions(runs, images: np.ndarray, keys, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Decoded trained codes of ``images`` for every (refit, run): (images, temperatures).

    ``keys`` are stacked refit-major (entry r * n_runs + i: run i in refit r, as
    :func:`_refit_seed_keys`); the model's variables are repeated R times along the run axis, so
    all refits are one vmapped program (draw and decode together), called once per chunk of
    ``batch`` images; chunk b draws from ``fold_in(key, b)``. Returns images (R * n_runs, n, H, W, C)
    refit-major and the temperature of each run's draw (n_runs,).
    """
    config, model = runs.config, runs.model
    refits = len(keys) // runs.n_runs
    draw = _trained_code_fn(config, model)
    to_images = grid.LIKELIHOODS[config.likelihood].to_images

    def reconstruct(variables, key, x, tau0, step):
        code, tau = draw(variables, key, x, tau0, step)
        return to_images(model.apply(variables, code, False, method=AutoEncoder.decode)), tau

    program = _compiled(
        ("trained_reconstruct", config, runs.image_shape), lambda: jax.vmap(reconstruct, in_axes=(0, 0, None, 0, 0))
    )
    fold = _compiled(("fold_keys",), lambda: jax.vmap(jax.random.fold_in, in_axes=(0, None)))
    variables = jax.tree.map(lambda a: _repeat_runs(a, refits), runs.variables)
    tau0 = _repeat_runs(np.asarray(runs.state.hparams.tau, np.float32), refits)
    steps = _repeat_runs(last_steps(runs), refits)
    chunks, tau = [], None
    for b, i in enumerate(range(0, len(images), batch)):
        out, tau = program(variables, fold(keys, b), jnp.asarray(images[i : i + batch]), tau0, steps)
        chunks.append(np.asarray(out))
    return np.concatenate(chunks, axis=1), np.asarray(tau, np.float64)[: runs.n_runs]


def _set_features(fnet, sets: dict) -> dict:
    """Features of every finite image set in ONE feature-network call.

    ``sets[name]`` is (n_runs, n_sets, n, H, W, C); returns ``name -> [run][set]`` -> (n, F)
    features, or None for a set holding a non-finite image (a diverged run). The network maps
    fixed-size batches, one compiled program, and each image's features depend on that image
    alone, so they are those of a call per set.
    """
    chunks, where = [], []
    for name, images in sets.items():
        finite = np.isfinite(images).reshape(*images.shape[:2], -1).all(axis=-1)
        for r, j in zip(*np.nonzero(finite)):
            chunks.append(images[r, j])
            where.append((name, r, j, images.shape[2]))
    out = {name: [[None] * images.shape[1] for _ in range(images.shape[0])] for name, images in sets.items()}
    if chunks:
        feats = fnet.features(np.concatenate(chunks))
        start = 0
        for name, r, j, n in where:
            out[name][r][j] = feats[start : start + n]
            start += n
    return out


def _by_seed(values: dict) -> str:
    """{seed: text} -> "seed 0: text; seed 3: text"."""
    return "; ".join(f"seed {seed}: {text}" for seed, text in values.items())


def ex_post_warnings(
    train_codes: np.ndarray,
    seeds: Sequence[int],
    n_components: int,
    discrete: bool,
    reg_covar: float = density.REG_COVAR,
) -> list[str]:
    """Why a row's ex-post numbers may mean nothing: one sentence per finding, [] when none.

    ``train_codes`` (runs, n, ...) are the codes the ex-post density is fitted on; runs whose
    codes are not finite (diverged) are skipped. Two findings:

    - continuous codes with directions at the covariance floor
      (:func:`jaxrae.density.collapsed_directions`: eigenvalues of the codes' covariance
      <= ``COVARIANCE_FLOOR_FACTOR * reg_covar``). The fitted Gaussian is a spike of variance
      ~reg_covar there, so each such direction adds about ``0.5 log(1 / reg_covar)`` nats to the
      code log-likelihood, a number set by reg_covar, not by the model; all d of them mean constant
      codes (constant images, or a collapsed encoder);
    - fewer distinct training codes than mixture components (m distinct points support at most m
      components; the others sit on duplicates, with the covariance floor as their covariance).
    """
    seeds = [int(s) for s in seeds]
    finite = [r for r in range(len(seeds)) if np.all(np.isfinite(train_codes[r]))]
    if not finite:
        return []
    codes = np.asarray(train_codes)[finite].reshape(len(finite), train_codes.shape[1], -1)
    warnings_found = []
    if not discrete:
        dim = codes.shape[-1]
        counts = density.collapsed_directions(codes, reg_covar)
        collapsed = {seeds[r]: f"{c} of {dim}" for r, c in zip(finite, counts) if c > 0}
        if collapsed:
            warnings_found.append(
                f"codes at the covariance floor (variance <= {density.COVARIANCE_FLOOR_FACTOR * reg_covar:g}) in "
                f"{_by_seed(collapsed)} directions: the ex-post density is a spike there, and code LL is inflated by "
                f"about {0.5 * math.log(1.0 / reg_covar):.1f} nats per such direction (constant codes if all)"
            )
    distinct = {seeds[r]: len(np.unique(c, axis=0)) for r, c in zip(finite, codes)}
    few = {seed: str(m) for seed, m in distinct.items() if m < n_components}
    if few:
        warnings_found.append(
            f"fewer distinct training codes than the {n_components} mixture components ({_by_seed(few)} distinct): "
            "the extra components sit on duplicate codes, so ex-post samples and code LL describe the fit's "
            "regularization, not the codes"
        )
    return warnings_found


def evaluate(
    runs,
    data,
    fnet,
    *,
    n_eval: int,
    n_components: int,
    likelihood_k: int | None = None,
    n_init: int = N_INIT,
    ex_post_refits: int = EX_POST_REFITS,
) -> tuple[dict, dict, dict]:
    """Every metric of every run of one row; returns (metrics, figure images, notes).

    ``notes["warnings"]`` lists what makes the row's ex-post numbers doubtful
    (:func:`ex_post_warnings`), one sentence each; tables print them under the numbers.

    ``runs`` are the trained seeds (:class:`jaxrae.train.Runs`), ``data`` their
    :class:`~jaxrae.data.Dataset`, ``fnet`` the FD feature network; ``n_eval`` test images and
    samples per FD (capped at the test set size), ``n_components`` of the ex-post mixture,
    ``likelihood_k`` importance samples per test image for the test likelihoods (None: none).
    ``metrics[key]`` is a list with one float per run (seed). See the module docstring for the
    definitions; all draws are keyed by seed value and shared across methods.

    Evaluation noise. Each ex-post fit keeps the best of ``n_init`` initializations, and each run
    is evaluated ``ex_post_refits`` = R times with independent keys (:func:`_eval_keys`): the
    metrics of :data:`REFIT_METRICS` (those that read the ex-post fit or draw samples: FD of prior
    and ex-post samples, precision/recall, code LL, the test likelihoods, the scores of trained
    codes) get R values per seed,
    and ``metrics[key]`` holds their mean, ``x_s = (1/R) sum_r x_{s,r}``. ``notes["refits"]``
    keeps ``n`` (R), ``n_init``, ``values[key]`` (per seed, the R values) and ``sd[key]`` (per
    seed, ``sqrt(sum_r (x_{s,r} - x_s)^2 / (R - 1))``, nan for R = 1): the within-model spread
    that refitting and redrawing alone cause, apart from the between-seed spread of
    ``metrics[key]`` (:mod:`jaxrae.report` shows both). The other metrics (reconstruction error,
    FD of reconstructions and interpolation midpoints, code usage) are deterministic given the
    model: fixed test images, pairs and coins.

    Cost: all R x runs fits are one vmapped program, all R x runs sample draws one, their decodes
    one call per image set, and every image set's features one feature-network call; refit 0
    draws with the keys an evaluation without refits always used, so R = 1 reproduces it.
    """
    for field, value in (("n_init", n_init), ("ex_post_refits", ex_post_refits)):
        require(
            isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1,
            field,
            value,
            "must be an integer >= 1",
        )
    refits = int(ex_post_refits)
    seeds = runs.seeds
    n_runs = runs.n_runs
    discrete = runs.codec.discrete
    n_eval = min(n_eval, data.n_test)
    test = data.test_images[:n_eval]
    ref_feats = fnet.features(test)

    test_codes = runs.encode(test)
    recon = runs.decode(test_codes)
    prior_codes = np.asarray(
        _compiled(
            ("prior", runs.codec.sample_prior, n_eval), lambda: jax.vmap(lambda k: runs.codec.sample_prior(k, n_eval))
        )(_refit_seed_keys("prior", seeds, refits))
    )
    # Every image set (and each refit's) decodes in chunks of n_eval codes: one compiled decode
    # shared by all of them, and refit 0's chunks are those of an evaluation without refits.
    decode_batch = n_eval if n_eval <= DECODE_BATCH else DECODE_BATCH
    prior = runs.decode(_runs_major(prior_codes, refits, n_runs), decode_batch)  # (runs, refits * n_eval, ...)

    train_images = training_images(data)
    train_codes = runs.encode(train_images)
    row_warnings = ex_post_warnings(train_codes, seeds, n_components, discrete)
    # Every (refit, run) fit in one vmapped program, refit-major: entry r * n_runs + i is run i's refit r.
    stacked_codes = _repeat_runs(train_codes, refits)
    fitted, bad_stacked = _fit_ex_post(
        runs, stacked_codes, _refit_seed_keys("fit", seeds, refits), n_components, n_init=n_init
    )
    bad_fit = bad_stacked[:n_runs]
    if fitted is not None:
        sample = _compiled(("sample", type(fitted), n_eval), lambda: jax.vmap(lambda d, k: d.sample(k, n_eval)))
        ex_codes = np.asarray(sample(fitted, _refit_seed_keys("ex_post", seeds, refits)))
        ex_codes = ex_codes.astype(np.int32) if discrete else ex_codes.astype(np.float32)
        ex_post = runs.decode(_runs_major(ex_codes, refits, n_runs), decode_batch)
        log_prob = _compiled(("log_prob", type(fitted)), lambda: jax.vmap(lambda d, c: d.log_prob(c)))
        stacked_test = _repeat_runs(test_codes, refits)
        code_ll = np.asarray(log_prob(fitted, stacked_test), np.float64).mean(axis=1).reshape(refits, n_runs)
    else:
        ex_post = np.full_like(prior, np.nan)
        code_ll = np.full((refits, n_runs), np.nan)

    i, j = interpolation_pairs(n_eval, n_eval)
    coins = np.random.default_rng(EVAL_SEED + 2).random((n_eval, test_codes.shape[-1])) < 0.5 if discrete else None
    midpoints = interpolate_codes(test_codes[:, i], test_codes[:, j], 0.5, discrete, coins=coins)
    interp = runs.decode(midpoints)

    per_refit = (n_runs, refits, n_eval, *prior.shape[2:])
    image_sets = {
        "rec": recon[:, None],
        "prior": prior.reshape(per_refit),
        "ex_post": ex_post.reshape(per_refit),
        "interp": interp[:, None],
    }
    # Rows with a posterior: reconstructions from the codes the decoder read in training, each
    # refit a fresh draw from its own key (a purpose of its own: every other draw is unchanged).
    # Last in the feature call, so the other sets' images sit where they always did.
    scores_trained = grid.has_posterior(runs.config)
    if scores_trained:
        trained_recon, trained_tau = _trained_reconstructions(
            runs, test, _refit_seed_keys("trained_codes", seeds, refits), decode_batch
        )
        trained_recon = _runs_major(trained_recon, refits, n_runs).reshape(per_refit)
        image_sets["rec_trained"] = trained_recon
    feats = _set_features(fnet, image_sets)

    def fd(f):
        return math.nan if f is None else M.frechet_distance(ref_feats, f)

    out: dict[str, list[float]] = {
        k: []
        for k in ("rec_error", "fd_rec", "fd_prior", "fd_ex_post", "fd_interp", "precision", "recall", "code_loglik")
    }
    if discrete:
        out["perplexity"], out["distinct_codes"] = [], []
    drawn_names = ("fd_prior", "fd_ex_post", "precision", "recall", "code_loglik")
    drawn = {
        k: np.full((refits, n_runs), np.nan) for k in drawn_names + (TRAINED_CODE_METRICS if scores_trained else ())
    }
    for r in range(n_runs):  # numpy statistics of features already computed: no JAX program per run
        out["rec_error"].append(finite_or_nan(M.reconstruction_error, test, recon[r]))
        out["fd_rec"].append(fd(feats["rec"][r][0]))
        out["fd_interp"].append(fd(feats["interp"][r][0]))
        for t in range(refits):
            if scores_trained:
                drawn["rec_error_trained"][t, r] = finite_or_nan(M.reconstruction_error, test, trained_recon[r, t])
                drawn["fd_rec_trained"][t, r] = fd(feats["rec_trained"][r][t])
            drawn["fd_prior"][t, r] = fd(feats["prior"][r][t])
            if bad_fit[r] or feats["ex_post"][r][t] is None:
                continue
            drawn["fd_ex_post"][t, r] = fd(feats["ex_post"][r][t])
            drawn["precision"][t, r], drawn["recall"][t, r] = M.precision_recall(
                ref_feats, feats["ex_post"][r][t], k=PR_NEIGHBOURS
            )
            drawn["code_loglik"][t, r] = code_ll[t, r]
        if discrete:
            usage = M.code_usage(test_codes[r].reshape(n_eval, -1), runs.codec.n_classes)
            out["perplexity"].append(usage.mean_perplexity)
            out["distinct_codes"].append(float(usage.n_distinct_codes))

    notes_likelihood = None
    if likelihood_k is not None:
        lik_values, notes_likelihood = _likelihood_refits(
            runs,
            test,
            train_images,
            fitted,
            bad_stacked,
            k=likelihood_k,
            keys=[_eval_keys(t)["likelihood"] for t in range(refits)],
            train_codes=train_codes,
        )
        drawn.update(lik_values)
    for name, values in drawn.items():
        out[name] = [float(v) for v in values.mean(axis=0)]  # one refit: the value itself, bitwise

    # Figures show one representative run: the first that did not diverge; samples of refit 0.
    rep = int(np.argmax(runs.ok)) if runs.ok.any() else 0
    strip_i, strip_j = i[:N_FIGURE_PAIRS], j[:N_FIGURE_PAIRS]
    order = np.random.default_rng(EVAL_SEED + 1).permutation(test_codes.shape[-1])
    steps = np.linspace(0.0, 1.0, N_FIGURE_STEPS)
    strip_codes = np.stack(
        [interpolate_codes(test_codes[:, strip_i], test_codes[:, strip_j], t, discrete, order=order) for t in steps],
        axis=2,
    )  # (runs, pairs, steps, ...)
    n_strip = N_FIGURE_PAIRS * N_FIGURE_STEPS
    strip_codes = strip_codes.reshape(n_runs, n_strip, *strip_codes.shape[3:])
    if n_strip < n_eval <= DECODE_BATCH:  # padded to the shape of the other decodes: no compile of its own
        strip_codes = np.concatenate([strip_codes, np.repeat(strip_codes[:, :1], n_eval - n_strip, axis=1)], axis=1)
    strips = runs.decode(strip_codes)[:, :n_strip]
    images = {
        "originals": test[:N_FIGURE_IMAGES],
        "reconstructions": recon[rep, :N_FIGURE_IMAGES],
        "prior": prior[rep, : min(N_FIGURE_SAMPLES, n_eval)],
        "ex_post": ex_post[rep, : min(N_FIGURE_SAMPLES, n_eval)],
        "interpolations": strips[rep].reshape(N_FIGURE_PAIRS, N_FIGURE_STEPS, *strips.shape[2:]),
    }
    notes = {
        "figure_seed": seeds[rep],
        "n_eval": n_eval,
        "ex_post_fit_failed": bad_fit.tolist(),
        "warnings": row_warnings,
        "refits": refit_notes(drawn, refits, n_init),
    }
    if notes_likelihood is not None:
        notes["likelihood"] = notes_likelihood
    if scores_trained:
        # the temperature of each run's trained codes (the last training step's); a Gaussian code has none
        notes["trained_codes"] = {
            "code": runs.config.method_spec.code,
            "estimator": runs.config.method_spec.estimator if runs.config.method_spec.code == "argmax" else None,
            "temperature": trained_tau.tolist() if runs.codec.discrete else None,
        }
    if fitted is not None:
        # Per run: converged in every refit, and the most EM iterations any refit took.
        notes["ex_post_converged"] = np.asarray(fitted.converged).reshape(refits, n_runs).all(axis=0).tolist()
        notes["ex_post_iterations"] = np.asarray(fitted.n_iter).reshape(refits, n_runs).max(axis=0).tolist()
    return out, images, notes


def refit_notes(drawn: dict, refits: int, n_init: int) -> dict:
    """``notes["refits"]`` of :func:`evaluate` from the (refits, runs) values of each refit metric."""
    values = {name: np.asarray(v, np.float64) for name, v in drawn.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nan refits give nan SDs, on purpose
        sd = {name: v.std(axis=0, ddof=1) if refits > 1 else np.full(v.shape[1], np.nan) for name, v in values.items()}
    return {
        "n": refits,
        "n_init": n_init,
        "values": {name: v.T.tolist() for name, v in values.items()},
        "sd": {name: s.tolist() for name, s in sd.items()},
    }


def likelihood_kind(config) -> str:
    """``"variational"`` for a row with an encoder posterior (:func:`jaxrae.grid.has_posterior`),
    ``"ex_post"`` for a deterministic row generated through its ex-post density; ConfigError
    (field ``likelihood_k``) for a row whose code path gives neither (a registered code path
    without ``posterior``, or a discrete one without ``proposal_logits``)."""
    path = grid.CODE_PATHS[config.method_spec.encoder]
    if grid.has_posterior(config):
        return "variational"
    if path.discrete and path.proposal_logits is None:
        raise invalid(
            "likelihood_k",
            "set",
            f"row {config.method_name!r} has no posterior and its code path "
            f"{config.method_spec.encoder!r} gives no proposal_logits for the ex-post importance sampler; "
            "drop likelihood_k (or register proposal_logits)",
        )
    return "ex_post"


def fit_observation_variances(
    runs, train_images: np.ndarray, batch: int = 1000, codes: np.ndarray | None = None
) -> np.ndarray:
    """Per run, sigma^2 = mean over training images and pixels of (x - D(E(x)))^2
    (:func:`jaxrae.likelihood.fit_observation_variance`, accumulated in batches): (n_runs,).
    ``codes``: the runs' codes of ``train_images`` (``runs.encode(train_images)``), when at hand."""
    total = np.zeros(runs.n_runs)
    for i in range(0, len(train_images), batch):
        x = train_images[i : i + batch]
        recon = runs.reconstruct(x, batch) if codes is None else runs.decode(codes[:, i : i + batch], batch)
        total += np.sum(np.square(recon.astype(np.float64) - x[None]), axis=(1, 2, 3, 4))
    return total / train_images.size


def _likelihood_programs(runs, k: int, kind: str):
    """(choose, estimate): the compiled, run-vmapped programs of one row (cached per row config).

    ``choose(variables, key, x_train, variance, density)`` -> the proposal width of each run
    (ex-post rows); ``estimate(variables, key, x, variance, density, width)`` -> per-image
    (-ELBO, IWAE-k log p) for VAEs or (log p ex-post, log p ex-post) otherwise, each (n_runs, B).
    """
    config, model, codec = runs.config, runs.model, runs.codec
    path = grid.CODE_PATHS[config.method_spec.encoder]
    observation = grid.LIKELIHOODS[config.likelihood]
    chunk = min(LIKELIHOOD_CHUNK, k)

    def encoder_output(variables, x):
        return model.apply(variables, x, False, method=AutoEncoder.encode)

    def log_px_given_z(variables, variance):
        return lambda image, z: observation.log_prob(image, codec.decode_output(variables, z), variance)

    def proposals(variables, h, widths):
        """The proposal at each width of ``widths`` (G,), stacked on a leading axis."""
        params = variables["params"]
        if path.discrete:
            scores = path.proposal_logits(config, params, h)
            return jax.vmap(lambda t: likelihood.categorical_proposal(scores, t, PROPOSAL_UNIFORM_WEIGHT))(widths)
        codes = path.encode(config, params, h)
        return jax.vmap(lambda s: likelihood.gaussian_proposal(codes, s))(widths)

    def choose(variables, key, x, variance, fitted):
        grid_widths = jnp.asarray(PROPOSAL_TEMPERATURES if path.discrete else PROPOSAL_SCALES, jnp.float32)
        q = proposals(variables, encoder_output(variables, x), grid_widths)
        means = likelihood.proposal_grid_estimates(
            key,
            x,
            q,
            fitted.log_prob,
            log_px_given_z(variables, variance),
            k=min(PROPOSAL_K, k),
            chunk_size=min(chunk, PROPOSAL_K),
        )
        return grid_widths[jnp.argmax(means)]

    def estimate(variables, key, x, variance, fitted, width):
        h = encoder_output(variables, x)
        f = log_px_given_z(variables, variance)
        if kind == "variational":
            q = path.posterior(config, variables["params"], h)
            key_elbo, key_iwae = jax.random.split(key)
            n_elbo = min(ELBO_SAMPLES, k)
            elbo = likelihood.elbo(key_elbo, x, q, f, n_samples=n_elbo, chunk_size=min(chunk, n_elbo))
            return elbo, likelihood.iwae_bound(key_iwae, x, q, f, k=k, chunk_size=chunk)
        q = jax.tree.map(lambda a: a[0], proposals(variables, h, width[None]))
        log_px = likelihood.ex_post_log_likelihood(key, x, q, fitted, f, k=k, chunk_size=chunk)
        return log_px, log_px

    cache_key = ("likelihood", config, runs.image_shape, k, kind)
    choose_jit = _compiled(cache_key + ("choose",), lambda: jax.vmap(choose, in_axes=(0, 0, None, 0, 0)))
    estimate_jit = _compiled(cache_key + ("estimate",), lambda: jax.vmap(estimate, in_axes=(0, 0, None, 0, 0, 0)))
    return choose_jit, estimate_jit


def evaluate_likelihoods(
    runs, test: np.ndarray, train_images: np.ndarray, fitted, bad_fit: np.ndarray, *, k: int, key
) -> tuple[dict, dict]:
    """Per-run test likelihoods of one row (module docstring); returns (metrics, notes).

    ``metrics``: for VAEs ``neg_elbo``/``neg_elbo_bpd`` and ``nll_iwae``/``nll_iwae_bpd``, for
    the other rows ``nll_ex_post``/``nll_ex_post_bpd`` (the mean over ``test`` of -log p(x) in
    nats per image, and in bits per dimension); nan for a run whose ex-post fit failed.
    ``notes``: k, the decoder likelihood, the observation variance of each run (Gaussian), the
    proposal width of each run (ex-post rows). Keys are folded from the seed values, so seed s
    gets the same numbers alone or among other seeds.
    """
    values, notes = _likelihood_refits(runs, test, train_images, fitted, bad_fit, k=k, keys=[key])
    return {name: [float(v) for v in vals[0]] for name, vals in values.items()}, notes


def _likelihood_refits(
    runs, test: np.ndarray, train_images: np.ndarray, fitted, bad_fit: np.ndarray, *, k: int, keys, train_codes=None
) -> tuple[dict, dict]:
    """:func:`evaluate_likelihoods` for R = ``len(keys)`` refits at once: values (R, n_runs).

    ``fitted`` and ``bad_fit`` are stacked refit-major (entry r * n_runs + i: run i's refit r,
    as :func:`evaluate` fits them); refit r draws from ``keys[r]``. The R x runs estimates run in
    the compiled, run-vmapped programs of one refit with the run axis R times longer (the model's
    variables repeated R times), so refits add no program and no Python loop; with one refit the
    call is exactly the single-refit one. ``train_codes`` (the runs' codes of ``train_images``),
    when given, spare re-encoding the training images for the observation variance.
    """
    require(
        isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1,
        "likelihood_k",
        k,
        "must be an integer >= 1",
    )
    refits = len(keys)
    config = runs.config
    kind = likelihood_kind(config)
    observation = grid.LIKELIHOODS[config.likelihood]
    n_dims = int(np.prod(test.shape[1:]))
    if kind == "ex_post" and fitted is None:  # no run has finite codes to fit a density on
        return (
            {name: np.full((refits, runs.n_runs), np.nan) for name in ("nll_ex_post", "nll_ex_post_bpd")},
            {"k": k, "likelihood": config.likelihood, "kind": kind},
        )
    if observation.fits_variance:
        variance = fit_observation_variances(runs, train_images, codes=train_codes)
    else:
        variance = np.full(runs.n_runs, np.nan)

    variables = jax.tree.map(lambda a: _repeat_runs(a, refits), runs.variables)
    variance_arg = _repeat_runs(np.asarray(variance, np.float32), refits)
    choose, estimate = _likelihood_programs(runs, k, kind)
    seed_keys = (
        _seed_keys(keys[0], runs.seeds)  # typed keys too
        if refits == 1
        else np.concatenate([np.asarray(_seed_keys(key, runs.seeds)) for key in keys])
    )
    density_arg = fitted if kind == "ex_post" else jnp.zeros(refits * runs.n_runs)
    fold = _compiled(("fold_keys",), lambda: jax.vmap(jax.random.fold_in, in_axes=(0, None)))
    if kind == "ex_post":
        width = choose(variables, fold(seed_keys, 0), jnp.asarray(train_images[:PROPOSAL_IMAGES]), variance_arg, fitted)
    else:
        width = jnp.full(refits * runs.n_runs, jnp.nan)
    first, second = [], []
    # Image batches bound the memory of the k samples per image; each image's samples come from
    # split(batch key, batch size), so the batches (and the last one's shape) are kept as they were.
    for b, i in enumerate(range(0, len(test), LIKELIHOOD_IMAGE_BATCH)):
        a, c = estimate(
            variables,
            fold(seed_keys, 1 + b),
            jnp.asarray(test[i : i + LIKELIHOOD_IMAGE_BATCH]),
            variance_arg,
            density_arg,
            width,
        )
        first.append(np.asarray(a, np.float64))
        second.append(np.asarray(c, np.float64))
    first, second = np.concatenate(first, axis=1), np.concatenate(second, axis=1)

    def bpd(log_px):
        return np.asarray(likelihood.nll_units(log_px, n_dims).bits_per_dim).mean(axis=1)

    if kind == "variational":
        values = {
            "neg_elbo": (-first).mean(axis=1),
            "neg_elbo_bpd": bpd(first),
            "nll_iwae": (-second).mean(axis=1),
            "nll_iwae_bpd": bpd(second),
        }
    else:
        values = {"nll_ex_post": (-first).mean(axis=1), "nll_ex_post_bpd": bpd(first)}
        for name in values:
            values[name] = np.where(bad_fit, np.nan, values[name])
    notes = {
        "k": k,
        "likelihood": config.likelihood,
        "kind": kind,
        "n_images": len(test),
        "chunk_size": min(LIKELIHOOD_CHUNK, k),
        "observation_variance": None if not observation.fits_variance else variance.tolist(),
    }
    if kind == "variational":
        notes["elbo_samples"] = min(ELBO_SAMPLES, k)
    else:
        notes["proposal"] = "temperature" if runs.codec.discrete else "scale"
        widths = np.asarray(width, np.float64).reshape(refits, runs.n_runs)
        # per run: its width (one refit), or the width of each refit
        notes["proposal_width"] = widths[0].tolist() if refits == 1 else widths.T.tolist()
    return {name: np.asarray(v, np.float64).reshape(refits, runs.n_runs) for name, v in values.items()}, notes


def loss_curve(losses: np.ndarray, max_points: int = MAX_LOSS_POINTS) -> dict:
    """Losses (runs, steps) block-averaged to at most ``max_points`` points (nan-aware)."""
    losses = np.asarray(losses, np.float64)
    n_steps = losses.shape[1]
    block = max(1, -(-n_steps // max_points))
    n_blocks = -(-n_steps // block)
    padded = np.full((losses.shape[0], n_blocks * block), np.nan)
    padded[:, :n_steps] = losses
    blocks = padded.reshape(losses.shape[0], n_blocks, block)
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(blocks, axis=2)
    steps = np.minimum(np.arange(n_blocks) * block + (block + 1) / 2, n_steps)
    return {"steps": steps.tolist(), "loss": [[None if not np.isfinite(v) else float(v) for v in row] for row in mean]}


# --------------------------------------------------------------------------------------------
# Convergence of the training loss

#: The default convergence criterion of :func:`loss_convergence` (experiment files: ``convergence``).
CONVERGENCE = {"window": 0.1, "tol": 0.01, "z": 1.645}
#: Fewer steps than this in each half of the window: too short to judge (the noise estimate needs steps).
MIN_HALF_WINDOW = 10


def loss_convergence(
    losses: np.ndarray,
    ok: Sequence[bool] | None = None,
    *,
    window: float = CONVERGENCE["window"],
    tol: float = CONVERGENCE["tol"],
    z: float = CONVERGENCE["z"],
) -> dict:
    """Whether each run's training loss had settled by its last step.

    ``losses`` is (runs, steps), every step's loss (a 1-D array is one run). With ``n`` steps and
    ``h = floor(window * n / 2)``, the last ``window`` of the steps is cut in two halves of ``h``:
    ``a`` = mean loss of steps ``[n - 2h, n - h)``, ``b`` = mean of ``[n - h, n)``, and

        change = (a - b) / max(|a|, |b|)        (> 0: still falling; the scale makes negative losses work)
        noise  = sqrt(s_a^2 / h + s_b^2 / h) / max(|a|, |b|)

    ``noise`` is the standard error of ``change`` from the step-to-step spread of the minibatch
    losses in each half (``s^2``, sample variances; Welch's form). A run has converged when

        |change| <= tol + z * noise,

    i.e. unless the data show, by a one-sided test at 5 % (``z = 1.645``, the normal quantile), that
    the mean loss moved by more than ``tol`` (1 %) between the two halves: a flat but noisy loss is
    not called unconverged by chance, and a loss still falling by more than ``tol`` plus its
    noise is. (Minibatch losses of consecutive steps are nearly independent draws; a trend within
    a half only widens ``s``, so the test errs towards "converged".) It has not converged when
    a non-finite loss occurs anywhere in its history or ``ok`` is False (the run diverged and was
    frozen: its later losses say nothing about convergence), or when ``h < MIN_HALF_WINDOW``
    (too few steps to judge). Pure numpy; ``window``, ``tol`` and ``z`` are the experiment's
    ``convergence`` settings.

    Returns JSON-ready lists, one entry per run: ``converged`` (bool), ``change`` and ``noise``
    (floats; None where not measured), and ``status``, one of ``converged``, ``falling``,
    ``rising``, ``diverged``, ``too short``.
    """
    losses = np.asarray(losses, np.float64)
    if losses.ndim == 1:
        losses = losses[None]
    require(losses.ndim == 2, "losses", losses.shape, "an array (runs, steps) of per-step training losses")
    require(0 < window <= 1, "convergence.window", window, "the fraction of the steps it reads, in (0, 1]")
    require(tol >= 0 and math.isfinite(tol), "convergence.tol", tol, "a relative change >= 0, e.g. 0.01")
    require(z >= 0 and math.isfinite(z), "convergence.z", z, "a number of standard errors >= 0, e.g. 2")
    n_runs, n = losses.shape
    ok = np.ones(n_runs, bool) if ok is None else np.asarray(ok, bool)
    h = int(window * n / 2)
    out = {"converged": [], "change": [], "noise": [], "status": []}
    for run, alive in zip(losses, ok):
        change = noise = None
        if not alive or not np.all(np.isfinite(run)):
            status = "diverged"
        elif h < MIN_HALF_WINDOW:
            status = "too short"
        else:
            before, last = run[n - 2 * h : n - h], run[n - h :]
            a, b = before.mean(), last.mean()
            scale = max(abs(a), abs(b))
            if scale == 0:  # both halves exactly zero: nothing moves
                change = noise = 0.0
            else:
                change = float((a - b) / scale)
                noise = float(math.sqrt(before.var(ddof=1) / h + last.var(ddof=1) / h) / scale)
            bound = tol + z * noise
            status = "converged" if abs(change) <= bound else "falling" if change > 0 else "rising"
        out["converged"].append(status == "converged")
        out["change"].append(change)
        out["noise"].append(noise)
        out["status"].append(status)
    return out
