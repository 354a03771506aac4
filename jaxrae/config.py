"""Configuration as frozen, self-validating dataclasses.

A :class:`TrainConfig` names a method of the grid (:mod:`jaxrae.methods`), an optimizer
(:mod:`jaxrae.optim`) and the training settings; ``beta``, ``lam``, ``tau`` and ``estimator``
left at ``None`` take the method's defaults, so a config always holds the values that were
actually used. The default weights of the presets converted from per-pixel losses depend on the
image size (:meth:`jaxrae.methods.Method.weights`), so they are filled only once the data is
known: :meth:`TrainConfig.for_images`, which :func:`jaxrae.train.make_train` and
:func:`jaxrae.train.train` call, the one place a config's weights are resolved. Every invalid value
raises :class:`~jaxrae.errors.ConfigError` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math

from jaxrae import grid, methods, relax
from jaxrae.errors import invalid
from jaxrae.nets import ARCHS, Arch
from jaxrae.optim import OPTIMIZERS, SCHEDULES

#: Upper bounds of the integer fields, so an absurd value is refused before memory is: the loss
#: history holds a float per step and run, and every other integer sizes a layer or a sample axis.
MAX_STEPS = 100_000_000
MAX_WIDTH = 1 << 20
INT_LIMITS = {"steps": MAX_STEPS, "gumbel_rao_samples": 100_000}
LIMIT_REASONS = {
    "steps": "the loss history keeps a float per step and run",
    "gumbel_rao_samples": "it sizes a sample axis of every step",
}
#: How :func:`jaxrae.train.train` runs a chunk of steps: ``scan`` (one compiled ``lax.scan``),
#: ``loop`` (a Python loop of one compiled, state-donating step) or ``auto`` (the rule of
#: :func:`jaxrae.train.resolve_chunk_runner`: the loop for convolutional networks on the CPU).
CHUNK_RUNNERS = ("auto", "scan", "loop")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run, apart from the data and the seed.

    Defaults are Ghosh et al.'s (2020) MNIST settings: latent 16, batch 100, Adam, with a
    learning rate of 5e-4 for MNIST-like data. ``steps`` counts optimizer updates (2000 steps of
    batch 100 is about 3 epochs of MNIST, 140 of ``digits``). ``optimizer`` names an entry of
    :data:`jaxrae.optim.OPTIMIZERS`; ``max_grad_norm``, when set, clips the gradient's global
    norm before it. Discrete methods read ``latent_dim`` as the number of categorical variables
    (VQ vectors, FSQ groups) and ``n_classes`` as K (the codebook size for VQ). ``arch`` names a
    built-in network or is a :class:`jaxrae.nets.Arch` of your own Flax modules. ``lr`` is the
    peak of ``lr_schedule`` (constant, cosine, warmup-cosine, exponential; formulas in
    :func:`jaxrae.optim.scheduled_learning_rate`), which reads ``warmup_steps`` (warmup-cosine
    only) and ``final_lr_fraction`` (the rate after the last step over the peak; 0 for a cosine
    unless given, required for exponential).
    ``likelihood`` names the decoder's observation model, an entry of
    :data:`jaxrae.grid.LIKELIHOODS`: ``gaussian`` (sigmoid outputs, summed squared error) or
    ``bernoulli`` (logits, summed binary cross-entropy).
    ``spectral_norm`` says which layers a spectral-norm decoder regularizer (``decoder_reg="sn"``:
    rae-sn, drae-sn) normalizes, a key of :data:`jaxrae.grid.SPECTRAL_NORM_LAYERS`: ``decoder``
    (the presets) or ``encoder+decoder`` (the official RAE configuration's
    ``spec_norm_on_dec_only: False``); other methods take ``none``, their default.
    ``decoder_norm`` (a key of :data:`jaxrae.grid.DECODER_NORMS`): ``batch`` puts batch norm after
    every hidden decoder layer, ``none`` leaves it out; None keeps the architecture's own (conv-paper
    has it, mlp and conv-small do not).
    ``chunk_runner`` says how ``train()`` executes a chunk of ``chunk_size`` steps (an entry of
    :data:`CHUNK_RUNNERS`; ``auto`` decides by backend and network, see
    :func:`jaxrae.train.resolve_chunk_runner`); both runners take the same steps with the same
    keys, so it changes speed, and the numbers only by float rounding where XLA fuses differently.

    ``beta``/``lam`` left None take the method's weights: at once for a method whose weights mean
    the same on every image size, otherwise (``Method.weight_pixels`` set: Ghosh et al.'s RAE, WAE
    and the discrete RAEs) when :meth:`for_images` resolves them for the data's pixels per image,
    ``w(P) = w_stated * P / weight_pixels``. A ``beta``/``lam`` given here is taken as given on
    every image size, unless ``weight_pixels`` states the image size it was meant for: then it is
    scaled by the same rule (a variant that keeps a preset's weight stated at 784 pixels, e.g.
    ``beta = 0.0098, weight_pixels = 784``, follows that preset to every image size).
    """

    method: str = "rae"
    steps: int = 2000
    batch_size: int = 100
    latent_dim: int = 16
    lr: float = 5e-4
    optimizer: str = "adam"
    max_grad_norm: float | None = None
    arch: str | Arch = "mlp"
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
    # spectral-norm controls: which layers "sn" normalizes (None: the method's default, filled in
    # below like beta); decoder batch norm (None: the architecture's own, left None so that a
    # replace(arch=...) cannot carry one architecture's default to another)
    spectral_norm: str | None = None
    decoder_norm: str | None = None
    # learning-rate schedule (jaxrae.optim.scheduled_learning_rate); lr is its peak
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    final_lr_fraction: float | None = None
    likelihood: str = "gaussian"
    chunk_runner: str = "auto"
    # pixels per image at which a beta/lam given above is stated (None: as given on every size)
    weight_pixels: int | None = None

    def __post_init__(self):
        method = self.method if isinstance(self.method, methods.Method) else methods.get(self.method)
        ints = ("steps", "batch_size", "latent_dim", "chunk_size", "n_classes", "gumbel_rao_samples", "code_dim")
        for field in ints:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise invalid(field, value, "must be an integer >= 1")
            limit = INT_LIMITS.get(field, MAX_WIDTH)
            if value > limit:
                raise invalid(
                    field,
                    value,
                    f"must be at most {limit:,}: {LIMIT_REASONS.get(field, 'it sizes a layer or an axis of every run')}",
                )
        if self.n_classes < 2:
            raise invalid("n_classes", self.n_classes, "a categorical variable needs K >= 2 classes")
        if not isinstance(self.arch, Arch) and self.arch not in ARCHS:
            raise invalid(
                "arch", self.arch, f"choose one of {', '.join(ARCHS)}, or a jaxrae.nets.Arch of your own modules"
            )
        if self.likelihood not in grid.LIKELIHOODS:
            raise invalid("likelihood", self.likelihood, f"choose one of {', '.join(grid.LIKELIHOODS)}")
        if not isinstance(self.chunk_runner, str) or self.chunk_runner not in CHUNK_RUNNERS:
            raise invalid("chunk_runner", self.chunk_runner, f"choose one of {', '.join(CHUNK_RUNNERS)}")
        if self.optimizer not in OPTIMIZERS:
            raise invalid("optimizer", self.optimizer, f"choose one of {', '.join(OPTIMIZERS)}")
        if self.max_grad_norm is not None and (
            not _is_number(self.max_grad_norm) or not self.max_grad_norm > 0 or not math.isfinite(self.max_grad_norm)
        ):
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
        if self.weight_pixels is not None and (
            isinstance(self.weight_pixels, bool) or not isinstance(self.weight_pixels, int) or self.weight_pixels < 1
        ):
            raise invalid(
                "weight_pixels", self.weight_pixels, "the pixels per image beta/lam are stated for: an integer >= 1"
            )
        if self.weight_pixels is not None and self.beta is None and self.lam is None:
            raise invalid(
                "weight_pixels",
                self.weight_pixels,
                "states the image size of a beta or lam you give; set beta or lam too, or leave it out "
                "(the method's own weights carry their size)",
            )
        if self.tau is not None and (not _is_number(self.tau) or not self.tau > 0):
            raise invalid("tau", self.tau, "the temperature must be > 0 (or None for the method's default)")
        if self.estimator is not None:
            if self.estimator not in relax.ESTIMATORS:
                raise invalid("estimator", self.estimator, f"choose one of {', '.join(relax.ESTIMATORS)}")
            if method.code != "argmax" and self.estimator != method.estimator:
                raise invalid(
                    "estimator",
                    self.estimator,
                    f"only argmax-coded methods take an estimator; {method.name!r} has code={method.code!r}",
                )
        levels = tuple(self.fsq_levels)
        if not levels or any(isinstance(v, bool) or not isinstance(v, int) or v < 2 for v in levels):
            raise invalid("fsq_levels", self.fsq_levels, "a non-empty list of integers >= 2")
        object.__setattr__(self, "fsq_levels", levels)
        self._check_layers(method)
        self._check_schedule()
        # Fill the method's defaults so the config records what was run; while a weight depends
        # on the image size (the method's or one given with weight_pixels), both wait for the data.
        if method.weight_pixels is None and self.weight_pixels is None:
            if self.beta is None:
                object.__setattr__(self, "beta", float(method.beta))
            if self.lam is None:
                object.__setattr__(self, "lam", float(method.lam))
        if self.tau is None:
            object.__setattr__(self, "tau", float(method.tau))
        if self.estimator is None:
            object.__setattr__(self, "estimator", method.estimator)

    def _check_layers(self, method: methods.Method) -> None:
        """Validate spectral_norm against the method's decoder regularizer (filling its default) and
        decoder_norm against the architecture."""
        uses_sn = grid.DECODER_REGS[method.decoder_reg].spectral_norm
        places = grid.SPECTRAL_NORM_LAYERS
        if self.spectral_norm is None:
            object.__setattr__(self, "spectral_norm", _default_spectral_norm(method))
        if self.spectral_norm not in places:
            raise invalid("spectral_norm", self.spectral_norm, f"choose one of {', '.join(places)}")
        if places[self.spectral_norm].decoder != uses_sn:
            fitting = [name for name, layers in places.items() if layers.decoder == uses_sn]
            raise invalid(
                "spectral_norm",
                self.spectral_norm,
                f"method {method.name!r} has decoder_reg={method.decoder_reg!r}, which "
                + ("normalizes the decoder" if uses_sn else "uses no spectral norm")
                + f"; choose {' or '.join(fitting)} (spectral norm is a decoder regularizer: use rae-sn or drae-sn)",
            )
        if self.decoder_norm is not None:
            if self.decoder_norm not in grid.DECODER_NORMS:
                raise invalid(
                    "decoder_norm",
                    self.decoder_norm,
                    f"choose one of {', '.join(grid.DECODER_NORMS)}, or None for the architecture's own",
                )
            if isinstance(self.arch, Arch) and grid.DECODER_NORMS[self.decoder_norm]:
                raise invalid(
                    "decoder_norm",
                    self.decoder_norm,
                    "batch norm is added to the built-in decoders and cannot reach into arch.decoder; "
                    "put it in your own decoder module",
                )

    def _check_schedule(self) -> None:
        """Validate lr_schedule, warmup_steps and final_lr_fraction; a cosine's fraction defaults to 0."""
        if self.lr_schedule not in SCHEDULES:
            raise invalid("lr_schedule", self.lr_schedule, f"choose one of {', '.join(SCHEDULES)}")
        warmup = self.warmup_steps
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise invalid("warmup_steps", warmup, "must be an integer >= 0")
        if self.lr_schedule == "warmup-cosine" and not 1 <= warmup < self.steps:
            raise invalid("warmup_steps", warmup, f"warmup-cosine needs 1 <= warmup_steps < steps={self.steps}")
        if self.lr_schedule != "warmup-cosine" and warmup != 0:
            raise invalid(
                "warmup_steps", warmup, f"only lr_schedule=warmup-cosine warms up; {self.lr_schedule} takes 0"
            )
        fraction = self.final_lr_fraction
        if self.lr_schedule == "constant":
            if fraction is not None:
                raise invalid(
                    "final_lr_fraction", fraction, "a constant learning rate has no final fraction; leave it unset"
                )
            return
        if fraction is None and self.lr_schedule == "exponential":
            raise invalid(
                "final_lr_fraction",
                fraction,
                "exponential decay needs the fraction of lr left after the last step, in (0, 1], e.g. 0.01",
            )
        fraction = 0.0 if fraction is None else fraction
        if self.lr_schedule == "exponential":  # f ** (t / T) needs f > 0
            ok, allowed = _is_number(fraction) and 0 < fraction <= 1, "(0, 1]"
        else:
            ok, allowed = _is_number(fraction) and 0 <= fraction <= 1, "[0, 1]"
        if not ok:
            raise invalid(
                "final_lr_fraction", fraction, f"{self.lr_schedule} needs a fraction of the peak lr in {allowed}"
            )
        object.__setattr__(self, "final_lr_fraction", float(fraction))

    @property
    def weights_resolved(self) -> bool:
        """True when beta and lam are the numbers training uses (none waits for the image size)."""
        return self.beta is not None and self.lam is not None and self.weight_pixels is None

    def for_images(self, image_shape) -> TrainConfig:
        """This config for images of ``image_shape`` (H, W, C): ``beta`` and ``lam`` resolved.

        With P = H * W * C values per image (what the reconstruction error sums over), a weight
        left None becomes the method's weight at P (:meth:`jaxrae.methods.Method.weights`:
        ``w * P / Method.weight_pixels`` for the presets converted from per-pixel losses), a
        weight given here stays as given, or, with ``weight_pixels`` set, becomes
        ``w * P / weight_pixels``. The result has ``weight_pixels=None``, so resolving it again
        changes nothing; a resolved config is returned as it is. At P equal to the size a weight
        is stated for, the factor is exactly 1.0 and the weight bit for bit the stated one.
        """
        if self.weights_resolved:
            return self
        shape = tuple(image_shape)
        if not shape or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape):
            raise invalid("image_shape", image_shape, "the shape of one image, (H, W, C), of integers >= 1")
        pixels = math.prod(shape)
        defaults = dict(zip(("beta", "lam"), self._method().weights(pixels)))
        scale = 1.0 if self.weight_pixels is None else pixels / self.weight_pixels
        resolved = {f: defaults[f] if getattr(self, f) is None else getattr(self, f) * scale for f in ("beta", "lam")}
        return self.replace(**{f: float(v) for f, v in resolved.items()}, weight_pixels=None)

    def weight_sizes(self) -> dict[str, int | None]:
        """For ``beta`` and ``lam``: the pixels per image the weight is stated for, which
        :meth:`for_images` scales it from, or None where it is taken as given on every image size.
        (A resolved config says None for both: read this before resolving.)"""
        method_size = None if self.weights_resolved else self._method().weight_pixels
        return {f: method_size if getattr(self, f) is None else self.weight_pixels for f in ("beta", "lam")}

    def _method(self) -> methods.Method:
        return self.method if isinstance(self.method, methods.Method) else methods.get(self.method)

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
        """JSON-ready dict (a custom Method is stored as its fields).

        ``chunk_runner`` is written only when not ``auto``, ``spectral_norm`` only when not the
        method's own default, ``decoder_norm`` only when set, and ``weight_pixels`` is left out
        while None (always, once the weights are resolved), here and in a custom Method: the
        configs that results, checkpoints and their headers hold read as they did before these
        fields existed, so runs written then still resume.
        """
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(self.arch, Arch):
            out["arch"] = self.arch.to_dict()
        if isinstance(self.method, methods.Method):
            out["method"] = dataclasses.asdict(self.method)
            if out["method"]["weight_pixels"] is None:
                del out["method"]["weight_pixels"]
        if out["weight_pixels"] is None:
            del out["weight_pixels"]
        out["fsq_levels"] = list(self.fsq_levels)
        if self.spectral_norm == _default_spectral_norm(self.method_spec):
            del out["spectral_norm"]
        if self.decoder_norm is None:
            del out["decoder_norm"]
        if self.chunk_runner == "auto":
            # How chunks execute is not what a run computes (the runners agree to float
            # rounding); left at its default it is not written, so checkpoints, finished
            # comparison rows and results written before the field existed still match.
            del out["chunk_runner"]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ConfigError, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise invalid(unknown[0], data[unknown[0]], f"unknown config key; allowed: {', '.join(sorted(known))}")
        data = dict(data)
        if isinstance(data.get("arch"), dict):
            raise invalid(
                "arch",
                data["arch"]["name"] if "name" in data["arch"] else data["arch"],
                "a config with your own encoder and decoder modules cannot be rebuilt from JSON; "
                "pass TrainConfig(arch=jaxrae.nets.Arch(...)) from Python",
            )
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


def _default_spectral_norm(method: methods.Method) -> str:
    """The layers a method's decoder regularizer normalizes when ``spectral_norm`` is not set:
    the decoder's for an ``sn`` regularizer (Ghosh et al.'s RAE-SN), none otherwise."""
    return "decoder" if grid.DECODER_REGS[method.decoder_reg].spectral_norm else "none"
