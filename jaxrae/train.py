"""Functional training: ``make_train(config, data)`` gives a pure ``train(key)``; many runs are one vmap.

The pattern is PureJaxRL's (Lu et al. 2022): everything about a run lives in one pytree
(:class:`TrainState`: step, parameters, batch statistics, optimizer state, the run's key, its
per-run hyperparameters and a divergence flag), a step is a pure function
``(state, key, batch) -> (state, metrics)``, and the loop is ``jax.lax.scan`` (or, where XLA runs
a step slower inside a loop than alone, a Python loop of the compiled step:
:func:`resolve_chunk_runner`). Many seeds (and swept hyperparameters) are ``jax.vmap`` over the
leading axis of the state; over several devices that axis is laid on a 1-D mesh named ``"runs"``
with :class:`jax.sharding.NamedSharding`.

Randomness: the key of step t is ``fold_in(run_key, t)``, so a run's result does not depend on
how the steps are chunked, on resuming from a checkpoint, or on which other runs share the
program. Each run draws its own batch indices (with replacement) from that key; the images live
on the device once, as uint8, shared by all runs. On a data set with ``binarize="dynamic"`` each
batch is binarized afresh (Burda et al. 2016) from the step's key,
``binarize_batch(fold_in(step_key, DYNAMIC_BINARIZE_STREAM), batch)``, so the draw too is a
function of the run key and the step alone.

Divergence: a step whose loss or gradients are not finite is not applied; the run is frozen at
its last finite state and ``diverged_at`` records the step, while the other runs go on unchanged.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import operator
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxrae import density, distributed, runlog
from jaxrae import io as jio
from jaxrae.config import TrainConfig
from jaxrae.data import DYNAMIC_BINARIZE_STREAM, Dataset, binarize_batch
from jaxrae.errors import CheckpointError, ConfigError, JaxraeError, invalid, require
from jaxrae.grid import Codec, HParams, build_model, code_spec, make_codec, make_loss_fn
from jaxrae.nets import AutoEncoder
from jaxrae.optim import make_optimizer, scheduled_learning_rate

SWEEPABLE = HParams._fields  # lr, beta, lam, tau


class TrainState(NamedTuple):
    """Everything one run carries from step to step (a pytree; stacked over runs)."""

    step: chex.Array  # int32 scalar: number of steps taken
    params: Any
    batch_stats: Any
    opt_state: Any
    key: chex.Array  # the run's base PRNG key
    hparams: HParams  # this run's lr, beta, lam, tau
    diverged_at: chex.Array  # int32: first non-finite step, -1 while finite


def default_hparams(config: TrainConfig) -> HParams:
    """The config's hyperparameters as float32 scalars (its weights resolved: ``make_train(...).config``)."""
    if not config.weights_resolved:
        raise ConfigError(
            f"{config.method_name}'s beta/lam depend on the image size and are not resolved yet: pass the "
            "trainer's config (make_train(config, data).config) or config.for_images(image_shape)"
        )
    return HParams(*(jnp.float32(getattr(config, name)) for name in SWEEPABLE))


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, so jax.jit(trainer) works
class Trainer:
    """The pure functions of one training setup (config + image shape).

    ``init(key, hparams) -> state``; ``step(state, key, batch_u8) -> (state, metrics)``;
    ``run(state, images_u8, n_steps) -> (state, metrics stacked over steps)``; calling the
    trainer, ``trainer(key)``, trains one run for ``config.steps`` on the data it was made with.
    All are jit- and vmap-compatible.
    """

    config: TrainConfig
    model: AutoEncoder
    codec: Codec
    init: Callable
    step: Callable
    run: Callable
    images_u8: Any

    def __call__(self, key, hparams: HParams | None = None):
        hparams = default_hparams(self.config) if hparams is None else hparams
        return self.run(self.init(key, hparams), jnp.asarray(self.images_u8), self.config.steps)


def make_train(config: TrainConfig, data: Dataset | np.ndarray) -> Trainer:
    """Build the pure training functions of ``config`` for ``data`` (a Dataset or uint8 NHWC array).

    ``make_train(config, data)(jax.random.key(0))`` trains one run and returns its final
    :class:`TrainState` and per-step metrics; ``jax.vmap`` of it over
    ``jax.random.split(jax.random.key(0), n)`` trains n runs in one program. The trainer's
    ``config`` has its weights resolved for the images' size (:meth:`TrainConfig.for_images`).
    """
    images_u8 = data.train_images_u8 if isinstance(data, Dataset) else np.asarray(data)
    if images_u8.dtype != np.uint8 or images_u8.ndim != 4:
        raise ConfigError(
            f"training images must be uint8 of shape (N, H, W, C), got {images_u8.dtype} {images_u8.shape}"
        )
    config = config.for_images(images_u8.shape[1:])  # the presets' weights for this image size
    n_train = images_u8.shape[0]
    if config.batch_size > n_train:
        raise ConfigError(
            f"batch_size={config.batch_size} is larger than the {n_train} training images; use at most {n_train}"
        )
    return Trainer(
        config, *_training_functions(config, tuple(images_u8.shape[1:]), dynamic_binarization(data)), images_u8
    )


