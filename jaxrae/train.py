"""Functional training: ``make_train(config, data)`` gives a pure ``train(key)``; many runs are one vmap.

The pattern is PureJaxRL's (Lu et al. 2022): everything about a run lives in one pytree
(:class:`TrainState`: step, parameters, batch statistics, optimizer state, the run's key, its
per-run hyperparameters and a divergence flag), a step is a pure function
``(state, key, batch) -> (state, metrics)``, and the loop is ``jax.lax.scan``. Many seeds (and
swept hyperparameters) are ``jax.vmap`` over the leading axis of the state; over several devices
that axis is laid on a 1-D mesh named ``"runs"`` with :class:`jax.sharding.NamedSharding`.

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

import dataclasses
import functools
import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxrae import density, distributed
from jaxrae import io as jio
from jaxrae.config import TrainConfig
from jaxrae.data import DYNAMIC_BINARIZE_STREAM, Dataset, binarize_batch
from jaxrae.errors import CheckpointError, ConfigError
from jaxrae.grid import Codec, HParams, build_model, code_spec, make_codec, make_loss_fn
from jaxrae.nets import AutoEncoder
from jaxrae.optim import make_optimizer

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
    """The config's hyperparameters as float32 scalars."""
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
    ``jax.random.split(jax.random.key(0), n)`` trains n runs in one program.
    """
    images_u8 = data.train_images_u8 if isinstance(data, Dataset) else np.asarray(data)
    if images_u8.dtype != np.uint8 or images_u8.ndim != 4:
        raise ConfigError(f"training images must be uint8 of shape (N, H, W, C), got {images_u8.dtype} {images_u8.shape}")
    n_train = images_u8.shape[0]
    if config.batch_size > n_train:
        raise ConfigError(f"batch_size={config.batch_size} is larger than the {n_train} training images; use at most {n_train}")
    return Trainer(config, *_training_functions(config, tuple(images_u8.shape[1:]), dynamic_binarization(data)), images_u8)


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
        # The freeze is inside the update (scalar coefficients), not a where() between an old
        # and a new state, so XLA updates parameters and moments in place (see jaxrae/optim.py).
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, alive=alive,
                                              learning_rate=state.hparams.lr)
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
        return new_state, metrics

    def run(state: TrainState, images: chex.Array, n_steps: int):
        def body(state, _):
            batch_key, step_key = jax.random.split(jax.random.fold_in(state.key, state.step))
            idx = jax.random.randint(batch_key, (config.batch_size,), 0, images.shape[0])
            batch = images[idx]
            if dynamic:
                batch = binarize_batch(jax.random.fold_in(step_key, DYNAMIC_BINARIZE_STREAM), batch)
            return step(state, step_key, batch)

        return jax.lax.scan(body, state, None, length=n_steps)

    return model, codec, init, step, run


@functools.lru_cache(maxsize=64)
def _vmapped_programs(config: TrainConfig, image_shape: tuple, dynamic: bool = False):
    """jit(vmap(init)) and jit(vmap(run)) over the run axis, shared by every train() call."""
    _, _, init, _, run = _training_functions(config, image_shape, dynamic)
    # Donating the state lets XLA update the stacked parameters and Adam moments in place
    # instead of holding an input and an output copy of every run's state.
    run_jit = jax.jit(jax.vmap(run, in_axes=(0, None, None)), static_argnums=2, donate_argnums=0)
    return jax.jit(jax.vmap(init)), run_jit, {}




# --------------------------------------------------------------------------------------------
# Many runs: seeds x swept hyperparameters, vmapped, sharded, chunked, checkpointed.


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
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("seeds is empty; give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds} repeat a value; each run needs its own seed")
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
        return np.concatenate([np.asarray(f(self.variables, images[i : i + batch])) for i in range(0, len(images), batch)], axis=1)

    def decode(self, codes: np.ndarray, batch: int = 1000) -> np.ndarray:
        """Images from per-run codes (n_runs, n, ...): (n_runs, n, H, W, C)."""
        codes = np.asarray(codes)
        f = _vmap_variables(self.codec.decode, in_axes=(0, 0))
        return np.concatenate([np.asarray(f(self.variables, codes[:, i : i + batch])) for i in range(0, codes.shape[1], batch)], axis=1)

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
) -> Runs:
    """Train every (seed, swept value) run of ``config`` on ``data`` in one vmapped program.

    Runs in chunks of ``config.chunk_size`` steps: one compiled ``lax.scan`` per chunk, a Python
    loop over chunks for the progress bar and the checkpoint. With ``checkpoint_path`` the stacked
    state and history are written atomically after every chunk, and an existing checkpoint of the
    same config, data and runs is resumed (same result as an uninterrupted run; a checkpoint of
    anything else is a CheckpointError). ``stop_after_chunks`` ends early (tests of resumption).
    """
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

    init, run_chunk, executables = _vmapped_programs(config, tuple(trainer.images_u8.shape[1:]), dynamic_binarization(data))
    # init leaves key-independent leaves (zero biases, Adam moments) replicated; lay every leaf
    # on the run axis so each chunk is compiled for, and returns, one layout.
    state = _on_runs(init(keys, hparams), run_sharding)

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
    compile_s, t0, n_chunks = 0.0, time.perf_counter(), 0
    try:
        for length in chunks:
            # Compile ahead of time (once per chunk length and layout) so compile time is
            # reported apart from run time.
            exe_key = (length, n_padded, n_dev, images.shape)
            if exe_key not in executables:
                t_compile = time.perf_counter()
                executables[exe_key] = run_chunk.lower(state, images, length).compile()
                compile_s += time.perf_counter() - t_compile
            state, metrics = executables[exe_key](state, images)
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
            n_chunks += 1
            if stop_after_chunks is not None and n_chunks >= stop_after_chunks:
                break
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0

    trim = lambda a: a[:n_runs]  # drop the padding runs
    state = jax.tree.map(trim, distributed.to_host(state))
    metrics = {k: trim(np.concatenate(v, axis=1)) for k, v in history.items()}
    return Runs(config, data.name, runs, state, metrics, trainer.model, trainer.codec, tuple(trainer.images_u8.shape[1:]), wall - compile_s, compile_s)


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
