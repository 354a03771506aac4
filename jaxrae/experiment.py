"""The experiment schema: what a comparison runs, as data (a TOML file or an :class:`Experiment`).

A comparison is a table of *rows*: plain methods (presets) and labelled variants, a preset with
settings of their own (``[variants.<label>]``), so one preset can fill several rows, e.g. an
estimator x temperature grid. :class:`Experiment` holds the rows, the data, the seeds, the shared
TrainConfig fields and the evaluation sizes, and validates all of it when it is built, every
row's TrainConfig included, so a typo fails at once rather than after an hour of training.
:func:`load_experiment` reads one from TOML (see ``experiments/``). :mod:`jaxrae.compare` runs it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxrae import grid
from jaxrae import methods as presets
from jaxrae.config import TrainConfig
from jaxrae.data import check_validation_fraction, spec_options
from jaxrae.errors import ConfigError, invalid, require
from jaxrae.evaluate import (
    CONVERGENCE,
    EX_POST_REFITS,
    LIKELIHOOD_K,
    METRIC_KEYS,
    N_INIT,
    PR_NEIGHBOURS,
    likelihood_kind,
)
from jaxrae.train import MAX_SEEDS, check_seeds

#: Bounds of the evaluation's repeat counts (each multiplies the vmapped ex-post fits).
MAX_N_INIT = 64
MAX_EX_POST_REFITS = 100
#: What an experiment that does not set them uses (jaxrae.evaluate's defaults).
DEFAULT_N_INIT = N_INIT
DEFAULT_EX_POST_REFITS = EX_POST_REFITS

#: The README's main job: a representative set of continuous and discrete methods on ``digits``.
DEFAULT_DATA = "digits"
DEFAULT_METHODS = ("ae", "vae", "rae-l2", "rae-gp", "wae", "dvae", "drae", "vqvae")
DEFAULT_SEEDS = 5
#: Shared TrainConfig values of the main job (2-core CPU budget: a few minutes in all).
DEFAULT_JOB_CONFIG: dict[str, Any] = {"steps": 500, "batch_size": 64}
DEFAULT_N_EVAL = 1000
DEFAULT_N_COMPONENTS = 10  # Ghosh et al. 2020, Sec. 4: a 10-component GMM

#: The tuned mode (``[tune]``): see :class:`Tune`.
TUNE_WEIGHTS = ("beta", "lam")  # the loss weights a [tune] grid may scale: beta * L_z, lambda * L_dec
DEFAULT_TUNE_VALIDATION = 0.1
DEFAULT_TUNE_CRITERION = "fd_ex_post"
#: Criteria a [tune] block may minimise on the validation split: evaluation metrics that need no
#: likelihood estimate, with the direction in which they are better.
TUNE_CRITERIA = {
    "fd_ex_post": "lower",
    "fd_rec": "lower",
    "fd_prior": "lower",
    "fd_interp": "lower",
    "rec_error": "lower",
    "precision": "higher",
    "recall": "higher",
}
#: Tuning runs use their own seeds, apart from the reported seeds 0, 1, ..., so that a weight is
#: not chosen for the noise of the very runs the table then reports. ``seeds = n`` in [tune]
#: means TUNE_SEED_BASE, ..., TUNE_SEED_BASE + n - 1.
TUNE_SEED_BASE = 10_000
DEFAULT_TUNE_SEEDS = 2

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
    results and tables call "method". Labels and method names share one namespace; rows come in
    the order ``methods``, then ``variants`` (a TOML file's table order). ``methods=None`` means
    the main job's methods, or none when variants are given.

    ``n_train``/``n_test`` keep the first images of each split (quick runs); ``n_eval`` is the
    number of test images and of generated samples per FD (capped at the test set size).
    ``feature_steps`` trains the FD classifier (None: the default of
    :func:`jaxrae.features.feature_network`). ``likelihood_k`` is the number of importance
    samples per test image of the test likelihoods (-ELBO and IWAE-k for VAEs, the ex-post
    importance-sampled NLL otherwise; :func:`jaxrae.evaluate.evaluate_likelihoods`), None for none.
    ``n_init`` is the number of initializations of every ex-post fit (the best kept) and
    ``ex_post_refits`` the number of independent ex-post fits and sample draws per trained model,
    whose spread is the evaluation noise (:func:`jaxrae.evaluate.evaluate`).

    ``group_sweepable`` (default true): rows whose configs differ only in the swept
    hyperparameters (:data:`jaxrae.train.SWEEPABLE`: lr, beta, lam, tau) train together as one
    vmapped program (:func:`jaxrae.compare.training_groups`), each row still saved, evaluated and
    reported on its own; false trains every row as its own program (``jaxrae compare --no-group``).
    Either way a row's numbers are the same up to float rounding, so it is not part of a row's header.

    Declared before the run, recorded in results.json, read by :mod:`jaxrae.report`:
    ``primary`` lists the primary contrasts against the baseline as ``"<row label>:<metric key>"``
    (e.g. ``"rae-l2:fd_ex_post"``), reported first with a Holm family of their own;
    ``equivalence`` maps a metric key to the TOST margin for "no difference" verdicts on it,
    a positive number in the metric's units (``fd_ex_post = 1.0``) or a string percentage of the
    baseline row's mean (``rec_error = "5%"``). A metric without a margin gets no equivalence verdict.

    ``convergence`` (TOML ``convergence = {window = 0.1, tol = 0.01}``, or a ``[convergence]``
    table; keys left out keep :data:`jaxrae.evaluate.CONVERGENCE`) is the criterion by which every
    seed of every row is judged converged from its per-step training loss
    (:func:`jaxrae.evaluate.loss_convergence`: the mean loss of the last ``window / 2`` of the steps
    against the ``window / 2`` before, a change of at most ``tol`` up to ``z`` standard errors of
    minibatch noise). It judges, it does not change training: results.json records it, and every
    row's record holds the verdict per seed.
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
    primary: tuple[str, ...] = ()
    equivalence: Mapping[str, float | str] = dataclasses.field(default_factory=dict)
    likelihood_k: int | None = LIKELIHOOD_K
    tune: Tune | Mapping[str, Any] | None = None
    n_init: int | None = None  # None: DEFAULT_N_INIT
    ex_post_refits: int | None = None  # None: DEFAULT_EX_POST_REFITS
    # the convergence criterion (a block of its own: it judges training, it does not change it)
    convergence: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(CONVERGENCE))
    # rows that differ only in swept hyperparameters train as one vmapped program (jaxrae.compare.training_groups)
    group_sweepable: bool = True

    def __post_init__(self):
        # Read at construction, not at import, so a caller can lower the default evaluation cost
        # for a whole session (the test suite does; tests of the defaults pass them explicitly).
        if self.n_init is None:
            object.__setattr__(self, "n_init", DEFAULT_N_INIT)
        if self.ex_post_refits is None:
            object.__setattr__(self, "ex_post_refits", DEFAULT_EX_POST_REFITS)
        object.__setattr__(self, "overrides", _tables("overrides", self.overrides))
        object.__setattr__(self, "variants", _tables("variants", self.variants))
        methods = (() if self.variants else DEFAULT_METHODS) if self.methods is None else self.methods
        object.__setattr__(self, "methods", tuple(methods))
        object.__setattr__(self, "seeds", check_seeds(self.seeds))
        object.__setattr__(self, "config", dict(self.config))
        require(
            isinstance(self.data, str) and self.data.strip() != "",
            "data",
            self.data,
            "a data spec string such as digits, idx:<dir> or tfds:<name>",
        )
        require(
            all(isinstance(m, str) for m in self.methods),
            "methods",
            list(self.methods),
            "a list of preset names (strings)",
        )
        require(
            self.baseline is None or isinstance(self.baseline, str), "baseline", self.baseline, "a row label (a string)"
        )
        for field in ("n_train", "n_test"):
            value = getattr(self, field)
            require(
                value is None or (not isinstance(value, bool) and isinstance(value, int) and value >= 1),
                field,
                value,
                "must be an integer >= 1 (or absent for the whole split)",
            )
        # Precision/recall needs k + 2 test images and generated samples (evaluate runs after training).
        require(
            self.n_test is None or self.n_test >= PR_NEIGHBOURS + 2,
            "n_test",
            self.n_test,
            f"the evaluation needs at least {PR_NEIGHBOURS + 2} test images (k={PR_NEIGHBOURS} nearest neighbours + 2)",
        )
        _check_config_types("config", self.config)
        require(
            self.methods or self.variants,
            "methods",
            list(self.methods),
            "nothing to compare: list presets in methods = [...] (see `jaxrae methods`) or add [variants.<label>] tables",
        )
        for label in self.variants:  # before the preset check: `--methods a,<label>` is this mistake
            require(
                label not in self.methods,
                "methods",
                list(self.methods),
                f"{label!r} is also the label of {self.row_table(label)}, and labels and method names share one "
                f"namespace; rename the variant (e.g. [variants.{_toml_key(label + '-2')}]) or drop {label!r} from methods",
            )
        for name in self.methods:
            presets.get(name)  # ConfigError listing the presets
        require(len(set(self.methods)) == len(self.methods), "methods", list(self.methods), "no name may repeat")
        require(
            self.seeds and len(set(self.seeds)) == len(self.seeds),
            "seeds",
            list(self.seeds),
            "at least one seed, no repeats",
        )
        require(
            "method" not in self.config,
            "config.method",
            self.config.get("method"),
            "not allowed in a comparison; list the methods in `methods`, or give each [variants.<label>] table its own method",
        )
        for name, fields in self.overrides.items():
            require(
                name not in self.variants,
                "overrides",
                name,
                f"[overrides.{_toml_key(name)}] names a variant; put those fields in [variants.{_toml_key(name)}] instead",
            )
            require(
                name in self.methods,
                "overrides",
                name,
                f"[overrides.{_toml_key(name)}] must name one of methods {list(self.methods)}",
            )
            require(
                "method" not in fields,
                f"overrides.{name}.method",
                fields.get("method"),
                "not allowed; the table's key names the method",
            )
        for label, fields in self.overrides.items():
            _check_config_types(f"overrides.{label}", fields)
        for label, fields in self.variants.items():
            _check_config_types(f"variants.{label}", {k: v for k, v in fields.items() if k != "method"})
        for label, fields in self.variants.items():
            table = self.row_table(label)
            require(
                ROW_LABEL.fullmatch(label),
                "variants",
                label,
                f"the label of {table} names output files, so use only letters, digits and - _ . + "
                "(not starting with . + -), e.g. reinmax-tau0.5",
            )
            require(
                isinstance(fields.get("method"), str),
                f"{table[1:-1]}.method",
                fields.get("method"),
                f'{table} needs method = "<preset>", the preset the variant starts from (see `jaxrae methods`)',
            )
        require(
            self.baseline is None or self.baseline in self.rows,
            "baseline",
            self.baseline,
            f"neither a method nor a variant label; choose one of {list(self.rows)} (`--baseline` on the command "
            "line, `baseline` in the file)",
        )
        # Upper bounds where a value multiplies the evaluation's memory and time (every fit is
        # vmapped over n_init x ex_post_refits x runs): a typo fails here, not after training.
        for field, minimum, maximum in (
            ("n_eval", PR_NEIGHBOURS + 2, None),
            ("feature_steps", 1, None),
            ("n_components", 1, None),
            ("n_init", 1, MAX_N_INIT),
            ("ex_post_refits", 1, MAX_EX_POST_REFITS),
        ):
            value = getattr(self, field)
            if field == "feature_steps" and value is None:
                continue  # the feature network's own default (jaxrae.metrics)
            require(
                not isinstance(value, bool)
                and isinstance(value, int)
                and value >= minimum
                and (maximum is None or value <= maximum),
                field,
                value,
                f"must be an integer >= {minimum}" + ("" if maximum is None else f" and <= {maximum}"),
            )
        self._check_contrasts()
        self._check_convergence()
        require(
            isinstance(self.group_sweepable, bool),
            "group_sweepable",
            self.group_sweepable,
            "true (rows differing only in lr, beta, lam or tau train as one program) or false (one program per row)",
        )
        require(
            self.likelihood_k is None
            or (
                not isinstance(self.likelihood_k, bool)
                and isinstance(self.likelihood_k, int)
                and self.likelihood_k >= 1
            ),
            "likelihood_k",
            self.likelihood_k,
            "must be an integer >= 1 (importance samples per test image), or absent for none",
        )
        for label in self.rows:  # every config validates now, not after an hour of training
            try:
                config = self.method_config(label)
                if self.likelihood_k is not None:
                    likelihood_kind(config)  # the row can be given a test likelihood
            except ConfigError as e:
                own = label in self.overrides or label in self.variants
                where = f"[config] + {self.row_table(label)}" if own else "[config]"
                raise ConfigError(f"{where}: {e}") from None
        self._check_tune()

    def _check_tune(self) -> None:
        """The ``[tune]`` block: its own fields (:class:`Tune`), and against the rows and the data spec."""
        if self.tune is None:
            return
        if not isinstance(self.tune, Tune):
            object.__setattr__(self, "tune", Tune.from_dict(self.tune))
        tune = self.tune
        for weight in TUNE_WEIGHTS:
            grid_values = getattr(tune, weight)
            require(
                not grid_values or any(weight in tune.weights(self.method_config(label)) for label in self.rows),
                f"tune.{weight}",
                list(grid_values),
                f"no row's method reads {weight} (with a nonzero value) ({_WEIGHT_TERMS[weight]}), so the grid "
                f"would tune nothing; drop tune.{weight}",
            )
        if tune.validation is not None:
            require(
                "validation" not in spec_options(self.data),
                "tune.validation",
                tune.validation,
                f"the data spec {self.data!r} carves a validation split already; set the fraction in one place",
            )

    @property
    def validation_fraction(self) -> float | None:
        """The validation fraction that loading the data must be given: [tune]'s (default
        :data:`DEFAULT_TUNE_VALIDATION` unless the spec carries ``@validation=``), None without [tune]."""
        if self.tune is None:
            return None
        if self.tune.validation is None and "validation" in spec_options(self.data):
            return None  # the spec's suffix carves it
        return DEFAULT_TUNE_VALIDATION if self.tune.validation is None else self.tune.validation

    def with_row_fields(self, fields: Mapping[str, Mapping[str, Any]]) -> Experiment:
        """A copy whose rows set ``fields[label]`` in their own tables (a plain method's
        ``[overrides.m]``, a variant's ``[variants.<label>]``) on top of what they set: how the tuned
        mode trains each row at its chosen weights, with the same labels, headers and resume."""
        overrides = {k: dict(v) for k, v in self.overrides.items()}
        variants = {k: dict(v) for k, v in self.variants.items()}
        for label, values in fields.items():
            if not values:
                continue
            if label in variants:
                variants[label].update(values)
            else:
                overrides[label] = {**overrides.get(label, {}), **values}
        return dataclasses.replace(self, overrides=overrides, variants=variants)

    def _check_contrasts(self) -> None:
        """``primary`` entries name a row other than the baseline and a metric; margins are positive."""
        require(
            isinstance(self.primary, (list, tuple)) and all(isinstance(e, str) for e in self.primary),
            "primary",
            self.primary,
            'a list of "<row label>:<metric key>" strings, e.g. ["rae-l2:fd_ex_post"]',
        )
        object.__setattr__(self, "primary", tuple(self.primary))
        others = [label for label in self.rows if label != self.baseline_label]
        for entry in self.primary:
            row, _, metric = entry.rpartition(":")
            require(
                row in others,
                "primary",
                entry,
                f'"<row label>:<metric key>" with a row compared to the baseline '
                f"{self.baseline_label!r}: one of {others}",
            )
            require(metric in METRIC_KEYS, "primary", entry, f"the metric after ':' must be one of {list(METRIC_KEYS)}")
        require(len(set(self.primary)) == len(self.primary), "primary", list(self.primary), "no entry may repeat")
        require(
            isinstance(self.equivalence, Mapping),
            "equivalence",
            self.equivalence,
            'a table [equivalence] of metric = margin (a number, or a percentage of the baseline mean such as "5%")',
        )
        object.__setattr__(self, "equivalence", dict(self.equivalence))
        for metric, margin in self.equivalence.items():
            require(metric in METRIC_KEYS, "equivalence", metric, f"a metric key, one of {list(METRIC_KEYS)}")
            require(
                _positive_margin(margin),
                f"equivalence.{metric}",
                margin,
                'a positive number in the metric\'s units (1.0) or a positive percentage of the baseline mean ("5%")',
            )

    def _check_convergence(self) -> None:
        """``convergence`` holds only ``window`` in (0, 1], ``tol`` >= 0 and ``z`` >= 0; absent keys take the defaults."""
        require(
            isinstance(self.convergence, Mapping),
            "convergence",
            self.convergence,
            "a table such as {window = 0.1, tol = 0.01}: the fraction of the steps read and the relative change allowed",
        )
        unknown = sorted(set(self.convergence) - set(CONVERGENCE))
        require(not unknown, "convergence", unknown, f"unknown key; allowed: {', '.join(CONVERGENCE)}")
        settings = {**CONVERGENCE, **self.convergence}
        for key, value in settings.items():
            require(
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                f"convergence.{key}",
                value,
                "must be a finite number",
            )
        require(
            0 < settings["window"] <= 1,
            "convergence.window",
            settings["window"],
            "the fraction of the steps whose two halves are compared, in (0, 1] (0.1: the last 10%)",
        )
        require(settings["tol"] >= 0, "convergence.tol", settings["tol"], "a relative change >= 0 (0.01: 1%)")
        require(settings["z"] >= 0, "convergence.z", settings["z"], "standard errors of minibatch noise, >= 0")
        object.__setattr__(self, "convergence", {k: float(v) for k, v in settings.items()})

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

    def method_config(self, label: str) -> TrainConfig:
        """The TrainConfig of one row (a method or a variant label): shared config, then the row's fields."""
        return TrainConfig.from_dict({**self.config, **self.rows[label]})

    def to_dict(self) -> dict:
        """The experiment as plain JSON-ready data (what ``experiment.json`` and ``results.json`` hold)."""
        return {
            "data": self.data,
            "methods": list(self.methods),
            "seeds": list(self.seeds),
            "config": dict(self.config),
            "overrides": {k: dict(v) for k, v in self.overrides.items()},
            "variants": {k: dict(v) for k, v in self.variants.items()},
            "baseline": self.baseline,
            "n_eval": self.n_eval,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "feature_steps": self.feature_steps,
            "n_components": self.n_components,
            "primary": list(self.primary),
            "equivalence": dict(self.equivalence),
            "likelihood_k": self.likelihood_k,
            "n_init": self.n_init,
            "ex_post_refits": self.ex_post_refits,
            "convergence": dict(self.convergence),
            "group_sweepable": self.group_sweepable,
        } | ({} if self.tune is None else {"tune": self.tune.to_dict()})

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "experiment") -> Experiment:
        """Inverse of :meth:`to_dict`; also reads TOML's spellings (``seeds = 5``, ``methods = "a,b"``).

        Every ConfigError, unknown keys included, starts with ``source`` (the file's path).
        """
        try:
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(data) - known)
            require(not unknown, "keys", unknown, f"unknown; allowed: {', '.join(sorted(known))}")
            values = dict(data)
            if "seeds" in values:
                values["seeds"] = _seed_list(values["seeds"])
            require(
                not isinstance(values.get("methods"), (bool, int, float)),
                "methods",
                values.get("methods"),
                "a list of preset names, or one string a,b,c",
            )
            if isinstance(values.get("methods"), str):
                values["methods"] = tuple(s.strip() for s in values["methods"].split(",") if s.strip())
            if values.get("tune") is not None:
                require(isinstance(values["tune"], Mapping), "tune", values["tune"], "must be a table ([tune])")
            if "config" in values:  # compare's defaults hold unless the file sets the field
                require(isinstance(values["config"], Mapping), "config", values["config"], "must be a table ([config])")
                values["config"] = {**DEFAULT_JOB_CONFIG, **values["config"]}
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None


