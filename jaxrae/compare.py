"""``jaxrae compare``: methods x seeds, trained and evaluated the same way, with error bars.

The main job of the project (Ghosh et al. 2020, Table 1, carried to discrete codes). A
comparison is a table of *rows*: plain methods (presets) and labelled variants, a preset with
settings of their own (``[variants.<label>]``, see :class:`Experiment`), so one preset can fill
several rows, e.g. an estimator x temperature grid. For every row, all seeds train in one
vmapped program (:func:`jaxrae.train.train`), then each seed is evaluated on the same draws:

- test reconstruction error (sum of squares per image, :func:`jaxrae.metrics.reconstruction_error`);
- the Frechet distance in the penultimate features of a classifier trained by jaxrae for the data
  set (:func:`jaxrae.metrics.feature_network`; "FD (classifier features)", Heusel et al. 2017's
  form, *not* an Inception FID) between the first ``n_eval`` test images and
  (a) their reconstructions, (b) ``n_eval`` decoded prior samples (N(0, I), or uniform codes),
  (c) ``n_eval`` decoded samples of the ex-post density (a 10-component GMM, or a mixture of
  categoricals, fitted on the seed's training codes), (d) ``n_eval`` decoded midpoints of random
  pairs of test codes;
- improved precision and recall (Kynkaanniemi et al. 2019, k = 3) of the ex-post samples;
- the mean test log-likelihood of codes under the ex-post density (nats per code);
- for discrete codes, the mean per-variable perplexity and the number of distinct test codes.

Midpoint of two discrete codes: each categorical variable is copied from one endpoint chosen by
a fair coin (the same coins for every method and seed). Its expectation is the average of the two
one-hot codes, the discrete counterpart of the continuous midpoint, and it stays a valid code.

Evaluation randomness is keyed by the seed *value* (``fold_in(key, seed)``), never by its position
in the seed list, so seed s gets identical numbers alone or among other seeds, and every method's
seed s sees the same test pairs and coins: the paired comparison in :mod:`jaxrae.report` relies
on this.

Output directory (all files written atomically: temp file + rename):

  results.json            every per-seed number, feature network, versions, device, times; per row
                          (keyed by its label) its preset, its own fields and its full config
  table.md, table.csv     mean, std, 95% t-interval, n_ok/n_total, paired difference vs baseline
  reconstructions.png, samples.png, interpolations.png, metrics.png, losses.png
  experiment.json         the resolved experiment of the last invocation
  methods/<label>.json    a finished row's numbers (its presence means "done": resume skips it)
  methods/<label>.npz     the images its figures show
  checkpoints/<label>.msgpack  the training checkpoint (an interrupted row resumes from it)

A row's label is the method's name for a plain method, the table key for a variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import re
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxrae import checkpoint as ckpt
from jaxrae.errors import CheckpointError, ConfigError

FORMAT = "jaxrae-compare-v1"

#: The README's main job: a representative set of continuous and discrete methods on ``digits``.
DEFAULT_DATA = "digits"
DEFAULT_METHODS = ("ae", "vae", "rae-l2", "rae-gp", "wae", "dvae", "drae", "vqvae")
DEFAULT_SEEDS = 5
#: Shared TrainConfig values of the main job (2-core CPU budget: a few minutes in all).
DEFAULT_JOB_CONFIG: dict[str, Any] = {"steps": 500, "batch_size": 64}
DEFAULT_N_EVAL = 1000
DEFAULT_N_COMPONENTS = 10  # Ghosh et al. 2020, Sec. 4: a 10-component GMM
PR_NEIGHBOURS = 3  # Kynkaanniemi et al. 2019: k = 3
EVAL_SEED = 2020
N_FIGURE_IMAGES = 10  # test images in reconstructions.png
N_FIGURE_SAMPLES = 32  # per sample grid
N_FIGURE_PAIRS, N_FIGURE_STEPS = 4, 8  # interpolation strips
MAX_LOSS_POINTS = 500  # loss curves are block-averaged down to this many points


class CompareInterrupted(Exception):
    """Training stopped early on request (``stop_after_chunks``); rerun to resume."""


# --------------------------------------------------------------------------------------------
# The experiment: what to run, as data


#: A row label names files (methods/<label>.json, checkpoints/<label>.msgpack): no separators.
ROW_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A comparison: data, its rows (methods and labelled variants), seeds, configs, evaluation sizes.

    A *row* of the comparison is a label, the preset it trains and the TrainConfig fields it sets
    on top of the shared ``config``. There are two ways to write one:

    - a plain method ``m`` in ``methods``: the row labelled ``m``, preset ``m``, with the fields of
      ``overrides[m]`` (TOML ``[overrides.m]``; none when absent);
    - a variant ``variants[label] = {"method": preset, **fields}`` (TOML ``[variants.<label>]``):
      the row ``label``, so one preset can appear several times with different settings, e.g.
      ``drae`` under four gradient estimators and three temperatures.

    :attr:`rows` resolves both to the same form, and everything downstream (records, checkpoints,
    resume, ``baseline``, paired differences, tables, figures) is keyed by the row label, which
    results and tables call "method" as before. Labels and method names share one namespace; rows
    come in the order ``methods``, then ``variants`` (a TOML file's table order). ``methods=None``
    means the main job's methods, or none when variants are given.

    ``n_train``/``n_test`` keep the first images of each split (quick runs); ``n_eval`` is the
    number of test images and of generated samples per FD (capped at the test set size).
    ``feature_steps`` trains the FD classifier (None: the default of
    :func:`jaxrae.metrics.feature_network`).
    """

    data: str = DEFAULT_DATA
    methods: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = tuple(range(DEFAULT_SEEDS))
    config: Mapping[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_JOB_CONFIG))
    overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    variants: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    baseline: str | None = None
    n_eval: int = DEFAULT_N_EVAL
    n_train: int | None = None
    n_test: int | None = None
    feature_steps: int | None = None
    n_components: int = DEFAULT_N_COMPONENTS

    def __post_init__(self):
        from jaxrae import methods as presets

        object.__setattr__(self, "overrides", _tables("overrides", self.overrides))
        object.__setattr__(self, "variants", _tables("variants", self.variants))
        methods = (() if self.variants else DEFAULT_METHODS) if self.methods is None else self.methods
        object.__setattr__(self, "methods", tuple(methods))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "config", dict(self.config))
        if not self.methods and not self.variants:
            raise ConfigError("nothing to compare: list presets in methods = [...] (see `jaxrae methods`) "
                              "or add [variants.<label>] tables")
        for label in self.variants:  # before the preset check: `--methods a,<label>` is this mistake
            if label in self.methods:
                raise ConfigError(f"{self.row_table(label)}: the label {label!r} is also in methods, and labels and "
                                  f"method names share one namespace; rename the variant (e.g. "
                                  f"[variants.{_toml_key(label + '-2')}]) or drop {label!r} from methods")
        for name in self.methods:
            presets.get(name)  # ConfigError listing the presets
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods {list(self.methods)} repeat a name")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds={list(self.seeds)} is invalid: at least one seed, no repeats")
        if "method" in self.config:
            raise ConfigError("config.method is not allowed in a comparison; list the methods in `methods`, "
                              "or give each [variants.<label>] table its own method")
        for name, fields in self.overrides.items():
            if name in self.variants:
                raise ConfigError(f"[overrides.{_toml_key(name)}] names a variant; put those fields in "
                                  f"[variants.{_toml_key(name)}] instead")
            if name not in self.methods:
                raise ConfigError(f"overrides for {name!r}, which is not among methods {list(self.methods)}")
            if "method" in fields:
                raise ConfigError(f"overrides.{name}.method is not allowed; the key names the method")
        for label, fields in self.variants.items():
            table = self.row_table(label)
            if not ROW_LABEL.fullmatch(label):
                raise ConfigError(f"{table}: the label {label!r} names output files, so use only letters, digits "
                                  "and - _ . + (not starting with . + -), e.g. reinmax-tau0.5")
            if not isinstance(fields.get("method"), str):
                raise ConfigError(f'{table} needs method = "<preset>", the preset the variant starts from '
                                  "(see `jaxrae methods`)")
        if self.baseline is not None and self.baseline not in self.rows:
            raise ConfigError(f"baseline={self.baseline!r} is neither a method nor a variant label; "
                              f"choose one of {list(self.rows)} (`--baseline` on the command line, `baseline` "
                              "in the file)")
        for field, minimum in (("n_eval", PR_NEIGHBOURS + 2), ("feature_steps", 1), ("n_components", 1)):
            value = getattr(self, field)
            if field == "feature_steps" and value is None:
                continue  # the feature network's own default (jaxrae.metrics)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{field}={value!r} is invalid: must be an integer >= {minimum}")
        for label in self.rows:  # every config validates now, not after an hour of training
            try:
                self.method_config(label)
            except ConfigError as e:
                own = label in self.overrides or label in self.variants
                where = f"[config] + {self.row_table(label)}" if own else "[config]"
                raise ConfigError(f"{where}: {e}") from None

    @property
    def rows(self) -> dict[str, dict[str, Any]]:
        """Row label -> ``{"method": preset, **fields it sets on top of config}``, methods first.

        The one place where ``[overrides.m]`` becomes what it is: the variant labelled ``m`` with
        preset ``m``.
        """
        rows = {name: {"method": name, **self.overrides.get(name, {})} for name in self.methods}
        return rows | {label: dict(fields) for label, fields in self.variants.items()}

    def row_table(self, label: str) -> str:
        """The TOML table that holds a row's own fields: ``[variants.<label>]`` or ``[overrides.<m>]``."""
        return f"[{'variants' if label in self.variants else 'overrides'}.{_toml_key(label)}]"

    @property
    def baseline_label(self) -> str:
        """The chosen baseline, else the first row."""
        return self.baseline or next(iter(self.rows))

    def method_config(self, label: str):
        """The TrainConfig of one row (a method or a variant label): shared config, then the row's fields."""
        from jaxrae.config import TrainConfig

        return TrainConfig.from_dict({**self.config, **self.rows[label]})

    def to_dict(self) -> dict:
        return {
            "data": self.data, "methods": list(self.methods), "seeds": list(self.seeds),
            "config": dict(self.config), "overrides": {k: dict(v) for k, v in self.overrides.items()},
            "variants": {k: dict(v) for k, v in self.variants.items()},
            "baseline": self.baseline, "n_eval": self.n_eval, "n_train": self.n_train,
            "n_test": self.n_test, "feature_steps": self.feature_steps, "n_components": self.n_components,
        }

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "experiment") -> "Experiment":
        """Inverse of :meth:`to_dict`; also reads TOML's spellings (``seeds = 5``).

        Every ConfigError, unknown keys included, starts with ``source`` (the file's path).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        values = dict(data)
        if "seeds" in values:
            values["seeds"] = _seed_list(values["seeds"], source)
        if isinstance(values.get("methods"), str):
            values["methods"] = _split_names(values["methods"])
        if "config" in values:  # compare's defaults hold unless the file sets the field
            if not isinstance(values["config"], Mapping):
                raise ConfigError(f"{source}: config must be a table, got {values['config']!r}")
            values["config"] = {**DEFAULT_JOB_CONFIG, **values["config"]}
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None


def _tables(name: str, value) -> dict[str, dict[str, Any]]:
    """``overrides``/``variants`` as plain dicts; ConfigError unless a table of tables."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a table of [{name}.<name>] tables, got {value!r}")
    for key, fields in value.items():
        if not isinstance(fields, Mapping):
            raise ConfigError(f"{name}.{key} must be a table ([{name}.{_toml_key(key)}]), got {fields!r}")
    return {key: dict(fields) for key, fields in value.items()}


