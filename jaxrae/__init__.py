"""jaxrae: regularized autoencoders, continuous and discrete, as pure JAX functions.

Public API (re-exported here; the modules are usable alone):

- data:     :func:`load_data` -> :class:`Dataset`; :func:`make_dataset` from your own arrays
- config:   :class:`TrainConfig`
- methods:  the method grid's rows and presets (:class:`Method`, :func:`methods.names`);
  grid: its registries of code paths and regularizers
- train:    :func:`train` (many seeds in one program) -> :class:`Runs`; :func:`make_train`;
  :func:`save_runs` and :func:`load_runs` (a run's final models kept on disk, and back as a :class:`Runs`)
- losses, relax, density, likelihood, metrics: pure functions (``from jaxrae.relax import gumbel_softmax``)
- features: the FD feature network (a small classifier per data set, cached)
- errors:   :class:`ConfigError`, :class:`DataError`, :class:`CheckpointError`
"""

# Eager on purpose: `jaxrae.train` must stay the function even after `import jaxrae.train`
# (a lazy re-export would be shadowed by the submodule). relax, losses and density import
# nothing from the layers above them, so they remain usable on their own.
from jaxrae import density, features, grid, likelihood, losses, methods, metrics, relax
from jaxrae.config import TrainConfig
from jaxrae.data import Dataset, load_data, make_dataset
from jaxrae.errors import CheckpointError, ConfigError, DataError, JaxraeError
from jaxrae.grid import HParams
from jaxrae.methods import Method
from jaxrae.train import Runs, TrainState, load_runs, make_train, save_runs, train

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Dataset",
    "HParams",
    "JaxraeError",
    "Method",
    "Runs",
    "TrainConfig",
    "TrainState",
    "density",
    "features",
    "grid",
    "likelihood",
    "load_data",
    "load_runs",
    "losses",
    "make_dataset",
    "make_train",
    "methods",
    "metrics",
    "relax",
    "save_runs",
    "train",
]
