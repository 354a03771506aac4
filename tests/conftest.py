"""Shared fixtures. JAX compile time dominates this suite: data sets are loaded once per
session and tests share configs, so jaxrae's caches of compiled programs are hit."""

import os

import pytest

os.environ.setdefault("JAXRAE_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "jaxrae"))


@pytest.fixture(scope="session")
def digits():
    from jaxrae.data import load_data

    return load_data("digits")