def _toml_key(key: str) -> str:
    """``key`` as written in a TOML table header: bare if it can be, else quoted (``"reinmax-tau0.5"``)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment TOML (see ``experiments/``); any unknown key is a ConfigError.

    Top-level keys: ``data, methods, seeds, baseline, n_eval, n_train, n_test, feature_steps,
    n_components``; tables ``[config]`` (TrainConfig fields for every row),
    ``[overrides.<method>]`` (fields for one method of ``methods``) and ``[variants.<label>]``
    (a row of its own: ``method = "<preset>"`` plus TrainConfig fields; see :class:`Experiment`).
    TrainConfig keys are checked by :meth:`jaxrae.config.TrainConfig.from_dict`, which rejects
    unknown names too.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read experiment file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    return Experiment.from_dict(raw, source=str(path))


def _seed_list(value, source: str) -> tuple[int, ...]:
    if isinstance(value, bool):
        raise ConfigError(f"{source}: seeds={value!r} is invalid: a count or a list of integers")
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"{source}: seeds={value} is invalid: at least one seed")
        return tuple(range(value))
    if isinstance(value, (list, tuple)) and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        return tuple(value)
    raise ConfigError(f"{source}: seeds={value!r} is invalid: a count (5) or a list of integers ([0, 3, 7])")


def _split_names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


# --------------------------------------------------------------------------------------------
# Evaluation of one method (all its seeds)


def _seed_keys(key, seeds: Sequence[int]):
    """One key per seed, derived from the seed's value (not its position)."""
    import jax
    import jax.numpy as jnp

    return jnp.stack([jax.random.fold_in(key, int(s)) for s in seeds])


