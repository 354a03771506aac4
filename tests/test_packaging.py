"""Packaging a user can trust: license, citation, changelog, type marker, one version, tested floors.

Fast checks of the repository's metadata files against pyproject.toml and the installed package;
nothing here compiles JAX code.
"""

import ast
import hashlib
import importlib.metadata
import importlib.resources
import json
import tomllib
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml
from packaging.requirements import Requirement

import jaxrae

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]

# sha256 of the Apache License 2.0 text as the ASF publishes it (LICENSE-2.0.txt), which is also
# Debian's /usr/share/common-licenses/Apache-2.0: a truncated or edited LICENSE changes it.
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def test_license_file_is_the_full_apache_2_0_text_and_pyproject_names_it():
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_0_SHA256
    assert PROJECT["license"] == "Apache-2.0"  # SPDX expression (PEP 639)
    assert PROJECT["license-files"] == ["LICENSE"]


def test_citation_cff_parses_with_the_required_keys_and_this_version():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    # Required by the Citation File Format 1.2.0 schema, at the top and in every reference.
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title"):
        assert isinstance(cff[key], str) and cff[key].strip()
    assert cff["authors"] and all(isinstance(a, dict) and ("name" in a or "family-names" in a) for a in cff["authors"])
    assert str(cff["version"]) == jaxrae.__version__
    assert cff["license"] == PROJECT["license"]
    references = cff["references"]
    for ref in references:
        assert {"type", "title", "authors"} <= ref.keys() and ref["authors"]
    (method,) = [r for r in references if r["title"] == "From Variational to Deterministic Autoencoders"]
    assert [a["family-names"] for a in method["authors"]] == ["Ghosh", "Sajjadi", "Vergari", "Black", "Schölkopf"]
    assert method["year"] == 2020
    assert "arXiv:1903.12436" in [i["value"] for i in method["identifiers"]]


def test_changelog_has_an_entry_for_this_version():
    headings = [
        line for line in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8").splitlines() if line.startswith("## ")
    ]
    assert headings[0] == "## Unreleased"
    assert any(h == f"## {jaxrae.__version__}" or h.startswith(f"## {jaxrae.__version__} - ") for h in headings)


def test_py_typed_marker_ships_with_the_package():
    assert importlib.resources.files("jaxrae").joinpath("py.typed").is_file()
    # A file in the source tree is not yet in the wheel: package-data must list it.
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["jaxrae"]


def test_requires_python_is_3_11():
    # compare.py imports tomllib (new in 3.11), and the tested jax/numpy/scipy releases need 3.11.
    assert PROJECT["requires-python"] == ">=3.11"


def test_version_is_written_once_as_a_literal_that_the_build_reads_statically():
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "jaxrae.__version__"}
    # setuptools reads `attr` without importing jaxrae (and so without jax in the build
    # environment) only when the value is a plain literal assignment in the module.
    tree = ast.parse((ROOT / "jaxrae" / "__init__.py").read_text(encoding="utf-8"))
    literals = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
        and isinstance(node.value, ast.Constant)
    ]
    assert literals == [jaxrae.__version__]


def _installed_from_this_checkout(dist):
    """Whether the installed jaxrae distribution was built from this source tree (None: unknown)."""
    direct_url = dist.read_text("direct_url.json")
    if direct_url is None:
        return None
    url = json.loads(direct_url).get("url", "")
    if not url.startswith("file://"):
        return None
    return Path(unquote(urlparse(url).path)).resolve() == ROOT


def test_version_equals_the_installed_distribution_metadata():
    try:
        dist = importlib.metadata.distribution("jaxrae")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("jaxrae is not installed (run from a source tree on PYTHONPATH): no metadata to compare")
    if _installed_from_this_checkout(dist) is False:
        pytest.skip("the installed jaxrae distribution was built from another checkout")
    assert dist.version == jaxrae.__version__


def _declared_requirements():
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    reqs += [Requirement(r) for r in PROJECT["optional-dependencies"]["test"]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate()]


@pytest.mark.parametrize("req", _declared_requirements(), ids=str)
def test_the_suite_runs_at_or_above_every_declared_floor(req):
    # The floors are the versions the suite is tested with; running below one would test an
    # untested combination and make the floor a guess.
    try:
        installed = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{req.name} is not installed here")
    assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} is outside {req.specifier}"