def dynamic_binarization(data: Dataset | np.ndarray) -> bool:
    """Whether training binarizes every batch afresh: a Dataset with ``binarize == "dynamic"``."""
    return isinstance(data, Dataset) and data.binarize == "dynamic"


@functools.lru_cache(maxsize=64)
def _training_functions(config: TrainConfig, image_shape: tuple, dynamic: bool = False):
    """(model, codec, init, step, run) of a config, cached so equal configs share compilations.

    ``dynamic``: binarize every gathered batch with a key folded from the step's key."""
    model = build_model(config, image_shape)
    codec = make_codec(config, model)
    loss_fn = make_loss_fn(config, model)
    decoder_in = code_spec(config).decoder_in
    optimizer = make_optimizer(config.optimizer, config.max_grad_norm)

    def init(key, hparams: HParams) -> TrainState:
        init_key, run_key = jax.random.split(key)
        x = jnp.zeros((1, *image_shape), jnp.float32)
        z = jnp.zeros((1, decoder_in), jnp.float32)
        variables = model.init(init_key, x, z, False)
        params = variables["params"]
        opt_state = optimizer.init(params)  # the learning rate is per run, in hparams
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=opt_state,
            key=run_key,
            hparams=hparams,
            diverged_at=jnp.full((), -1, jnp.int32),
        )

    def step(state: TrainState, key, batch_u8) -> tuple[TrainState, dict]:
        chex.assert_shape(batch_u8, (config.batch_size, *image_shape))
        x = batch_u8.astype(jnp.float32) / 255.0
        (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, key, x, state.hparams, state.step
        )
        # One reduction instead of a finiteness test per leaf: any NaN/inf gradient makes the
        # global norm non-finite (as does a norm beyond float range, which is divergence too).
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
        alive = finite & (state.diverged_at < 0)
        # The schedule scales this run's (possibly swept) peak rate by a function of the step alone.
        learning_rate = scheduled_learning_rate(
            state.hparams.lr,
            state.step,
            schedule=config.lr_schedule,
            steps=config.steps,
            warmup_steps=config.warmup_steps,
            final_lr_fraction=config.final_lr_fraction,
        )
        # The freeze is inside the update (scalar coefficients), not a where() between an old
        # and a new state, so XLA updates parameters and moments in place (see jaxrae/optim.py).
        updates, opt_state = optimizer.update(
            grads, state.opt_state, state.params, alive=alive, learning_rate=learning_rate
        )
        params = optax.apply_updates(state.params, updates)
        batch_stats = jax.tree.map(lambda new, old: jnp.where(alive, new, old), batch_stats, state.batch_stats)
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            key=state.key,
            hparams=state.hparams,
            diverged_at=jnp.where((state.diverged_at < 0) & ~finite, state.step, state.diverged_at),
        )
        return new_state, dict(metrics, lr=learning_rate)

    def run(state: TrainState, images: chex.Array, n_steps: int, unrolled: bool = False):
        def body(state, _):
            batch_key, step_key = jax.random.split(jax.random.fold_in(state.key, state.step))
            idx = jax.random.randint(batch_key, (config.batch_size,), 0, images.shape[0])
            batch = images[idx]
            if dynamic:
                batch = binarize_batch(jax.random.fold_in(step_key, DYNAMIC_BINARIZE_STREAM), batch)
            return step(state, step_key, batch)

        if unrolled:  # straight-line steps: no while loop, which lax.scan keeps even for one trip
            history = []
            for _ in range(n_steps):
                state, metrics = body(state, None)
                history.append(metrics)
            return state, jax.tree.map(lambda *steps: jnp.stack(steps), *history)
        return jax.lax.scan(body, state, None, length=n_steps)

    return model, codec, init, step, run


@functools.lru_cache(maxsize=64)
def _vmapped_programs(config: TrainConfig, image_shape: tuple, dynamic: bool = False):
    """jit(vmap(init)) and jit(vmap(run)) over the run axis, shared by every train() call.

    The third element caches train()'s compiled chunk programs: under the scan runner one per
    chunk length, under the loop runner the one-step program of :func:`_one_step_program`."""
    _, _, init, _, run = _training_functions(config, image_shape, dynamic)
    # Donating the state lets XLA update the stacked parameters and Adam moments in place
    # instead of holding an input and an output copy of every run's state.
    run_jit = jax.jit(jax.vmap(run, in_axes=(0, None, None)), static_argnums=2, donate_argnums=0)
    return jax.jit(jax.vmap(init)), run_jit, {}


@functools.lru_cache(maxsize=64)
def _one_step_program(config: TrainConfig, image_shape: tuple, dynamic: bool = False):
    """jit(vmap(one step)), state donated: the loop runner's program, ``(state, images) -> (state, metrics)``.

    It is the chunk's step unrolled (``run(..., 1, unrolled=True)``): the program holds no while
    loop (``lax.scan`` of one trip keeps one, and with it XLA:CPU's slowness), and its metrics
    have the scan's (n_runs, 1) shape."""
    _, _, _, _, run = _training_functions(config, image_shape, dynamic)
    one_step = functools.partial(run, n_steps=1, unrolled=True)
    return jax.jit(jax.vmap(one_step, in_axes=(0, None)), donate_argnums=0)