def _eval_keys():
    import jax

    names = ("prior", "fit", "ex_post", "strip")
    return dict(zip(names, jax.random.split(jax.random.PRNGKey(EVAL_SEED), len(names))))


def interpolation_pairs(n_ref: int, n_pairs: int, seed: int = EVAL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i != j, into the reference test images; the same for every method."""
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n_ref, n_pairs)
    j = (i + 1 + rng.integers(0, n_ref - 1, n_pairs)) % n_ref
    return i, j


def interpolate_codes(codes_a: np.ndarray, codes_b: np.ndarray, t: float, discrete: bool, order: np.ndarray | None = None,
                      coins: np.ndarray | None = None) -> np.ndarray:
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
    import jax

    if key not in _COMPILED:
        _COMPILED[key] = jax.jit(make())
    return _COMPILED[key]


def _safe(fn: Callable, *arrays) -> float:
    """fn(*arrays), or nan when an input is not finite (a diverged run's output)."""
    if not all(np.all(np.isfinite(a)) for a in arrays):
        return math.nan
    return float(fn(*arrays))


def _fit_ex_post(runs, train_codes: np.ndarray, keys, n_components: int):
    """One vmapped density fit over runs; runs whose codes are not finite get a stand-in.

    A diverged run can leave non-finite codes, which the density fit rejects for the whole
    stack. Such a run fits the first finite run's codes instead (so the others are unchanged)
    and is returned in ``bad`` so that its ex-post numbers are reported as nan.
    """
    from jaxrae import density

    finite = np.array([np.all(np.isfinite(c)) for c in train_codes])
    bad = ~finite
    if bad.all():
        return None, bad
    if bad.any():
        train_codes = train_codes.copy()
        train_codes[bad] = train_codes[np.argmax(finite)]
    if runs.codec.discrete:
        fitted = density.fit_categorical_mixture(keys, train_codes, runs.codec.n_classes, n_components)
    else:
        fitted = density.fit_gmm(keys, train_codes, n_components)
    return fitted, bad


def evaluate(runs, data, fnet, experiment: Experiment) -> tuple[dict, dict, dict]:
    """Every metric of every run of one method; returns (metrics, figure images, notes).

    ``metrics[key]`` is a list with one float per run (seed). See the module docstring for the
    definitions; all draws are keyed by seed value and shared across methods.
    """
    import jax

    from jaxrae import metrics as M

    keys = _eval_keys()
    seeds = runs.seeds
    n_runs = runs.n_runs
    discrete = runs.codec.discrete
    n_eval = min(experiment.n_eval, data.n_test)
    test = data.test_images[:n_eval]
    ref_feats = fnet.features(test)

    test_codes = runs.encode(test)
    recon = runs.decode(test_codes)
    prior_codes = np.asarray(_compiled(("prior", runs.codec.sample_prior, n_eval),
                                       lambda: jax.vmap(lambda k: runs.codec.sample_prior(k, n_eval)))(_seed_keys(keys["prior"], seeds)))
    prior = runs.decode(prior_codes)

    train_codes = runs.encode(data.train_images)
    density, bad_fit = _fit_ex_post(runs, train_codes, _seed_keys(keys["fit"], seeds), experiment.n_components)
    if density is not None:
        sample = _compiled(("sample", type(density), n_eval), lambda: jax.vmap(lambda d, k: d.sample(k, n_eval)))
        ex_codes = np.asarray(sample(density, _seed_keys(keys["ex_post"], seeds)))
        ex_codes = ex_codes.astype(np.int32) if discrete else ex_codes.astype(np.float32)
        ex_post = runs.decode(ex_codes)
        log_prob = _compiled(("log_prob", type(density)), lambda: jax.vmap(lambda d, c: d.log_prob(c)))
        code_ll = np.asarray(log_prob(density, test_codes), np.float64).mean(axis=1)
    else:
        ex_post = np.full_like(prior, np.nan)
        code_ll = np.full(n_runs, np.nan)

    i, j = interpolation_pairs(n_eval, n_eval)
    coins = np.random.default_rng(EVAL_SEED + 2).random((n_eval, test_codes.shape[-1])) < 0.5 if discrete else None
    midpoints = interpolate_codes(test_codes[:, i], test_codes[:, j], 0.5, discrete, coins=coins)
    interp = runs.decode(midpoints)

    out: dict[str, list[float]] = {k: [] for k in ("rec_error", "fd_rec", "fd_prior", "fd_ex_post", "fd_interp",
                                                   "precision", "recall", "code_loglik")}
    if discrete:
        out["perplexity"], out["distinct_codes"] = [], []
    for r in range(n_runs):
        feats = {name: fnet.features(images[r]) if np.all(np.isfinite(images[r])) else None
                 for name, images in (("rec", recon), ("prior", prior), ("ex_post", ex_post), ("interp", interp))}
        fd = lambda name: math.nan if feats[name] is None else M.frechet_distance(ref_feats, feats[name])  # noqa: E731
        out["rec_error"].append(_safe(M.reconstruction_error, test, recon[r]))
        out["fd_rec"].append(fd("rec"))
        out["fd_prior"].append(fd("prior"))
        out["fd_interp"].append(fd("interp"))
        if bad_fit[r] or feats["ex_post"] is None:
            out["fd_ex_post"].append(math.nan)
            out["precision"].append(math.nan)
            out["recall"].append(math.nan)
            out["code_loglik"].append(math.nan)
        else:
            out["fd_ex_post"].append(fd("ex_post"))
            p, rc = M.precision_recall(ref_feats, feats["ex_post"], k=PR_NEIGHBOURS)
            out["precision"].append(float(p))
            out["recall"].append(float(rc))
            out["code_loglik"].append(float(code_ll[r]))
        if discrete:
            usage = M.code_usage(test_codes[r].reshape(n_eval, -1), runs.codec.n_classes)
            out["perplexity"].append(usage.mean_perplexity)
            out["distinct_codes"].append(float(usage.n_distinct_codes))

    # Figures show one representative run: the first that did not diverge.
    rep = int(np.argmax(runs.ok)) if runs.ok.any() else 0
    strip_i, strip_j = i[:N_FIGURE_PAIRS], j[:N_FIGURE_PAIRS]
    order = np.random.default_rng(EVAL_SEED + 1).permutation(test_codes.shape[-1])
    steps = np.linspace(0.0, 1.0, N_FIGURE_STEPS)
    strip_codes = np.stack([interpolate_codes(test_codes[:, strip_i], test_codes[:, strip_j], t, discrete, order=order)
                            for t in steps], axis=2)  # (runs, pairs, steps, ...)
    strips = runs.decode(strip_codes.reshape(n_runs, N_FIGURE_PAIRS * N_FIGURE_STEPS, *strip_codes.shape[3:]))
    images = {
        "originals": test[:N_FIGURE_IMAGES],
        "reconstructions": recon[rep, :N_FIGURE_IMAGES],
        "prior": prior[rep, :N_FIGURE_SAMPLES],
        "ex_post": ex_post[rep, :N_FIGURE_SAMPLES],
        "interpolations": strips[rep].reshape(N_FIGURE_PAIRS, N_FIGURE_STEPS, *strips.shape[2:]),
    }
    notes = {"figure_seed": seeds[rep], "n_eval": n_eval, "ex_post_fit_failed": bad_fit.tolist()}
    if density is not None:
        notes["ex_post_converged"] = np.asarray(density.converged).tolist()
        notes["ex_post_iterations"] = np.asarray(density.n_iter).tolist()
    return out, images, notes


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
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(blocks, axis=2)
    steps = np.minimum(np.arange(n_blocks) * block + (block + 1) / 2, n_steps)
    return {"steps": steps.tolist(), "loss": [[None if not np.isfinite(v) else float(v) for v in row] for row in mean]}


# --------------------------------------------------------------------------------------------
# Running a comparison


def _row_header(experiment: Experiment, label: str, data, fnet, n_eval: int) -> dict:
    """What a finished row's numbers depend on; a saved row is reused only if it matches.

    The row's full config names its preset and every field its table set, so the header of a
    plain method is what it was before variants existed (older output directories still resume).
    """
    return {
        "format": FORMAT,
        "data": experiment.data,
        "fingerprint": data.fingerprint,
        "config": experiment.method_config(label).to_dict(),
        "seeds": list(experiment.seeds),
        "eval": {"n_eval": n_eval, "n_components": experiment.n_components, "k": PR_NEIGHBOURS,
                 "eval_seed": EVAL_SEED, "feature_steps": fnet.steps, "feature_version": fnet.version},
    }


def _differences(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _load_finished(path: Path, header: dict) -> dict | None:
    """A finished row's record if it exists and matches ``header``; error if it is foreign."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        saved = record["header"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is unreadable ({type(e).__name__}); delete it to redo that method, or rerun with --overwrite") from None
    if saved != ckpt_roundtrip(header):
        diff = ", ".join(_differences(saved, ckpt_roundtrip(header))[:6])
        raise CheckpointError(f"{path} was computed with other settings (differs in: {diff}); "
                              "rerun with --overwrite or choose another --out")
    return record


def ckpt_roundtrip(obj):
    """``obj`` as it reads back from JSON (tuples -> lists)."""
    return json.loads(json.dumps(obj, default=ckpt._json_default))


def json_safe(obj):
    """``obj`` with every nan/inf float replaced by None (null): results files stay strict JSON,
    which jq and other parsers accept; :mod:`jaxrae.report` reads null back as nan."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        return None
    return obj


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})
    return buf.getvalue()


def _row_description(experiment: Experiment, label: str) -> dict:
    """What a reader of results.json needs to know what a row was, next to its full config:
    the preset it starts from and the fields its own table (variant or overrides) set."""
    row = experiment.rows[label]
    return {"preset": row["method"], "overrides": {k: v for k, v in row.items() if k != "method"}}


def run_method(label: str, experiment: Experiment, data, fnet, out: Path, *, progress: bool = True,
               progress_desc: str | None = None, stop_after_chunks: int | None = None) -> dict:
    """Train all seeds of one row (a method or a variant; resuming its checkpoint), evaluate them,
    save the record ``out/methods/<label>.json``."""
    from jaxrae.train import train

    config = experiment.method_config(label)
    n_eval = min(experiment.n_eval, data.n_test)
    header = _row_header(experiment, label, data, fnet, n_eval)
    record_path = out / "methods" / f"{label}.json"
    runs = train(config, data, experiment.seeds, checkpoint_path=out / "checkpoints" / f"{label}.msgpack",
                 progress=progress, progress_desc=progress_desc or label, stop_after_chunks=stop_after_chunks)
    if int(np.asarray(runs.state.step).min()) < config.steps:
        raise CompareInterrupted(f"{label} stopped at step {int(np.asarray(runs.state.step).min())} of {config.steps}")
    t0 = time.perf_counter()
    values, images, notes = evaluate(runs, data, fnet, experiment)
    eval_s = time.perf_counter() - t0
    record = {
        "header": header,
        "method": label,
        **_row_description(experiment, label),
        "discrete": bool(runs.codec.discrete),
        "config": config.to_dict(),
        "seeds": list(runs.seeds),
        "runs": runs.runs,
        "ok": runs.ok.tolist(),
        "diverged_at": runs.diverged_at.tolist(),
        "final_loss": [None if not np.isfinite(v) else float(v) for v in runs.summary()["final_loss"]],
        "metrics": values,
        "times": {"train_s": runs.wall_time_s, "compile_s": runs.compile_time_s, "eval_s": eval_s},
        "notes": notes,
        "loss_curve": loss_curve(runs.losses),
    }
    ckpt.atomic_write_bytes(out / "methods" / f"{label}.npz", _npz_bytes(images))
    record = json_safe(record)  # the same values a later resume reads back
    ckpt.atomic_write_json(record_path, record)  # last: its presence marks the row as done
    return record


def run_compare(experiment: Experiment, out: str | Path, *, resume: bool = False, overwrite: bool = False,
                progress: bool = True, feature_cache_dir: str | Path | None = None,
                stop_after_chunks: int | None = None, log: Callable = print, figures: bool = True,
                command: str | None = None) -> dict:
    """Run (or resume) a comparison into ``out``; returns the ``results.json`` structure.

    Rows are ``experiment.rows`` (methods, then variants), each keyed by its label: finished
    rows (``out/methods/<label>.json`` of the same settings) are loaded, not rerun; an
    interrupted row continues from ``out/checkpoints/<label>.msgpack``. ``out`` must be empty
    unless ``resume`` or ``overwrite``. ``stop_after_chunks`` stops the first row that still
    trains after that many chunks and raises :class:`CompareInterrupted` (for resume tests);
    ``figures=False`` writes the tables and results but no PNGs. ``command`` (the shell line
    that ran this, e.g. ``jaxrae compare --config ...``) heads table.md and is kept in results.json.
    """
    from jaxrae.cli import prepare_out_dir
    from jaxrae.data import load_data
    from jaxrae.features import feature_network

    t_start = time.perf_counter()
    out = Path(out)
    prepare_out_dir(out, resume, overwrite)
    data = load_data(experiment.data, n_train=experiment.n_train, n_test=experiment.n_test)
    t0 = time.perf_counter()
    fnet = feature_network(data, cache_dir=feature_cache_dir, steps=experiment.feature_steps)
    feature_s = time.perf_counter() - t0
    n_eval = min(experiment.n_eval, data.n_test)
    labels = list(experiment.rows)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(labels), desc="compare", unit="row", position=0, dynamic_ncols=True)
    say = (lambda msg: bar.write(msg)) if bar is not None else log  # noqa: E731
    records: dict[str, dict] = {}
    try:
        for index, label in enumerate(labels):
            header = _row_header(experiment, label, data, fnet, n_eval)
            record = _load_finished(out / "methods" / f"{label}.json", header)
            if record is not None:
                say(f"{label}: finished earlier, loaded from {out / 'methods' / (label + '.json')}")
            else:
                if bar is not None:
                    bar.set_postfix_str(f"{label}: training + evaluation")
                record = run_method(label, experiment, data, fnet, out, progress=progress,
                                    progress_desc=f"{label} [{index + 1}/{len(labels)}]",
                                    stop_after_chunks=stop_after_chunks)
                t = record["times"]
                say(f"{label}: {sum(record['ok'])}/{len(record['ok'])} ok, train {t['train_s']:.1f}s "
                    f"+ compile {t['compile_s']:.1f}s + eval {t['eval_s']:.1f}s")
            records[label] = record
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    results = assemble_results(experiment, data, fnet, records, n_eval)
    results["times"] = {"this_invocation_s": time.perf_counter() - t_start, "feature_network_s": feature_s}
    results["command"] = command
    write_outputs(results, records, out, figures=figures)
    ckpt.atomic_write_json(out / "experiment.json", experiment.to_dict())
    return results


