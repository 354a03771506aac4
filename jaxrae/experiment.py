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
import re
import tomllib
from pathlib import Path
from typing import Any, Mapping

from jaxrae import methods as presets
from jaxrae.config import TrainConfig
from jaxrae.errors import ConfigError, invalid, require
from jaxrae.evaluate import LIKELIHOOD_K, PR_NEIGHBOURS, likelihood_kind

#: The README's main job: a representative set of continuous and discrete methods on ``digits``.
DEFAULT_DATA = "digits"
DEFAULT_METHODS = ("ae", "vae", "rae-l2", "rae-gp", "wae", "dvae", "drae", "vqvae")
DEFAULT_SEEDS = 5
#: Shared TrainConfig values of the main job (2-core CPU budget: a few minutes in all).
DEFAULT_JOB_CONFIG: dict[str, Any] = {"steps": 500, "batch_size": 64}
DEFAULT_N_EVAL = 1000
DEFAULT_N_COMPONENTS = 10  # Ghosh et al. 2020, Sec. 4: a 10-component GMM

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
    likelihood_k: int | None = LIKELIHOOD_K

    def __post_init__(self):
        object.__setattr__(self, "overrides", _tables("overrides", self.overrides))
        object.__setattr__(self, "variants", _tables("variants", self.variants))
        methods = (() if self.variants else DEFAULT_METHODS) if self.methods is None else self.methods
        object.__setattr__(self, "methods", tuple(methods))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "config", dict(self.config))
        require(self.methods or self.variants, "methods", list(self.methods),
                "nothing to compare: list presets in methods = [...] (see `jaxrae methods`) or add [variants.<label>] tables")
        for label in self.variants:  # before the preset check: `--methods a,<label>` is this mistake
            require(label not in self.methods, "methods", list(self.methods),
                    f"{label!r} is also the label of {self.row_table(label)}, and labels and method names share one "
                    f"namespace; rename the variant (e.g. [variants.{_toml_key(label + '-2')}]) or drop {label!r} from methods")
        for name in self.methods:
            presets.get(name)  # ConfigError listing the presets
        require(len(set(self.methods)) == len(self.methods), "methods", list(self.methods), "no name may repeat")
        require(self.seeds and len(set(self.seeds)) == len(self.seeds), "seeds", list(self.seeds), "at least one seed, no repeats")
        require("method" not in self.config, "config.method", self.config.get("method"),
                "not allowed in a comparison; list the methods in `methods`, or give each [variants.<label>] table its own method")
        for name, fields in self.overrides.items():
            require(name not in self.variants, "overrides", name,
                    f"[overrides.{_toml_key(name)}] names a variant; put those fields in [variants.{_toml_key(name)}] instead")
            require(name in self.methods, "overrides", name, f"[overrides.{_toml_key(name)}] must name one of methods {list(self.methods)}")
            require("method" not in fields, f"overrides.{name}.method", fields.get("method"), "not allowed; the table's key names the method")
        for label, fields in self.variants.items():
            table = self.row_table(label)
            require(ROW_LABEL.fullmatch(label), "variants", label,
                    f"the label of {table} names output files, so use only letters, digits and - _ . + "
                    "(not starting with . + -), e.g. reinmax-tau0.5")
            require(isinstance(fields.get("method"), str), f"{table[1:-1]}.method", fields.get("method"),
                    f'{table} needs method = "<preset>", the preset the variant starts from (see `jaxrae methods`)')
        require(self.baseline is None or self.baseline in self.rows, "baseline", self.baseline,
                f"neither a method nor a variant label; choose one of {list(self.rows)} (`--baseline` on the command "
                "line, `baseline` in the file)")
        for field, minimum in (("n_eval", PR_NEIGHBOURS + 2), ("feature_steps", 1), ("n_components", 1)):
            value = getattr(self, field)
            if field == "feature_steps" and value is None:
                continue  # the feature network's own default (jaxrae.metrics)
            require(not isinstance(value, bool) and isinstance(value, int) and value >= minimum, field, value,
                    f"must be an integer >= {minimum}")
        require(self.likelihood_k is None or (not isinstance(self.likelihood_k, bool) and isinstance(self.likelihood_k, int)
                                              and self.likelihood_k >= 1),
                "likelihood_k", self.likelihood_k, "must be an integer >= 1 (importance samples per test image), or absent for none")
        for label in self.rows:  # every config validates now, not after an hour of training
            try:
                config = self.method_config(label)
                if self.likelihood_k is not None:
                    likelihood_kind(config)  # the row can be given a test likelihood
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

    def method_config(self, label: str) -> TrainConfig:
        """The TrainConfig of one row (a method or a variant label): shared config, then the row's fields."""
        return TrainConfig.from_dict({**self.config, **self.rows[label]})

    def to_dict(self) -> dict:
        """The experiment as plain JSON-ready data (what ``experiment.json`` and ``results.json`` hold)."""
        return {
            "data": self.data, "methods": list(self.methods), "seeds": list(self.seeds),
            "config": dict(self.config), "overrides": {k: dict(v) for k, v in self.overrides.items()},
            "variants": {k: dict(v) for k, v in self.variants.items()},
            "baseline": self.baseline, "n_eval": self.n_eval, "n_train": self.n_train,
            "n_test": self.n_test, "feature_steps": self.feature_steps, "n_components": self.n_components,
            "likelihood_k": self.likelihood_k,
        }

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "experiment") -> "Experiment":
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
            if isinstance(values.get("methods"), str):
                values["methods"] = tuple(s.strip() for s in values["methods"].split(",") if s.strip())
            if "config" in values:  # compare's defaults hold unless the file sets the field
                require(isinstance(values["config"], Mapping), "config", values["config"], "must be a table ([config])")
                values["config"] = {**DEFAULT_JOB_CONFIG, **values["config"]}
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None


def _tables(name: str, value) -> dict[str, dict[str, Any]]:
    """``overrides``/``variants`` as plain dicts; ConfigError unless a table of tables."""
    require(isinstance(value, Mapping), name, value, f"must be a table of [{name}.<name>] tables")
    for key, fields in value.items():
        require(isinstance(fields, Mapping), f"{name}.{key}", fields, f"must be a table ([{name}.{_toml_key(key)}])")
    return {key: dict(fields) for key, fields in value.items()}


def _toml_key(key: str) -> str:
    """``key`` as written in a TOML table header: bare if it can be, else quoted (``"reinmax-tau0.5"``)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _seed_list(value) -> tuple[int, ...]:
    """TOML's ``seeds``: a count (``5`` -> 0..4) or a list of integers."""
    require(not isinstance(value, bool), "seeds", value, "a count or a list of integers")
    if isinstance(value, int):
        require(value >= 1, "seeds", value, "at least one seed")
        return tuple(range(value))
    require(isinstance(value, (list, tuple)) and all(isinstance(s, int) and not isinstance(s, bool) for s in value),
            "seeds", value, "a count (5) or a list of integers ([0, 3, 7])")
    return tuple(value)


def load_experiment(path: str | Path) -> Experiment:
    """Read an experiment TOML (see ``experiments/``); any unknown key is a ConfigError.

    Top-level keys: ``data, methods, seeds, baseline, n_eval, n_train, n_test, feature_steps,
    n_components, likelihood_k``; tables ``[config]`` (TrainConfig fields for every row),
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
    return Experiment.from_dict(raw, source=str(path))