#: The primitives that make XLA:CPU slow inside a loop: a step with one of them runs as a loop of
#: compiled steps under ``chunk_runner="auto"`` on the CPU (see :func:`resolve_chunk_runner`).
_LOOP_SLOW_ON_CPU = frozenset({"conv_general_dilated"})


def resolve_chunk_runner(config: TrainConfig, image_shape: tuple, backend: str | None = None) -> str:
    """``"scan"`` or ``"loop"``: how :func:`train` executes a chunk of ``config.chunk_size`` steps.

    ``scan`` compiles the chunk as one ``jax.lax.scan`` over the step: one program per chunk, the
    fastest form wherever XLA runs a step inside a loop as fast as alone (the MLP on every
    backend; everything on GPU and TPU, where one launch per chunk also saves the per-step
    dispatch). ``loop`` calls the compiled one-step program (state donated, so parameters and Adam
    moments are updated in place) once per step from Python and stacks the per-step metrics; the
    steps are dispatched asynchronously, so the host waits once per chunk, as for the scan.

    An explicit ``config.chunk_runner`` is obeyed. ``"auto"`` picks ``loop`` on the CPU backend
    (``backend``, default :func:`jax.default_backend`) when the model's forward pass contains a
    convolution (the built-in ``conv-small`` and ``conv-paper``, or an :class:`~jaxrae.nets.Arch`
    of your own modules with one), and ``scan`` otherwise. The measurement behind the rule (issue
    15, one seed, Fashion-MNIST 28x28, batch 100, ``conv-small``): 669 ms per step inside the
    scan, 81 ms per step for the same donated step in a Python loop, 8.2x: XLA:CPU runs
    convolutions (and their transposes in the gradient) inside a while loop far slower than at top
    level (jax-ml/jax#12868). What we found: the compiled step inside and outside the loop holds
    the same convolutions, NHWC layouts and fusions, so the cost is in executing them inside a
    while loop: a ``lax.scan`` of one trip keeps its loop and, called once per step, was as slow
    as the full scan, while the same step as straight-line code (and a fully unrolled scan) ran
    about 5x faster (conv-small, batch 100, 28x28, on a loaded 2-core CPU): hence the loop's step
    has no loop in it (:func:`_one_step_program`). The MLP has no convolution and keeps the
    scan, so its numbers are bitwise those of the scan. ``benchmarks/train_throughput.py``
    measures all three forms.

    Both runners take the same steps with the same keys (step t draws from
    ``fold_in(run_key, t)``); XLA fuses the straight-line step and the loop body differently, so
    the results agree to float32 rounding (``tests/test_chunk_runner.py`` bounds it from the
    arithmetic), not bitwise; each runner alone is deterministic, and resumes bitwise.
    """
    if config.chunk_runner != "auto":
        return config.chunk_runner
    if (backend or jax.default_backend()) != "cpu":
        return "scan"
    return "loop" if _model_primitives(config, tuple(image_shape)) & _LOOP_SLOW_ON_CPU else "scan"


@functools.lru_cache(maxsize=64)
def _model_primitives(config: TrainConfig, image_shape: tuple) -> frozenset:
    """The names of the primitives in the model's forward pass (traced once, never run)."""
    model = build_model(config, image_shape)
    x = jnp.zeros((1, *image_shape), jnp.float32)
    z = jnp.zeros((1, code_spec(config).decoder_in), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda key: model.init(key, x, z, False))(jax.random.key(0))
    return frozenset(_primitive_names(jaxpr.jaxpr))


def _primitive_names(jaxpr):
    """Every primitive name in ``jaxpr`` and the jaxprs nested in its equations' parameters."""
    for eqn in jaxpr.eqns:
        yield eqn.primitive.name
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds its Jaxpr in .jaxpr
                if hasattr(inner, "eqns"):
                    yield from _primitive_names(inner)


def _run_chunk(program, state, images, repeats: int):
    """``repeats`` calls of a compiled chunk ``program`` (state donated), metrics stacked over steps.

    One call is the whole chunk (the scan runner, returned as it comes); the loop runner calls the
    one-step program once per step and joins the (n_runs, 1) metrics into (n_runs, steps), so the
    history, checkpoints, loggers and the divergence freeze see the same arrays under both."""
    if repeats == 1:
        return program(state, images)
    history = []
    for _ in range(repeats):
        state, metrics = program(state, images)
        history.append(metrics)
    return state, jax.tree.map(lambda *steps: jnp.concatenate(steps, axis=1), *history)


# --------------------------------------------------------------------------------------------
# Many runs: seeds x swept hyperparameters, vmapped, sharded, chunked, checkpointed.