def assemble_results(experiment: Experiment, data, fnet, records: Mapping[str, dict], n_eval: int) -> dict:
    """The results.json structure from the per-row records (no loss curves: see methods/*.json).

    ``methods`` maps each row label to its record: per-seed numbers, ``preset``, ``overrides``
    (the fields the row's own table set) and the full ``config`` it trained with.
    """
    from jaxrae import report
    from jaxrae.features import FD_METRIC_NAME
    from jaxrae.provenance import environment

    methods = {}
    for label, r in records.items():
        # A record written before variants existed lacks preset/overrides; its header matched, so
        # the experiment's row is the row it was computed for.
        methods[label] = {**{k: v for k, v in r.items() if k not in ("header", "loss_curve")},
                          **_row_description(experiment, label)}
    return {
        "format": FORMAT,
        "data": experiment.data,
        "data_name": data.name,
        "fingerprint": data.fingerprint,
        "n_train": data.n_train,
        "n_test": data.n_test,
        "experiment": experiment.to_dict(),
        "baseline": experiment.baseline_label if len(records) > 1 else None,
        "feature_network": {"metric": FD_METRIC_NAME, "label": fnet.metric_label, "test_accuracy": fnet.test_accuracy,
                            "target": fnet.target, "accuracy_name": fnet.accuracy_name,
                            "majority_accuracy": fnet.majority_accuracy, "steps": fnet.steps, "version": fnet.version, "fingerprint": fnet.fingerprint},
        "eval": {"n_eval": n_eval, "n_components": experiment.n_components, "k": PR_NEIGHBOURS, "eval_seed": EVAL_SEED},
        "metric_names": {k: v[1] for k, v in report.METRICS.items()},
        "methods": methods,
        "environment": environment(),
    }


