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
the same configuration skip XLA compilation (the CLI turns it on by default, in
:func:`default_compilation_cache_dir`).
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

# Compilations shorter than this are not written to the persistent cache. jaxrae's training chunks
# and evaluation programs take seconds to compile on a CPU; the eager operations around them take
# milliseconds each, and there are thousands: caching those would fill the directory with entries
# whose load (file read + deserialization) saves next to nothing. JAX's own default (1 s) would
# skip the smaller evaluation programs, which together still cost seconds per run.
DEFAULT_MIN_COMPILE_TIME_S = 0.1


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


def default_compilation_cache_dir() -> Path:
    """Where the CLI keeps compiled programs unless ``JAXRAE_COMPILATION_CACHE`` says otherwise.

    ``$XDG_CACHE_HOME/jaxrae/xla``, or ``~/.cache/jaxrae/xla`` when ``XDG_CACHE_HOME`` is unset or
    not absolute (the XDG Base Directory Specification, https://specifications.freedesktop.org/basedir-spec/).
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "jaxrae" / "xla"


def enable_compilation_cache(
    cache_dir: str | os.PathLike, min_compile_time_s: float = DEFAULT_MIN_COMPILE_TIME_S
) -> Path:
    """Use JAX's persistent compilation cache in ``cache_dir`` (created if missing).

    XLA compilation of a training chunk takes seconds (minutes for the conv nets on an
    accelerator); the cache stores each compiled executable keyed by the program, its shapes and
    shardings, the compile options and XLA flags, the backend and the JAX version, so a second run
    of the same configuration loads it instead of compiling, and a changed program or JAX upgrade
    simply misses. Only compilations that took at least ``min_compile_time_s`` are written
    (:data:`DEFAULT_MIN_COMPILE_TIME_S` says why 0.1 s). Calling it again with another directory
    switches the cache. Returns the directory.

    Several processes may share one directory (two ``jaxrae`` commands at once, or the processes
    of a ``--distributed`` job, where JAX lets only process 0 write). What makes that safe is JAX's
    read path, not its writes: with no size limit set (the default, ``jax_compilation_cache_max_size
    = -1``) ``jax._src.lru_cache.LRUCache.put`` writes an entry in place (``Path.write_bytes``), with
    no lock and no rename, after checking that it does not exist yet. So a reader can meet an empty
    or half-written entry, and two processes that compiled the same program both write it. Each
    entry is one compressed stream (zlib, whose Adler-32 checksum catches a torn entry; zstd when it
    is installed), and ``jax._src.compiler._cache_read`` turns any error while reading, decompressing
    or deserializing an entry into a Python warning and compiles the program afresh: a torn entry
    costs one compilation, never a wrong program. Two writers of one key each write the whole
    entry from offset 0, so the file ends as one complete entry (zlib ignores a longer
    predecessor's leftover tail; a decompressor that refuses it makes it a torn entry). ``tests/test_compile_cache.py`` runs two ``jaxrae train``
    processes into one empty cache at once, then a third that reads what they wrote, and a fourth
    after every entry was cut in half (compiled afresh, no hit), and checks they all give the same
    losses. A torn entry stays on disk (JAX never overwrites an existing key) and is recompiled,
    with a warning, by every later run until the directory is deleted.

    ConfigError when ``cache_dir`` is a file, lies under a file, or cannot be created or written.
    """
    text = str(cache_dir)
    path = Path(cache_dir).expanduser()
    require(not path.exists() or path.is_dir(), "cache_dir", text, "must name a directory (it is a file)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise invalid("cache_dir", text, f"cannot create the compilation cache directory: {e.strerror or e}") from None
    require(os.access(path, os.W_OK | os.X_OK), "cache_dir", text, "the compilation cache directory is not writable")
    path = path.resolve()
    if jax.config.jax_compilation_cache_dir not in (None, "", str(path)):
        compilation_cache.reset_cache()  # the cache object is built once per directory; rebuild it for the new one
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    return path
