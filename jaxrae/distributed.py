"""Several devices and several hosts: thin, explicit wrappers around ``jax.distributed`` and ``jax.Array``.

jaxrae trains every run of a sweep (seeds x swept hyperparameters) in one vmapped program whose
leading *run axis* is laid on a 1-D mesh named ``"runs"`` over ``jax.devices()``. With one
process that is every local device; after :func:`initialize` it is every device of every
process (JAX's multi-controller model: each process runs the same program, owns the shards on
its own devices, and XLA's collectives move data between processes). This module holds the
three things the trainer needs for that, and nothing cluster-specific:

- :func:`initialize` starts ``jax.distributed`` from arguments or ``JAXRAE_*`` environment
  variables (the CLI's ``--distributed`` flag calls it);
- :func:`put` builds a global ``jax.Array`` from a host array that every process holds in full
  (the run list, the keys, the images), each process materialising only its own shards;
- :func:`to_host` brings a global array back as NumPy on *every* process (an all-gather when
  several processes share it), so every process returns the full :class:`~jaxrae.train.Runs`
  and :func:`is_primary` decides who writes files.

And :func:`enable_compilation_cache`, JAX's persistent compilation cache, so repeated CLI runs of
the same configuration skip XLA compilation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.experimental.compilation_cache import compilation_cache

from jaxrae.errors import ConfigError, invalid, require

ENV_COORDINATOR = "JAXRAE_COORDINATOR"
ENV_NUM_PROCESSES = "JAXRAE_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXRAE_PROCESS_ID"
ENV_COMPILATION_CACHE = "JAXRAE_COMPILATION_CACHE"


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise invalid(name, text, "must be an integer") from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout: int = 300,
) -> None:
    """Join this process to a multi-process JAX job (``jax.distributed.initialize``).

    Arguments left at ``None`` are read from ``JAXRAE_COORDINATOR`` (``host:port`` of process 0),
    ``JAXRAE_NUM_PROCESSES`` and ``JAXRAE_PROCESS_ID``; what is still missing is left to JAX's
    own cluster auto-detection (SLURM, Open MPI, Cloud TPU, ``JAX_COORDINATOR_ADDRESS``). Must
    run before any JAX computation; calling it again in an initialized process does nothing.

    Afterwards ``jax.devices()`` lists the devices of all processes, so :func:`jaxrae.train`
    spreads the runs over all of them. On CPU, cross-process collectives use gloo (JAX's default
    ``jax_cpu_collectives_implementation`` since 0.4.3x), which needs no extra setup.
    """
    if jax.distributed.is_initialized():
        return
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    require(num_processes is None or num_processes >= 1, "num_processes", num_processes, "at least 1")
    if process_id is not None and num_processes is not None:
        require(0 <= process_id < num_processes, "process_id", process_id, f"must be in [0, {num_processes})")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=initialization_timeout,
        )
    except ValueError as e:  # JAX names the missing value; say where ours come from
        raise ConfigError(
            f"cannot start jax.distributed: {e}; set {ENV_COORDINATOR}=host:port, "
            f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} (or run under SLURM / Open MPI)"
        ) from None


def is_primary() -> bool:
    """True in the process that writes files (process 0; the only process without jax.distributed)."""
    return jax.process_index() == 0


def process_count() -> int:
    return jax.process_count()


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op with one process).

    For file work that one process does for all: the primary prepares an output directory,
    then everyone passes the barrier before reading from it.
    """
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def put(host_tree: Any, sharding: jax.sharding.Sharding | None) -> Any:
    """Place a pytree of host arrays, identical on every process, as global ``jax.Array``s.

    ``jax.make_array_from_callback`` asks for the slice of each addressable shard only, so with
    several processes each one copies just its own runs to its own devices (no process needs the
    other devices, and nothing crosses the network). ``sharding=None`` is the default device.
    """
    if sharding is None:
        return jax.tree.map(jax.numpy.asarray, host_tree)

    def place(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(place, host_tree)


def to_host(tree: Any) -> Any:
    """A pytree of (possibly multi-process) arrays as NumPy arrays holding the global values.

    With one process this is ``jax.device_get``. With several, an array whose shards live on
    other processes cannot be read locally; ``multihost_utils.process_allgather`` all-gathers it
    so every process gets the whole array. Every process must call this at the same point (it
    is a collective).
    """
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))

    def gather(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)  # already local (host data, or a fully addressable array)

    return jax.tree.map(gather, tree)


def check_cache_dir(env_var: str) -> Path | None:
    """The cache directory that environment variable ``env_var`` names, created if missing; None if unset.

    ConfigError (naming the variable) when the path is a file, lies under a file, or cannot be
    created or written, so a misdirected cache fails in one line before any work starts.
    """
    text = os.environ.get(env_var, "")
    if not text.strip():
        return None
    path = Path(text).expanduser()
    require(not path.exists() or path.is_dir(), env_var, text, "must name a directory (it is a file)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise invalid(env_var, text, f"cannot create the cache directory: {e.strerror or e}") from None
    require(os.access(path, os.W_OK | os.X_OK), env_var, text, "the cache directory is not writable")
    return path


def enable_compilation_cache(cache_dir: str | os.PathLike, min_compile_time_s: float = 0.5) -> Path:
    """Use JAX's persistent compilation cache in ``cache_dir`` (created if missing).

    XLA compilation of a training chunk takes seconds (minutes for the conv nets on an
    accelerator); the cache stores each compiled executable keyed by the program, its shapes and
    shardings, the backend and the JAX version, so a second CLI run of the same configuration
    loads it instead of compiling. Only compilations that took at least ``min_compile_time_s``
    are written (JAX's default threshold is 1 s, which would skip the small CPU programs; the
    many tiny eager-op compilations stay out). Calling it again with another directory switches
    the cache. Returns the directory.
    """
    path = Path(cache_dir).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise invalid("cache_dir", str(cache_dir), f"cannot create the compilation cache directory: {e.strerror or e}") from None
    if jax.config.jax_compilation_cache_dir not in (None, "", str(path)):
        compilation_cache.reset_cache()  # the cache object is built once per directory; rebuild it for the new one
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    return path
