"""Every committed table follows from its results.json: re-rendered from the per-seed numbers alone,
table.md and table.csv (means, intervals, p-values, Holm stars) come out as committed.

A second, independent reading recomputes a few numbers straight from the per-seed values with
numpy and scipy.stats (a mean, a paired t-test, Holm's adjustment over the whole family), without
jaxrae.report's statistics. No training, no figures.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from jaxrae import report

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"
COMMITTED = sorted(RESULTS.glob("*/results.json"))
RERENDER_LINE = re.compile(r"^- re-rendered from results\.json alone by `(?P<command>[^`]*)`$", re.MULTILINE)


def _load(path: Path):
    return json.loads(path.read_text()), (path.parent / "table.md").read_text()


def test_there_are_committed_results():
    assert len(COMMITTED) >= 8


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_table_follows_from_its_results_json(path):
    results, committed_md = _load(path)
    match = RERENDER_LINE.search(committed_md)
    assert match, f"{path.parent / 'table.md'} was not written by `jaxrae report`; run `jaxrae report {path.parent}`"
    markdown, table_csv = report.rerender(results, committed_md, rendered_by=match["command"])
    assert markdown == committed_md, f"run `jaxrae report {path.parent}`: table.md no longer follows from results.json"
    assert table_csv == (path.parent / "table.csv").read_text()


def _ok_values(method: dict, key: str) -> dict[int, float]:
    return {
        s: v
        for s, v, ok in zip(method["seeds"], method["metrics"][key], method["ok"])
        if ok and v is not None and math.isfinite(v)
    }


def _family_p_values(results: dict) -> dict[tuple[str, str], float]:
    """Paired t-test p of every contrast against the baseline, straight from the per-seed values."""
    base = results["methods"][results["baseline"]]
    primary = {tuple(e.rsplit(":", 1)) for e in (results.get("experiment") or {}).get("primary") or ()}
    out = {}
    for name, m in results["methods"].items():
        if name == results["baseline"]:
            continue
        for key in m["metrics"]:
            if key not in base["metrics"] or (name, key) in primary:
                continue
            if key == "code_loglik" and bool(m.get("discrete")) != bool(base.get("discrete")):
                continue
            x, b = _ok_values(m, key), _ok_values(base, key)
            seeds = [s for s in x if s in b]
            d = np.array([x[s] - b[s] for s in seeds])
            if len(seeds) >= 2 and np.ptp(d) > 0:
                out[(name, key)] = stats.ttest_rel([x[s] for s in seeds], [b[s] for s in seeds]).pvalue
    return out


@pytest.mark.parametrize(
    "name, method, key",
    [
        ("table1_digits", "rae", "fd_interp"),
        ("table1_fashion_mnist", "wae", "precision"),
        ("estimators_fashion_mnist", "reinmax-tau2", "fd_ex_post"),
    ],
)
def test_a_mean_and_a_holm_adjusted_p_recomputed_independently(name, method, key):
    results, committed_md = _load(RESULTS / name / "results.json")
    rows = {
        (r["method"], r["metric"]): r for r in csv.DictReader(io.StringIO((RESULTS / name / "table.csv").read_text()))
    }
    row = rows[(method, key)]
    values = np.array(list(_ok_values(results["methods"][method], key).values()))
    assert float(row["mean"]) == pytest.approx(values.mean(), rel=1e-12)

    p = _family_p_values(results)
    ordered = sorted(p, key=lambda c: p[c])
    m = len(ordered)
    rank = ordered.index((method, key))
    holm = min(1.0, max((m - j) * p[ordered[j]] for j in range(rank + 1)))  # Holm 1979, step-down
    assert float(row["diff_p"]) == pytest.approx(p[(method, key)], rel=1e-9)
    assert float(row["p_holm"]) == pytest.approx(holm, rel=1e-9)
    assert (row["star"] == "True") == (holm <= 0.05)
    # the family's stars in the markdown grid are exactly the contrasts whose Holm p is <= 0.05
    adjusted = {c: min(1.0, max((m - j) * p[ordered[j]] for j in range(i + 1))) for i, c in enumerate(ordered)}
    grid = committed_md.split("## Paired difference")[1].split("## Per metric")[0]
    n_stars = sum(
        cell.split(" p ")[0].endswith(("*", "*≈")) for line in grid.splitlines()[3:] for cell in line.split("|")[2:]
    )
    assert n_stars == sum(a <= 0.05 for a in adjusted.values())
    assert f"family of the {m} (row, metric) contrasts" in committed_md