def write_outputs(results: dict, records: Mapping[str, dict], out: Path, figures: bool = True) -> None:
    """results.json, table.md, table.csv and the five figures, each written atomically."""
    from jaxrae import report

    rows = report.summary_table(results)
    results["table"] = rows
    ckpt.atomic_write_json(out / "results.json", json_safe(results))
    ckpt.atomic_write_text(out / "table.md", report.render_markdown(results, rows) + "\n")
    ckpt.atomic_write_text(out / "table.csv", report.render_csv(rows))
    if figures:
        write_figures(results, records, out, rows)


def write_figures(results: Mapping, records: Mapping[str, dict], out: Path, rows: list[dict]) -> None:
    """The five PNGs, from the per-row image files and records (so a resume can redraw them)."""
    from jaxrae import report

    images = {}
    for name in records:
        path = out / "methods" / f"{name}.npz"
        try:
            with np.load(path) as z:
                images[name] = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path} is missing or unreadable ({type(e).__name__}); delete "
                                  f"{out / 'methods' / (name + '.json')} to redo {name}, or rerun with --overwrite") from None
    names = list(records)
    originals = images[names[0]]["originals"]
    report.plot_reconstructions(out / "reconstructions.png", originals, {n: images[n]["reconstructions"] for n in names})
    report.plot_samples(out / "samples.png", {n: images[n]["prior"] for n in names}, {n: images[n]["ex_post"] for n in names})
    report.plot_interpolations(out / "interpolations.png", {n: images[n]["interpolations"] for n in names})
    report.plot_metrics(out / "metrics.png", results, rows)
    curves = {n: (np.asarray(r["loss_curve"]["steps"]),
                  np.array([[np.nan if v is None else v for v in row] for row in r["loss_curve"]["loss"]], np.float64),
                  np.asarray(r["ok"], bool)) for n, r in records.items()}
    report.plot_losses(out / "losses.png", curves)


