"""Configuration as frozen, self-validating dataclasses.

A :class:`TrainConfig` names a method of the grid (:mod:`jaxrae.methods`), an optimizer
(:mod:`jaxrae.optim`) and the training settings; ``beta``, ``lam``, ``tau`` and ``estimator``
left at ``None`` take the method's defaults, so a config always holds the values that were
actually used. Every invalid value raises :class:`~jaxrae.errors.ConfigError` naming the field,
the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math

from jaxrae import grid, methods, relax
from jaxrae.errors import invalid
from jaxrae.nets import ARCHS
from jaxrae.optim import OPTIMIZERS


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run, apart from the data and the seed.

    Defaults are Ghosh et al.'s (2020) MNIST settings: latent 16, batch 100, Adam, with a
    learning rate of 5e-4 for MNIST-like data. ``steps`` counts optimizer updates (2000 steps of
    batch 100 is about 3 epochs of MNIST, 140 of ``digits``). ``optimizer`` names an entry of
    :data:`jaxrae.optim.OPTIMIZERS`; ``max_grad_norm``, when set, clips the gradient's global
    norm before it. Discrete methods read ``latent_dim`` as the number of categorical variables
    (VQ vectors, FSQ groups) and ``n_classes`` as K (the codebook size for VQ). ``likelihood``
    names the decoder's observation model, an entry of :data:`jaxrae.grid.LIKELIHOODS`:
    ``gaussian`` (sigmoid outputs, summed squared error) or ``bernoulli`` (logits, summed binary
    cross-entropy).
    """

    method: str = "rae"
    steps: int = 2000
    batch_size: int = 100
    latent_dim: int = 16
    lr: float = 5e-4
    optimizer: str = "adam"
    max_grad_norm: float | None = None
    arch: str = "mlp"
    beta: float | None = None
    lam: float | None = None
    chunk_size: int = 250
    # discrete codes
    n_classes: int = 10
    estimator: str | None = None
    tau: float | None = None
    tau_min: float = 0.5
    anneal_rate: float = 1e-3
    gumbel_rao_samples: int = 10
    code_dim: int = 8
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)
    likelihood: str = "gaussian"

    def __post_init__(self):
        method = self.method if isinstance(self.method, methods.Method) else methods.get(self.method)
        ints = ("steps", "batch_size", "latent_dim", "chunk_size", "n_classes", "gumbel_rao_samples", "code_dim")
        for field in ints:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise invalid(field, value, "must be an integer >= 1")
        if self.n_classes < 2:
            raise invalid("n_classes", self.n_classes, "a categorical variable needs K >= 2 classes")
        if self.arch not in ARCHS:
            raise invalid("arch", self.arch, f"choose one of {', '.join(ARCHS)}")
        if self.likelihood not in grid.LIKELIHOODS:
            raise invalid("likelihood", self.likelihood, f"choose one of {', '.join(grid.LIKELIHOODS)}")
        if self.optimizer not in OPTIMIZERS:
            raise invalid("optimizer", self.optimizer, f"choose one of {', '.join(OPTIMIZERS)}")
        if self.max_grad_norm is not None and (not _is_number(self.max_grad_norm) or not self.max_grad_norm > 0
                                               or not math.isfinite(self.max_grad_norm)):
            raise invalid("max_grad_norm", self.max_grad_norm, "must be a finite number > 0 (or None for no clipping)")
        for field in ("lr", "tau_min"):
            value = getattr(self, field)
            if not _is_number(value) or not value > 0 or not math.isfinite(value):
                raise invalid(field, value, "must be a finite number > 0")
        if not _is_number(self.anneal_rate) or self.anneal_rate < 0:
            raise invalid("anneal_rate", self.anneal_rate, "must be a number >= 0")
        for field in ("beta", "lam"):
            value = getattr(self, field)
            if value is not None and (not _is_number(value) or not value >= 0 or not math.isfinite(value)):
                raise invalid(field, value, "must be a finite number >= 0 (or None for the method's default)")
        if self.tau is not None and (not _is_number(self.tau) or not self.tau > 0):
            raise invalid("tau", self.tau, "the temperature must be > 0 (or None for the method's default)")
        if self.estimator is not None:
            if self.estimator not in relax.ESTIMATORS:
                raise invalid("estimator", self.estimator, f"choose one of {', '.join(relax.ESTIMATORS)}")
            if method.code != "argmax" and self.estimator != method.estimator:
                raise invalid("estimator", self.estimator, f"only argmax-coded methods take an estimator; {method.name!r} has code={method.code!r}")
        levels = tuple(self.fsq_levels)
        if not levels or any(isinstance(v, bool) or not isinstance(v, int) or v < 2 for v in levels):
            raise invalid("fsq_levels", self.fsq_levels, "a non-empty list of integers >= 2")
        object.__setattr__(self, "fsq_levels", levels)
        # Fill the method's defaults so the config records what was run.
        if self.beta is None:
            object.__setattr__(self, "beta", float(method.beta))
        if self.lam is None:
            object.__setattr__(self, "lam", float(method.lam))
        if self.tau is None:
            object.__setattr__(self, "tau", float(method.tau))
        if self.estimator is None:
            object.__setattr__(self, "estimator", method.estimator)

    @property
    def method_spec(self) -> methods.Method:
        """The grid row this config trains, with its estimator and temperature settings."""
        base = self.method if isinstance(self.method, methods.Method) else methods.get(self.method)
        if self.estimator is not None and self.estimator != base.estimator:
            base = dataclasses.replace(base, estimator=self.estimator)
        return base

    @property
    def method_name(self) -> str:
        return self.method.name if isinstance(self.method, methods.Method) else self.method

    def replace(self, **changes) -> TrainConfig:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready dict (a custom Method is stored as its fields)."""
        out = dataclasses.asdict(self)
        if isinstance(self.method, methods.Method):
            out["method"] = dataclasses.asdict(self.method)
        out["fsq_levels"] = list(self.fsq_levels)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ConfigError, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise invalid(unknown[0], data[unknown[0]], f"unknown config key; allowed: {', '.join(sorted(known))}")
        data = dict(data)
        if isinstance(data.get("method"), dict):
            data["method"] = methods.Method(**data["method"])
        if "fsq_levels" in data:
            data["fsq_levels"] = tuple(data["fsq_levels"])
        return cls(**data)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def field_names() -> list[str]:
    """TrainConfig's fields in declaration order (the CLI makes a flag of each)."""
    return [f.name for f in dataclasses.fields(TrainConfig)]