_WEIGHT_TERMS = {"beta": "the latent regularizer's weight", "lam": "the decoder penalty's weight (l2, gp)"}


@dataclasses.dataclass(frozen=True)
class Tune:
    """The tuned mode of a comparison (TOML ``[tune]``): each row's weights chosen on validation images.

    For every row, the candidates are the product of the grids below over the weights the row's
    method reads (:meth:`weights`); each is trained for ``steps`` on the training split minus the
    validation split, all candidates and ``seeds`` in one vmapped program, scored by ``criterion``
    on the validation images, and the best becomes the row's weight for the reported training and
    test evaluation (:func:`jaxrae.compare.tune_rows`). The test split is never read to choose.

    - ``validation``: the fraction of the training images held out (:mod:`jaxrae.data.validation`);
      None: the data spec's ``@validation=`` if it has one, else :data:`DEFAULT_TUNE_VALIDATION`.
      Every row, tuned or not, then trains on the rest, so rows stay comparable.
    - ``beta``, ``lam``: grids of *multipliers* of each row's own value (``[0.1, 1.0, 10.0]``
      tries a tenth, the row's value and ten times it). Multipliers, not absolute values, because
      the rows' weights differ by orders of magnitude (wae's beta is hundreds of times rae's): one
      grid then means "around each row's default". Positive, finite, no repeats; give at least one.
    - ``criterion``: the metric minimised (or, for precision and recall, maximised) on validation,
      a key of :data:`TUNE_CRITERIA`, evaluated by :func:`jaxrae.evaluate.evaluate` with the
      validation images in the place of test images. Default ``fd_ex_post``, the FD of ex-post
      samples to validation images: the regularizers exist for generation, and reconstruction
      error alone would favour the smallest weight every time.
    - ``steps``: training steps per candidate (a shorter budget), at most the row's own; None:
      the row's own.
    - ``seeds``: the tuning runs' seeds, a count ``n`` (:data:`TUNE_SEED_BASE` + 0 .. n-1, apart
      from the reported seeds) or a list. A candidate's score is the mean over them.
    """

    validation: float | None = None
    beta: tuple[float, ...] = ()
    lam: tuple[float, ...] = ()
    criterion: str = DEFAULT_TUNE_CRITERION
    steps: int | None = None
    seeds: tuple[int, ...] = tuple(range(TUNE_SEED_BASE, TUNE_SEED_BASE + DEFAULT_TUNE_SEEDS))

    def __post_init__(self):
        if self.validation is not None:
            fraction = check_validation_fraction(self.validation, "tune.validation")
            require(fraction is not None, "tune.validation", self.validation, "a fraction in (0, 1), e.g. 0.1")
            object.__setattr__(self, "validation", fraction)
        for weight in TUNE_WEIGHTS:
            values = getattr(self, weight)
            require(
                isinstance(values, (list, tuple))
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values),
                f"tune.{weight}",
                values,
                "a list of multipliers of each row's own value, e.g. [0.1, 1.0, 10.0]",
            )
            require(
                all(math.isfinite(v) and v > 0 for v in values) and len(set(values)) == len(values),
                f"tune.{weight}",
                list(values),
                "multipliers must be positive finite numbers, none repeated",
            )
            object.__setattr__(self, weight, tuple(float(v) for v in values))
        require(
            any(getattr(self, w) for w in TUNE_WEIGHTS),
            "tune",
            {w: list(getattr(self, w)) for w in TUNE_WEIGHTS},
            "give at least one grid of multipliers, beta = [0.1, 1.0, 10.0] and/or lam = [...]",
        )
        require(
            self.criterion in TUNE_CRITERIA,
            "tune.criterion",
            self.criterion,
            f"choose one of {', '.join(TUNE_CRITERIA)} (the validation metric to optimise)",
        )
        require(
            self.steps is None
            or (not isinstance(self.steps, bool) and isinstance(self.steps, int) and self.steps >= 1),
            "tune.steps",
            self.steps,
            "must be an integer >= 1 (training steps per candidate), or absent for the row's own",
        )
        require(
            not isinstance(self.seeds, bool) and isinstance(self.seeds, (int, list, tuple)),
            "tune.seeds",
            self.seeds,
            "a count of tuning seeds (2) or a list of integers",
        )
        if isinstance(self.seeds, int):
            require(1 <= self.seeds <= MAX_SEEDS, "tune.seeds", self.seeds, f"a count between 1 and {MAX_SEEDS}")
            object.__setattr__(self, "seeds", tuple(range(TUNE_SEED_BASE, TUNE_SEED_BASE + self.seeds)))
        else:
            object.__setattr__(self, "seeds", check_seeds(self.seeds, "tune.seeds"))

    @classmethod
    def from_dict(cls, data: Mapping) -> Tune:
        """The ``[tune]`` table; unknown keys and missing grids are ConfigErrors naming ``tune.<key>``."""
        require(isinstance(data, Mapping), "tune", data, "must be a table ([tune])")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        require(not unknown, "tune", unknown, f"unknown keys; allowed: {', '.join(known)}")
        values = {k: v for k, v in data.items() if v is not None}
        for weight in TUNE_WEIGHTS:
            if weight in values:
                require(
                    isinstance(values[weight], (list, tuple)) and len(values[weight]) > 0,
                    f"tune.{weight}",
                    values[weight],
                    "a non-empty list of multipliers of each row's own value, e.g. [0.1, 1.0, 10.0]",
                )
                values[weight] = tuple(values[weight])
        return cls(**values)

    def weights(self, config: TrainConfig) -> tuple[str, ...]:
        """The weights of :data:`TUNE_WEIGHTS` this block tunes for a row of ``config``: those with a
        grid that the row's method reads, read off the registries of :mod:`jaxrae.grid` (beta: a
        latent regularizer other than ``none``; lambda: a decoder regularizer with a penalty term,
        ``l2`` or ``gp``, not ``noise``, ``sn`` or ``none``), and whose row value is nonzero
        (multiples of 0 are 0: nothing to choose). A weight that waits for the data's image size
        (None until :meth:`jaxrae.config.TrainConfig.for_images`) is judged by the method's stated
        value, which the resolution only rescales."""
        method = config.method_spec

        def value(weight):
            own = getattr(config, weight)
            return getattr(method, weight) if own is None else own

        reads = {
            "beta": grid.LATENT_REGS[method.latent_reg].penalty is not grid.LATENT_REGS["none"].penalty,
            "lam": grid.DECODER_REGS[method.decoder_reg].penalty is not grid.DECODER_REGS["none"].penalty,
        }
        return tuple(w for w in TUNE_WEIGHTS if getattr(self, w) and reads[w] and value(w) > 0)

    def candidates(self, config: TrainConfig) -> dict[str, list[float]]:
        """Absolute candidate values per tuned weight of a row: its own value times each multiplier.

        The ``sweep`` of :func:`jaxrae.train.train` (product over weights, in this order); ``{}``
        when the row tunes nothing."""
        return {w: [getattr(config, w) * m for m in getattr(self, w)] for w in self.weights(config)}

    def to_dict(self) -> dict:
        return {
            "validation": self.validation,
            "beta": list(self.beta),
            "lam": list(self.lam),
            "criterion": self.criterion,
            "steps": self.steps,
            "seeds": list(self.seeds),
        }