# --------------------------------------------------------------------------------------------
# Command line


def default_out_dir(data: str) -> Path:
    """``runs/compare-<data>`` (characters other than letters, digits, ``-_.`` become ``_``)."""
    return Path("runs") / f"compare-{re.sub(r'[^A-Za-z0-9_.-]+', '_', data)}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``jaxrae compare`` flags (every TrainConfig field too, applied to every row)."""
    from jaxrae.cli import add_config_flags

    parser.description = (
        "Train every row (a method, or a labelled variant of one: see experiments/README.md) for every "
        "seed (one vmapped program per row), evaluate each seed "
        "(reconstruction error; FD in classifier features of reconstructions, prior samples, "
        "ex-post samples and interpolations; precision/recall; code log-likelihood; code usage), "
        "and write results.json, table.md/.csv and PNG figures. With no arguments: the main job, "
        f"{DEFAULT_DATA} x {','.join(DEFAULT_METHODS)} x {DEFAULT_SEEDS} seeds, "
        f"{DEFAULT_JOB_CONFIG['steps']} steps of batch {DEFAULT_JOB_CONFIG['batch_size']}, into "
        f"{default_out_dir(DEFAULT_DATA)}."
    )
    g = parser.add_argument_group("comparison")
    g.add_argument("--config", dest="experiment_file", default=None,
                   help="experiment TOML (experiments/<name>.toml); flags given here override its top-level keys "
                        "and [config]; a TrainConfig flag for a field that a [variants.*] or [overrides.*] table "
                        "sets is an error")
    g.add_argument("--data", default=None, help="digits | fashion_mnist | mnist | idx:<dir> | tfds:<name>, optionally with a "
                   f"preprocessing suffix such as tfds:celeb_a@crop=140,image_size=64 (default {DEFAULT_DATA})")
    g.add_argument("--methods", default=None, help=f"comma-separated presets (default {','.join(DEFAULT_METHODS)}; see `jaxrae methods`); "
                                                 "they replace the file's methods, its [variants.*] rows stay")
    g.add_argument("--seeds", default=None, help=f"a count (5 -> 0..4) or a list (0,5,7) (default {DEFAULT_SEEDS})")
    g.add_argument("--baseline", default=None, help="method or variant label the others are compared to, paired over seeds "
                                                   "(default: the first row)")
    g.add_argument("--n-eval", type=int, default=None, help=f"test images and generated samples per FD (default {DEFAULT_N_EVAL}, capped at the test set)")
    g.add_argument("--n-train", type=int, default=None, help="use only the first N training images")
    g.add_argument("--n-test", type=int, default=None, help="use only the first N test images")
    g.add_argument("--n-components", type=int, default=None, help=f"components of the ex-post mixture (default {DEFAULT_N_COMPONENTS}, as Ghosh et al.)")
    g.add_argument("--feature-steps", type=int, default=None, help="training steps of the FD feature classifier (cached per data set)")
    g.add_argument("--out", default=None,
                   help="output directory (default runs/compare-<data>). An explicit --out that holds results needs "
                        "--resume or --overwrite; the default directory is resumed automatically, so rerunning a plain "
                        "`jaxrae compare` skips finished rows and continues an interrupted one")
    g.add_argument("--resume", action="store_true", help="skip finished rows in --out, continue an interrupted one from its checkpoint")
    g.add_argument("--overwrite", action="store_true", help="delete what --out holds and start afresh")
    g.add_argument("--quiet", action="store_true", help="no progress bars (the summary table is still printed)")
    shared = ", ".join(f"{k}={v}" for k, v in DEFAULT_JOB_CONFIG.items())
    t = parser.add_argument_group(f"training (TrainConfig fields, applied to every row; they override the TOML's [config], "
                                  "and may not set a field that a row's [variants.*]/[overrides.*] table sets; "
                                  f"compare's defaults: {shared}, the rest TrainConfig's)")
    add_config_flags(t)
    for action in t._group_actions:
        if action.dest == "method":  # a comparison names its methods with --methods
            action.help = argparse.SUPPRESS