#: Seeds become PRNG keys through ``jax.random.key(seed)``, which keeps only the low 32 bits of
#: the seed (64-bit types off): 4294967296 and 0, or -1 and 4294967295, would train identical runs
#: under different names. Every seed must lie in ``[0, SEED_LIMIT)``, where seed -> key is one to one.
SEED_LIMIT = 2**32
#: At most this many seeds in one comparison or ``train``: every seed is a model trained in the
#: same vmapped program, so a count like 10000000000 is a typo, not a job.
MAX_SEEDS = 10_000


def check_seeds(seeds, field: str = "seeds") -> tuple[int, ...]:
    """``seeds`` as a tuple of ints; ConfigError unless each is an integer in ``[0, SEED_LIMIT)``, none
    repeats, and there are 1 to ``MAX_SEEDS`` of them.

    The range is where ``jax.random.key(seed)`` is one to one (see :data:`SEED_LIMIT`), so two
    different seeds always train different runs, and ``train`` and ``compare`` accept the same seeds.
    """
    try:
        values = tuple(operator.index(s) for s in seeds)
    except TypeError:
        raise invalid(field, seeds, "seeds must be integers") from None
    shown = list(values) if len(values) <= 8 else f"{len(values)} seeds"
    require(1 <= len(values) <= MAX_SEEDS, field, shown, f"give between 1 and {MAX_SEEDS} seeds")
    bad = [s for s in values if not 0 <= s < SEED_LIMIT]
    require(
        not bad,
        field,
        bad[:3],
        f"a seed must be an integer in [0, {SEED_LIMIT}) (2**32): a PRNG key keeps "
        "only the low 32 bits, so a seed outside would repeat another one's run",
    )
    repeated = sorted(s for s, n in collections.Counter(values).items() if n > 1)
    require(not repeated, field, shown, f"no seed may repeat ({', '.join(map(str, repeated[:3]))} does)")
    return values


def run_grid(config: TrainConfig, seeds: Sequence[int], sweep: dict[str, Sequence[float]] | None = None) -> list[dict]:
    """One dict per run: its seed and hyperparameters. Sweep values vary slowest, seeds fastest."""
    sweep = dict(sweep or {})
    for name, values in sweep.items():
        if name not in SWEEPABLE:
            raise ConfigError(f"cannot sweep {name!r}; sweepable: {', '.join(SWEEPABLE)}")
        if not values:
            raise ConfigError(f"sweep {name!r} has no values")
        for v in values:  # validate each value through the config itself
            config.replace(**{name: v})
    seeds = list(check_seeds(seeds))
    runs = []
    names = list(sweep)
    for values in itertools.product(*(sweep[n] for n in names)):
        for seed in seeds:
            hp = {n: float(getattr(config, n)) for n in SWEEPABLE}
            hp.update({n: float(v) for n, v in zip(names, values)})
            runs.append({"seed": seed, **hp})
    return runs


def _run_mesh() -> Mesh | None:
    """A 1-D mesh "runs" over every device of every process (``jax.devices()`` is global after
    :func:`jaxrae.distributed.initialize`), or None on a single device."""
    devices = jax.devices()
    return Mesh(np.array(devices), ("runs",)) if len(devices) > 1 else None