def _tables(name: str, value) -> dict[str, dict[str, Any]]:
    """``overrides``/``variants`` as plain dicts; ConfigError unless a table of tables."""
    require(isinstance(value, Mapping), name, value, f"must be a table of [{name}.<name>] tables")
    for key, fields in value.items():
        require(isinstance(fields, Mapping), f"{name}.{key}", fields, f"must be a table ([{name}.{_toml_key(key)}])")
    return {key: dict(fields) for key, fields in value.items()}


def _positive_margin(value) -> bool:
    """A TOST margin: a positive finite number, or a string ``"<positive number>%"``."""
    if isinstance(value, str):
        text = value.strip()
        try:
            percent = float(text[:-1]) if text.endswith("%") else math.nan
        except ValueError:
            return False
        return math.isfinite(percent) and percent > 0
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _toml_key(key: str) -> str:
    """``key`` as written in a TOML table header: bare if it can be, else quoted (``"reinmax-tau0.5"``)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _seed_list(value) -> tuple[int, ...]:
    """TOML's ``seeds``: a count (``5`` -> 0..4) or a list of integers."""
    require(not isinstance(value, bool), "seeds", value, "a count or a list of integers")
    if isinstance(value, int):
        return seed_count(value)
    require(
        isinstance(value, (list, tuple)) and all(isinstance(s, int) and not isinstance(s, bool) for s in value),
        "seeds",
        value,
        "a count (5) or a list of integers ([0, 3, 7])",
    )
    return check_seeds(value)