def experiment_from_args(args) -> Experiment:
    """Defaults < ``--config`` TOML < flags given on the command line.

    TrainConfig flags replace ``[config]`` values; a flag for a field that a row's own table
    (``[variants.<label>]`` or ``[overrides.<method>]``) sets is a ConfigError
    (:func:`_reject_flags_that_rows_set` says why).
    """
    from jaxrae.cli import parse_seeds
    from jaxrae.config import field_names

    base = load_experiment(args.experiment_file) if args.experiment_file else Experiment()
    values = base.to_dict()
    if getattr(args, "method", None) is not None:
        raise ConfigError("--method is not a compare flag; list the methods with --methods a,b,c")
    if args.data is not None:
        values["data"] = args.data
    if args.methods is not None:
        values["methods"] = _split_names(args.methods)
    if args.seeds is not None:
        values["seeds"] = parse_seeds(args.seeds)
    for flag in ("baseline", "n_eval", "n_train", "n_test", "feature_steps", "n_components"):
        if getattr(args, flag) is not None:
            values[flag] = getattr(args, flag)
    given = {name: getattr(args, name) for name in field_names() if name != "method" and getattr(args, name, None) is not None}
    source = f"{args.experiment_file} with the command-line flags" if args.experiment_file else "command line"
    _reject_flags_that_rows_set(given, base, source)
    values["config"] = {**values["config"], **given}
    return Experiment.from_dict(values, source=source)