@dataclasses.dataclass
class Runs:
    """The result of :func:`train`: every run's final state, its history and its model.

    ``state`` is a :class:`TrainState` with a leading run axis (seeds, times swept values);
    ``metrics[name]`` has shape (n_runs, steps). ``encode``/``decode``/``reconstruct``/
    ``sample_prior`` apply every run's model at once and return arrays with a leading run axis.
    """

    config: TrainConfig
    data_name: str
    runs: list[dict]
    state: TrainState
    metrics: dict[str, np.ndarray]
    model: AutoEncoder
    codec: Codec
    image_shape: tuple
    wall_time_s: float = 0.0
    compile_time_s: float = 0.0
    data_fingerprint: str = ""  # the training data's content fingerprint (jaxrae.data.fingerprint)

    @property
    def seeds(self) -> list[int]:
        return [r["seed"] for r in self.runs]

    @property
    def n_runs(self) -> int:
        return len(self.runs)

    @property
    def losses(self) -> np.ndarray:
        """Training loss per run and step, shape (n_runs, steps)."""
        return self.metrics["loss"]

    @property
    def diverged_at(self) -> np.ndarray:
        """First non-finite step per run, -1 where the run stayed finite."""
        return np.asarray(self.state.diverged_at)

    @property
    def ok(self) -> np.ndarray:
        return self.diverged_at < 0

    @property
    def variables(self):
        """Stacked Flax variables {"params", "batch_stats"} with a leading run axis."""
        return {"params": self.state.params, "batch_stats": self.state.batch_stats}

    def encode(self, images: np.ndarray, batch: int = 1000) -> np.ndarray:
        """Codes of ``images`` (n, H, W, C) float in [0, 1] under every run: (n_runs, n, ...)."""
        images = np.asarray(images, np.float32)
        chex.assert_rank(images, 4)
        f = _vmap_variables(self.codec.encode, in_axes=(0, None))
        return np.concatenate(
            [np.asarray(f(self.variables, images[i : i + batch])) for i in range(0, len(images), batch)], axis=1
        )

    def decode(self, codes: np.ndarray, batch: int = 1000) -> np.ndarray:
        """Images from per-run codes (n_runs, n, ...): (n_runs, n, H, W, C)."""
        codes = np.asarray(codes)
        f = _vmap_variables(self.codec.decode, in_axes=(0, 0))
        return np.concatenate(
            [np.asarray(f(self.variables, codes[:, i : i + batch])) for i in range(0, codes.shape[1], batch)], axis=1
        )

    def reconstruct(self, images: np.ndarray, batch: int = 1000) -> np.ndarray:
        """decode(encode(images)) for every run: (n_runs, n, H, W, C)."""
        return self.decode(self.encode(images, batch), batch)

    def sample_prior_codes(self, key, n: int) -> np.ndarray:
        """n codes per run from the method's prior (N(0, I) or uniform), (n_runs, n, ...)."""
        keys = jax.random.split(key, self.n_runs)
        return np.asarray(jax.vmap(self.codec.sample_prior, in_axes=(0, None))(keys, n))

    def sample_prior(self, key, n: int) -> np.ndarray:
        """n decoded prior samples per run: (n_runs, n, H, W, C)."""
        return self.decode(self.sample_prior_codes(key, n))

    def fit_ex_post(self, key, images: np.ndarray, n_components: int = 10, **kwargs):
        """An ex-post density per run, fitted on the codes of ``images`` (usually the train set).

        Ghosh et al. (2020), Sec. 4: a regularized autoencoder has no prior to sample from, so a
        density is fitted on its training codes after training. Continuous codes get a
        ``n_components`` full-covariance Gaussian mixture (:func:`jaxrae.density.fit_gmm`, the
        paper's choice of 10); discrete codes a mixture of categoricals (latent class model,
        :func:`jaxrae.density.fit_categorical_mixture`). One vmapped fit for all runs; the
        result's fields have a leading run axis. ``kwargs`` go to the fitting function.
        """
        codes = self.encode(images)
        if self.codec.discrete:
            return density.fit_categorical_mixture(key, codes, self.codec.n_classes, n_components, **kwargs)
        return density.fit_gmm(key, codes, n_components, **kwargs)

    def sample_ex_post_codes(self, key, ex_post, n: int) -> np.ndarray:
        """n codes per run from a density returned by :meth:`fit_ex_post`: (n_runs, n, ...)."""
        keys = jax.random.split(key, self.n_runs)
        codes = np.asarray(jax.vmap(lambda d, k: d.sample(k, n))(ex_post, keys))
        return codes.astype(np.int32) if self.codec.discrete else codes.astype(np.float32)

    def sample_ex_post(self, key, ex_post, n: int) -> np.ndarray:
        """n decoded samples per run from the ex-post density: (n_runs, n, H, W, C)."""
        return self.decode(self.sample_ex_post_codes(key, ex_post, n))

    def summary(self) -> dict:
        """Per-run final loss (median of the last 10 % of steps) and divergence flags."""
        tail = max(1, self.losses.shape[1] // 10)
        return {
            "final_loss": np.nanmedian(self.losses[:, -tail:], axis=1).tolist(),
            "diverged_at": self.diverged_at.tolist(),
        }


_EVAL_CACHE: dict = {}


def _vmap_variables(fn, in_axes):
    """jit(vmap(fn)) cached per function, so repeated evaluation compiles once."""
    key = (fn, in_axes)
    if key not in _EVAL_CACHE:
        _EVAL_CACHE[key] = jax.jit(jax.vmap(fn, in_axes=in_axes))
    return _EVAL_CACHE[key]


def _header(config: TrainConfig, data: Dataset, runs: list[dict]) -> dict:
    return {"config": config.to_dict(), "data": data.name, "fingerprint": data.fingerprint, "runs": runs}


def train(
    config: TrainConfig,
    data: Dataset,
    seeds: Sequence[int] = (0,),
    *,
    sweep: dict[str, Sequence[float]] | None = None,
    checkpoint_path: str | Path | None = None,
    progress: bool = True,
    progress_desc: str | None = None,
    stop_after_chunks: int | None = None,
    logger: runlog.RunLogger | str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Runs:
    """Train every (seed, swept value) run of ``config`` on ``data`` in one vmapped program.

    Runs in chunks of ``config.chunk_size`` steps: one compiled ``lax.scan`` per chunk (or, where
    :func:`resolve_chunk_runner` says so, a loop of one compiled, donated step), a Python loop over
    chunks for the progress bar and the checkpoint. With ``checkpoint_path`` the stacked
    state and history are written atomically after every chunk, and an existing checkpoint of the
    same config, data and runs is resumed (same result as an uninterrupted run; a checkpoint of
    anything else is a CheckpointError). ``stop_after_chunks`` ends early (tests of resumption).

    ``should_stop`` (e.g. "was Ctrl-C pressed?") is asked after every chunk, once that chunk's
    checkpoint is written and logged, the last chunk included; when it answers True, training
    stops there and ``train`` raises KeyboardInterrupt (never returns a partly trained Runs that
    a caller could mistake for a finished one). With ``checkpoint_path`` the same call resumes
    from that chunk and ends bitwise where an uninterrupted run ends; without one the work is
    lost. With several processes the processes agree (any one asking stops all), so every
    process leaves the loop at the same chunk.

    ``logger`` (a directory, or a :class:`jaxrae.runlog.RunLogger` the caller keeps open to add
    evaluation metrics) receives after every chunk, per run, each step metric averaged over the
    chunk's steps (``train/loss``, ``train/rec``, ..., ``train/lr``, ``train/tau`` for Gumbel
    codes) and ``train/diverged`` (1 once the run froze), at the chunk's last step count; a
    directory gets one TensorBoard event directory per run (:func:`jaxrae.runlog.run_names`).

    ``config``'s weights are resolved for the data's image size first
    (:meth:`TrainConfig.for_images`); the returned ``Runs.config`` and the checkpoint hold the
    resolved values. Swept values are used as given.
    """
    config = config.for_images(data.image_shape)
    runs = run_grid(config, seeds, sweep)
    trainer = make_train(config, data)
    n_runs = len(runs)
    mesh = _run_mesh()
    n_dev = 1 if mesh is None else mesh.devices.size
    n_padded = -(-n_runs // n_dev) * n_dev  # pad the run axis to a multiple of the devices
    padded = runs + [runs[-1]] * (n_padded - n_runs)

    # Every process holds the whole run list on the host; distributed.put gives each process
    # only its own runs' shards (and every device one copy of the uint8 images).
    keys = np.stack([np.asarray(jax.random.key_data(jax.random.key(r["seed"]))) for r in padded])
    hparams = HParams(*(np.asarray([r[n] for r in padded], np.float32) for n in SWEEPABLE))
    run_sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec("runs"))
    keys, hparams = distributed.put((keys, hparams), run_sharding)
    images = distributed.put(trainer.images_u8, None if mesh is None else NamedSharding(mesh, PartitionSpec()))

    init, run_chunk, executables = _vmapped_programs(
        config, tuple(trainer.images_u8.shape[1:]), dynamic_binarization(data)
    )
    # init leaves key-independent leaves (zero biases, Adam moments) replicated; lay every leaf
    # on the run axis so each chunk is compiled for, and returns, one layout.
    state = _on_runs(init(keys, hparams), run_sharding)
    loop = resolve_chunk_runner(config, tuple(trainer.images_u8.shape[1:])) == "loop"
    one_step = (
        _one_step_program(config, tuple(trainer.images_u8.shape[1:]), dynamic_binarization(data)) if loop else None
    )

    history: dict[str, list[np.ndarray]] = {}
    header = _header(config, data, runs)
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        saved, saved_header = jio.load_checkpoint(checkpoint_path)
        if saved_header != jio.json_roundtrip(header):
            raise CheckpointError(
                f"checkpoint {checkpoint_path} belongs to another configuration, data set or seed list; "
                "rerun with --overwrite or choose another --out"
            )
        state = jio.restore_into(state, saved.get("state"), checkpoint_path)
        history = {k: [np.asarray(v)] for k, v in (saved.get("history") or {}).items()}
        state = distributed.put(state, run_sharding)  # every process read the same (shared) file

    done = int(distributed.to_host(state.step)[0])
    chunks = _chunk_lengths(config.steps - done, config.chunk_size)
    bar = _progress(config.steps, done, progress and distributed.is_primary(), progress_desc or config.method_name)
    own_logger = logger is not None and not isinstance(logger, runlog.RunLogger)
    if own_logger:
        logger = runlog.RunLogger(logger, group=config.method_name, config=config.to_dict())
    if logger is not None and not distributed.is_primary():
        logger = None  # one writer, as for the checkpoint
    if logger is not None:
        logger.open(runlog.run_names(runs, list(sweep or {})))
    compile_s, t0, n_chunks = 0.0, time.perf_counter(), 0
    try:
        for length in chunks:
            # Compile ahead of time (once per chunk length and layout; the loop runner's one-step
            # program once) so compile time is reported apart from run time.
            exe_key = ("one step" if loop else length, n_padded, n_dev, images.shape)
            if exe_key not in executables:
                t_compile = time.perf_counter()
                lowered = one_step.lower(state, images) if loop else run_chunk.lower(state, images, length)
                executables[exe_key] = lowered.compile()
                compile_s += time.perf_counter() - t_compile
            state, metrics = _run_chunk(executables[exe_key], state, images, length if loop else 1)
            # to_host all-gathers across processes (a collective: every process calls it at the
            # same points), so each process holds every run's history and the state it saves.
            for name, value in distributed.to_host(metrics).items():
                history.setdefault(name, []).append(value)
            if checkpoint_path is not None:
                host_state = distributed.to_host(state)
                if distributed.is_primary():  # one writer; the others would race on the rename
                    stacked = {k: np.concatenate(v, axis=1) for k, v in history.items()}
                    jio.save_checkpoint(checkpoint_path, {"state": host_state, "history": stacked}, header)
            diverged = distributed.to_host(state.diverged_at)[:n_runs]
            if bar is not None:
                loss = history["loss"][-1][:n_runs, -1]
                bar.set_postfix(loss=f"{np.nanmedian(loss):.4g}", diverged=int(np.sum(diverged >= 0)))
                bar.update(length)
            if logger is not None:
                means = {f"train/{k}": runlog.chunk_means(v[-1][:n_runs]) for k, v in history.items()}
                logger.log(
                    done + sum(chunks[: n_chunks + 1]), {**means, "train/diverged": (diverged >= 0).astype(np.float32)}
                )
            n_chunks += 1
            if should_stop is not None and stop_agreed(should_stop):
                raise KeyboardInterrupt(
                    f"training stopped on request at step {done + sum(chunks[:n_chunks])} of {config.steps}"
                )
            if stop_after_chunks is not None and n_chunks >= stop_after_chunks:
                break
    finally:
        if bar is not None:
            bar.close()
        if own_logger and logger is not None:
            logger.close()
    wall = time.perf_counter() - t0

    trim = lambda a: a[:n_runs]  # drop the padding runs
    state = jax.tree.map(trim, distributed.to_host(state))
    metrics = {k: trim(np.concatenate(v, axis=1)) for k, v in history.items()}
    return Runs(
        config,
        data.name,
        runs,
        state,
        metrics,
        trainer.model,
        trainer.codec,
        tuple(trainer.images_u8.shape[1:]),
        wall - compile_s,
        compile_s,
        data.fingerprint,
    )


def stop_agreed(should_stop: Callable[[], bool]) -> bool:
    """Whether ``should_stop()`` answers True in any process (in this one, with a single process).

    A collective with several processes (every process must ask at the same point): a stop
    that one process saw alone would leave the others waiting in the next chunk's all-gather.
    """
    stop = bool(should_stop())
    if distributed.process_count() > 1:
        stop = bool(np.any(multihost_utils.process_allgather(np.asarray(stop))))
    return stop


def _on_runs(state, sharding):
    """``state`` with every leaf split along its leading (run) axis by ``sharding`` (None: as is)."""
    if sharding is None:
        return state
    return jax.jit(lambda s: s, out_shardings=sharding)(state)


def _chunk_lengths(remaining: int, chunk: int) -> list[int]:
    full, rest = divmod(max(remaining, 0), chunk)
    return [chunk] * full + ([rest] if rest else [])


def _progress(total: int, initial: int, enabled: bool, desc: str):
    if not enabled:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------
# Final models: what `jaxrae train` (out/model/) and `jaxrae compare` (out/models/<label>/) keep,
# reloaded as a Runs in another process.

MODEL_FORMAT = "jaxrae-model-v1"  # the header's layout; a model of another layout is refused, never guessed at
MODEL_FILE = "model.msgpack"
TRAIN_MODEL_DIR = "model"  # <train out>/model/model.msgpack
ROW_MODELS_DIR = "models"  # <compare out>/models/<label>/model.msgpack

#: The TrainState fields a final model keeps: everything but the optimizer state (which only
#: resuming needs, and which the resume checkpoint holds).
_MODEL_FIELDS = ("step", "params", "batch_stats", "key", "hparams", "diverged_at")


def save_runs(runs: Runs, directory: str | Path) -> Path:
    """Keep the final model of every run of ``runs`` in ``directory`` (``directory/model.msgpack``); returns the file.

    The file is a verified checkpoint (:func:`jaxrae.io.save_checkpoint`: one SHA-256 per array
    and of the header, written atomically) holding, with a leading run axis, each run's step,
    parameters, batch statistics, base key, hyperparameters and divergence step, and the
    per-step metrics; its header holds :data:`MODEL_FORMAT`, the config, the data set's name and
    fingerprint, the image shape, the run list and the timings: what :func:`load_runs` needs to
    rebuild the model with :func:`jaxrae.grid.build_model` without the data.
    """
    state = {name: getattr(runs.state, name) for name in _MODEL_FIELDS}
    tree = {
        "state": {**state, "hparams": dict(runs.state.hparams._asdict())},
        "metrics": {k: np.asarray(v) for k, v in runs.metrics.items()},
    }
    header = {
        "model_format": MODEL_FORMAT,
        "config": runs.config.to_dict(),
        "data": runs.data_name,
        "fingerprint": runs.data_fingerprint,
        "image_shape": list(runs.image_shape),
        "runs": runs.runs,
        "wall_time_s": runs.wall_time_s,
        "compile_time_s": runs.compile_time_s,
    }
    path = Path(directory) / MODEL_FILE
    jio.save_checkpoint(path, tree, header)
    return path


def load_runs(path: str | Path, row: str | None = None) -> Runs:
    """The :class:`Runs` of a finished ``jaxrae train`` or of one row of a ``jaxrae compare``, read from disk.

    ``path`` is a train output directory (its ``model/``), a compare output directory with
    ``row`` (its ``models/<row>/``), or a model directory itself. The model is rebuilt from the
    saved config and image shape (:func:`jaxrae.grid.build_model`) and its variables restored
    from the file written by :func:`save_runs`, so ``encode``, ``decode``, ``reconstruct``,
    ``sample_prior``, ``fit_ex_post`` and ``sample_ex_post`` give bitwise the arrays of the Runs
    that trained (for the same keys and images). ``state.opt_state`` is None: the optimizer's
    moments stay in the resume checkpoint.

    Raises CheckpointError (one line) when there is no model, the file is truncated or altered
    (its SHA-256 digests), it was written in another format (:data:`MODEL_FORMAT`,
    :data:`jaxrae.io.FORMAT`), its config is not valid here, or an array's path, shape or dtype
    does not fit the model its config builds.
    """
    directory = _model_directory(Path(path), row)
    file = directory / MODEL_FILE
    redo = "retrain the run (or restore the file from a copy)"
    tree, header = jio.load_checkpoint(file, redo=redo)
    found = header.get("model_format") if isinstance(header, dict) else None
    if found != MODEL_FORMAT:
        raise CheckpointError(
            f"{file} is not a {MODEL_FORMAT} model (its format is {found!r}: another jaxrae version, "
            "or a resume checkpoint); retrain it with this version"
        )
    try:
        config = TrainConfig.from_dict(header["config"])
        image_shape = tuple(int(d) for d in header["image_shape"])
        runs = [dict(r) for r in header["runs"]]
        seeds = [int(r["seed"]) for r in runs]
    except (JaxraeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{file} has a header this jaxrae cannot rebuild a model from ({type(e).__name__}: {e}); "
            "retrain it with this version"
        ) from None
    if len(image_shape) != 3 or not runs:
        raise CheckpointError(
            f"{file} has image_shape={list(image_shape)} and {len(runs)} runs; a model needs (H, W, C) "
            "and at least one run"
        )
    model, codec, init, _, _ = _training_functions(config, image_shape)
    key_shape = jax.random.key_data(jax.random.key(0)).shape
    shapes = jax.eval_shape(
        jax.vmap(init),
        jax.ShapeDtypeStruct((len(seeds), *key_shape), jnp.uint32),
        HParams(*(jax.ShapeDtypeStruct((len(seeds),), jnp.float32) for _ in SWEEPABLE)),
    )
    target = {name: getattr(shapes, name) for name in _MODEL_FIELDS}
    target["hparams"] = dict(shapes.hparams._asdict())
    state = jio.restore_into(
        target,
        tree.get("state"),
        file,
        redo="its arrays do not fit the model its config builds; retrain the run with this version",
    )
    metrics = tree.get("metrics")
    if not (
        isinstance(metrics, dict)
        and all(isinstance(v, np.ndarray) and v.ndim == 2 and v.shape[0] == len(runs) for v in metrics.values())
    ):
        raise CheckpointError(
            f"{file} does not match its header: its metrics are not (n_runs={len(runs)}, steps) arrays"
        )
    state = TrainState(
        step=state["step"],
        params=state["params"],
        batch_stats=state["batch_stats"],
        opt_state=None,
        key=state["key"],
        hparams=HParams(**state["hparams"]),
        diverged_at=state["diverged_at"],
    )
    return Runs(
        config,
        str(header.get("data", "")),
        runs,
        state,
        metrics,
        model,
        codec,
        image_shape,
        float(header.get("wall_time_s", 0.0)),
        float(header.get("compile_time_s", 0.0)),
        str(header.get("fingerprint", "")),
    )


def _model_directory(path: Path, row: str | None) -> Path:
    """Where :func:`load_runs` reads: ``path/models/<row>``, ``path/model`` or ``path`` itself."""
    if row is not None:
        rows = path / ROW_MODELS_DIR
        if not (rows / row / MODEL_FILE).exists():
            saved = sorted(p.name for p in rows.iterdir() if (p / MODEL_FILE).exists()) if rows.is_dir() else []
            raise CheckpointError(
                f"row={row!r} has no model in {rows}: "
                + (f"the saved rows are {', '.join(saved)}" if saved else "no row has one")
            )
        return rows / row
    if (path / MODEL_FILE).exists():
        return path
    if (path / TRAIN_MODEL_DIR / MODEL_FILE).exists():
        return path / TRAIN_MODEL_DIR
    if (path / ROW_MODELS_DIR).is_dir():
        saved = sorted(p.name for p in (path / ROW_MODELS_DIR).iterdir() if (p / MODEL_FILE).exists())
        raise CheckpointError(
            f"{path} is a compare directory; choose a row with row=: {', '.join(saved) or 'none is saved'}"
        )
    raise CheckpointError(
        f"{path} holds no model (neither {MODEL_FILE}, {TRAIN_MODEL_DIR}/{MODEL_FILE} nor {ROW_MODELS_DIR}/<row>/); "
        "give a `jaxrae train --out` or `jaxrae compare` directory"
    )
