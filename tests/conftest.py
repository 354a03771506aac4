"""Shared fixtures. JAX compile time dominates this suite: data sets are loaded once per
session and tests share configs, so jaxrae's caches of compiled programs are hit."""

import atexit
import os
import shutil
import tempfile

import pytest

# XLA compilation dominates this suite's time. Tests check numbers, not speed, so compile with
# LLVM's cheap pipeline (about a third less CPU per compile here). Set before JAX is imported;
# subprocesses started by tests inherit it. Benchmarks never run under this flag.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()

# Two xdist workers already fill the two cores: a BLAS that starts threads of its own in each
# (scipy, scikit-learn and NumPy in tests and their subprocesses) only waits for them
# (benchmarks/fd_threads.py). One BLAS thread per process; numbers are the same to rounding.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

os.environ.setdefault("JAXRAE_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "jaxrae"))

# The CLI keeps compiled programs in a persistent cache by default (~/.cache/jaxrae/xla). The suite,
# and the CLI subprocesses it starts (they inherit the environment), keep theirs in a throwaway
# directory instead, so no test writes into the user's cache or is served by it.
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="jaxrae-test-xla-")
atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
os.environ.setdefault("JAXRAE_COMPILATION_CACHE", _COMPILATION_CACHE)


def pytest_configure(config):
    """The suite's own processes use that cache too. The controller sets the directory before
    pytest-xdist starts its workers, which inherit it: a program compiled by one worker or CLI
    subprocess is loaded, not compiled again, by the other worker and every later subprocess
    (a loaded executable is the compiled one, so results are unchanged)."""
    from threadpoolctl import threadpool_limits

    from jaxrae import distributed

    distributed.enable_compilation_cache(os.environ["JAXRAE_COMPILATION_CACHE"])
    threadpool_limits(limits=1, user_api="blas")  # a BLAS loaded before the variable above was set


@pytest.fixture(scope="session")
def digits():
    from jaxrae.data import load_data

    return load_data("digits")


@pytest.fixture(autouse=True, scope="session")
def _one_ex_post_fit_per_model():
    """In-process experiments evaluate each model with one ex-post fit of one start unless a test
    sets ``n_init``/``ex_post_refits``: the repeats multiply evaluation time, and their own tests
    (tests/test_evaluate_refits.py, tests/test_density_n_init.py) set them explicitly. CLI
    subprocesses keep the library's defaults."""
    from jaxrae import experiment

    saved = experiment.DEFAULT_N_INIT, experiment.DEFAULT_EX_POST_REFITS
    experiment.DEFAULT_N_INIT, experiment.DEFAULT_EX_POST_REFITS = 1, 1
    yield
    experiment.DEFAULT_N_INIT, experiment.DEFAULT_EX_POST_REFITS = saved