def _reject_flags_that_rows_set(flags: Mapping[str, Any], experiment: Experiment, source: str) -> None:
    """ConfigError if a TrainConfig flag sets a field that some row's own table also sets.

    A flag applies to every row, like ``[config]``, and wins over ``[config]``. A row's own
    table (``[variants.<label>]``, or ``[overrides.<method>]``, which is the same thing for a
    plain method) says how that row differs from the others. If a flag won there too, ``--tau 1``
    would silently train every ``*-tau0.5``/``*-tau2`` variant at tau 1 under labels that say
    otherwise, i.e. flatten the grid; if the row won, the flag would be silently ignored for it.
    Neither is safe, so the collision is an error naming the flag and the tables. This replaces
    the rule before variants (a flag dropped the field from every ``[overrides.*]``): overrides
    are variants now, and no shipped experiment relied on it.
    """
    for field in flags:
        tables = [experiment.row_table(label) for label, row in experiment.rows.items() if field in row]
        if tables:
            flag = "--" + field.replace("_", "-")
            listed = ", ".join(tables[:4]) + (f" and {len(tables) - 4} more" if len(tables) > 4 else "")
            raise ConfigError(f"{source}: {flag} sets {field} for every row, but {listed} also set {field}, and a flag "
                              f"would erase that difference between rows; drop {flag}, or change {field} in those tables")


def main(args) -> int:
    """``jaxrae compare``: run, write, print the summary table."""
    from jaxrae import report

    experiment = experiment_from_args(args)
    out = Path(args.out) if args.out else default_out_dir(experiment.data)
    resume = args.resume or (args.out is None and not args.overwrite)
    t0 = time.perf_counter()
    try:
        results = run_compare(experiment, out, resume=resume, overwrite=args.overwrite, progress=not args.quiet,
                              command=getattr(args, "command_line", None))
    except CompareInterrupted as e:  # only reachable from the Python API, kept for symmetry
        raise CheckpointError(f"{e}; rerun with --resume") from None
    print()
    print(report.render_summary(results, results["table"]))
    print()
    n_runs = sum(len(m["ok"]) for m in results["methods"].values())
    print(f"{len(results['methods'])} rows (methods and variants) x {len(experiment.seeds)} seeds ({n_runs} runs) in "
          f"{time.perf_counter() - t0:.1f}s; written to {out}/ "
          "(results.json, table.md, table.csv, reconstructions/samples/interpolations/metrics/losses.png)")
    return 0