def seed_count(n: int, field: str = "seeds") -> tuple[int, ...]:
    """A count of seeds, ``n`` -> ``(0, 1, ..., n - 1)``; ConfigError unless ``1 <= n <= MAX_SEEDS``."""
    require(1 <= n <= MAX_SEEDS, field, n, f"a count of seeds must be between 1 and {MAX_SEEDS}")
    return tuple(range(n))


def _config_kind(annotation: str) -> str:
    """The TOML kind of a TrainConfig field from its annotation: ``"float | None"`` -> ``"number"``."""
    first = str(annotation).split(" |")[0].strip()
    return {"int": "integer", "float": "number", "str": "string"}.get(
        first, "list" if first.startswith("tuple") else "any"
    )


def _check_config_types(table: str, fields: Mapping[str, Any]) -> None:
    """ConfigError unless every TrainConfig field in ``fields`` has its TOML type: an integer, a
    number, a string or a list of integers (``fsq_levels``). Ranges are :class:`TrainConfig`'s to check."""
    kinds = {f.name: _config_kind(f.type) for f in dataclasses.fields(TrainConfig)}
    for name, value in fields.items():
        kind = kinds.get(name)  # an unknown name is TrainConfig.from_dict's error, which lists the fields
        if kind is None or value is None:
            continue
        ok = {
            "integer": not isinstance(value, bool) and isinstance(value, int),
            "number": not isinstance(value, bool) and isinstance(value, (int, float)),
            "string": isinstance(value, str),
            "list": isinstance(value, (list, tuple))
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
        }.get(kind, True)
        wanted = {
            "integer": "an integer",
            "number": "a number",
            "string": "a string",
            "list": "a list of integers (e.g. [8, 5, 5, 5])",
        }
        require(ok, f"{table}.{name}", value, f"must be {wanted.get(kind)}")


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment TOML (see ``experiments/``); any unknown key is a ConfigError.

    Top-level keys: ``data, methods, seeds, baseline, n_eval, n_train, n_test, feature_steps,
    n_components, likelihood_k, n_init, ex_post_refits, primary, group_sweepable``; tables ``[equivalence]`` (TOST
    margins per metric key), ``[convergence]`` (the convergence criterion: ``window``, ``tol``,
    ``z``; see :class:`Experiment`), ``[tune]`` (the tuned mode: weights chosen per row on a
    validation split, :class:`Tune`),
    ``[config]`` (TrainConfig fields for every row),
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
        raise invalid("experiment_file", str(path), f"cannot read it: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise invalid("experiment_file", str(path), f"not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise invalid(
            "experiment_file", str(path), f"not UTF-8 text, as TOML must be (byte {e.start}: {e.reason})"
        ) from None
    return Experiment.from_dict(raw, source=str(path))
