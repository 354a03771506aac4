"""Seeds -> numbers people can trust: summaries with t-intervals, paired differences, tables, figures.

Everything here is a pure function of the per-seed numbers that :mod:`jaxrae.compare` records
(``results.json``), so a table or a figure can be rebuilt from that file alone.

Statistics across seeds (Student 1908; any textbook, e.g. Wasserman, *All of Statistics*, 6.3):

- mean ``m = (1/n) sum_i x_i`` and sample standard deviation ``s`` (divisor ``n - 1``);
- 95 % interval for the mean, ``m +- t_{0.975, n-1} * s / sqrt(n)``, with ``t_{q, nu}`` the
  Student t quantile: it assumes the per-seed values are i.i.d. and roughly normal, and is wide
  for few seeds on purpose (``t_{0.975, 4} = 2.776`` for 5 seeds);
- paired comparison against a baseline over the seeds both methods share: the same interval on
  the per-seed differences ``d_i = x_i(method) - x_i(baseline)``. Seed ``s`` of every method sees
  the same evaluation draws (test pairs, sampling keys), so pairing removes that shared noise.

Tests on the paired differences (one family per table, see :func:`summary_table`):

- p-value of the paired t-test (Student 1908; ``scipy.stats.ttest_rel``) of "no mean difference";
- Holm's step-down correction (Holm 1979, "A simple sequentially rejective multiple test
  procedure", Scand. J. Statist. 6:65-70) over the family of contrasts of a table: a star means
  the Holm-adjusted p is at most 5 %, so the chance of any false star in the family is <= 5 %;
- equivalence, "no difference beyond a margin delta", only from TOST, two one-sided paired t-tests
  (Schuirmann 1987, J. Pharmacokinet. Biopharm. 15:657-680) with delta stated in the experiment
  file; without a margin a contrast with no star is inconclusive, never "no difference".

Two standard deviations (:func:`summary_table`): ``std``, between seeds, of the per-seed values,
which for a metric that reads the ex-post density or draws samples are each the mean over R
independent refits of the evaluation (:func:`jaxrae.evaluate.evaluate`); and ``eval SD``
(:func:`evaluation_sd`), within one trained model, over those R refits, pooled over seeds. The
first is what the intervals and tests use; the second says how much of it is evaluation noise
(about ``eval SD / sqrt(R)`` of it, for the mean of R refits).

Diverged runs (``ok`` false: the loss became non-finite and the run was frozen) keep their numbers
in ``results.json`` but never enter a mean: every summary carries ``n`` (values used) next to
``n_ok/n_total`` (runs that trained without diverging / runs started).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from jaxrae import grid
from jaxrae.config import TrainConfig
from jaxrae.errors import ConfigError
from jaxrae.features import majority_warning
from jaxrae.io import atomic_write_bytes

# Metric key -> (table header, long name, better direction). The order is the table's column order.
# "FD" is the Frechet distance in the penultimate features of jaxrae's per-data-set classifier
# (jaxrae.features.feature_network), never an Inception FID.
METRICS: dict[str, tuple[str, str, str]] = {
    "rec_error": ("rec err", "test reconstruction error (sum of squares per image)", "lower"),
    "rec_error_trained": (
        "rec err (trained code)",
        "test reconstruction error from the codes the decoder read in training (rows with a posterior)",
        "lower",
    ),
    "fd_rec": ("FD rec", "FD (classifier features) of test reconstructions", "lower"),
    "fd_rec_trained": (
        "FD rec (trained code)",
        "FD (classifier features) of test reconstructions from the codes the decoder read in training "
        "(rows with a posterior)",
        "lower",
    ),
    "fd_prior": ("FD prior", "FD (classifier features) of prior samples", "lower"),
    "fd_ex_post": ("FD ex-post", "FD (classifier features) of ex-post samples", "lower"),
    "fd_interp": ("FD interp", "FD (classifier features) of interpolation midpoints", "lower"),
    "precision": ("precision", "improved precision of ex-post samples (k=3)", "higher"),
    "recall": ("recall", "improved recall of ex-post samples (k=3)", "higher"),
    "code_loglik": ("code LL", "test log-likelihood of codes under the ex-post density, per code (nats)", "higher"),
    "perplexity": ("perplexity", "mean per-variable perplexity of test codes (discrete)", "higher"),
    "distinct_codes": ("codes", "distinct test codes (discrete)", "higher"),
    "neg_elbo": ("-ELBO", "test -ELBO (VAEs), nats per image", "lower"),
    "nll_iwae": ("NLL IWAE", "test NLL (IWAE-k), nats per image", "lower"),
    "nll_ex_post": (
        "NLL ex-post",
        "test NLL (ex-post IS-k): importance sampling through the ex-post density, nats per image",
        "lower",
    ),
    "neg_elbo_bpd": ("-ELBO bpd", "test -ELBO (VAEs), bits per dimension", "lower"),
    "nll_iwae_bpd": ("NLL IWAE bpd", "test NLL (IWAE-k), bits per dimension", "lower"),
    "nll_ex_post_bpd": ("NLL ex-post bpd", "test NLL (ex-post IS-k), bits per dimension", "lower"),
}

#: Trained-code metric -> its twin scored on the deterministic code (jaxrae.evaluate.TRAINED_CODE_METRICS).
TRAINED_CODE_TWINS = {"rec_error_trained": "rec_error", "fd_rec_trained": "fd_rec"}
#: The twins' headers in a table that shows trained-code columns too, so each column says which code it decodes
#: (tables without them keep the plain headers).
DETERMINISTIC_CODE_HEADERS = {"rec_error": "rec err (argmax/mean)", "fd_rec": "FD rec (argmax/mean)"}
#: The caption line of a table with trained-code columns.
TRAINED_CODES_NOTE = (
    "(argmax/mean) columns decode the deterministic code every row is scored with (the argmax of categorical "
    "logits, a Gaussian posterior's mean, the code itself elsewhere); (trained code) columns, for rows with a "
    "posterior only, decode the code the decoder read in training, drawn at the run's final temperature (a "
    "relaxed Gumbel-softmax sample, the hard sampled one-hot of a straight-through estimator, mu + sigma * eps), "
    "so the gap between the two is what scoring on codes other than the trained ones costs."
)

CONFIDENCE = 0.95
#: Family-wise error rate of the Holm stars and of the equivalence verdicts.
ALPHA = 0.05


# --------------------------------------------------------------------------------------------
# Statistics


def as_float(value) -> float:
    """A per-seed number as float; None (how results.json stores nan and inf) -> nan."""
    return math.nan if value is None else float(value)


def t_quantile(q: float, dof: int) -> float:
    """Student t quantile ``t_{q, dof}`` (scipy.stats.t.ppf)."""
    return float(stats.t.ppf(q, dof))


def summarize(values: Sequence[float], ok: Sequence[bool] | None = None, confidence: float = CONFIDENCE) -> dict:
    """Mean, sample std and the Student t interval of the mean over the usable values.

    A value is used when its run is ``ok`` (did not diverge) and the value is finite. With ``n``
    used values: ``mean = sum x / n``, ``std = sqrt(sum (x - mean)^2 / (n - 1))`` and
    ``ci = mean -+ t_{(1 + confidence) / 2, n - 1} * std / sqrt(n)``. One value gives std and
    interval ``nan`` (no spread to estimate), none gives ``nan`` everywhere.

    Returns:
      dict with ``mean, std, ci_low, ci_high, half_width, n, n_ok, n_total``; ``n_ok`` counts
      the runs that did not diverge, ``n`` the values actually averaged (ok and finite).
    """
    x = np.array([as_float(v) for v in values], dtype=np.float64)
    ok_mask = np.ones(x.shape, bool) if ok is None else np.asarray(ok, bool)
    if ok_mask.shape != x.shape:
        raise ValueError(f"summarize: {x.shape[0]} values but {ok_mask.shape[0]} ok flags")
    used = x[ok_mask & np.isfinite(x)]
    n = int(used.size)
    out = {
        "mean": math.nan,
        "std": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "half_width": math.nan,
        "n": n,
        "n_ok": int(ok_mask.sum()),
        "n_total": int(x.size),
    }
    if n == 0:
        return out
    mean = float(used.mean())
    out["mean"] = mean
    if n >= 2:
        std = float(used.std(ddof=1))
        half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
        out.update(std=std, half_width=half, ci_low=mean - half, ci_high=mean + half)
    return out


def paired_difference(
    values: Sequence[float],
    seeds: Sequence[int],
    ok: Sequence[bool],
    baseline_values: Sequence[float],
    baseline_seeds: Sequence[int],
    baseline_ok: Sequence[bool],
    confidence: float = CONFIDENCE,
) -> dict:
    """Mean difference ``method - baseline`` over common seeds, with its Student t interval.

    Pairs are the seeds present in both lists where both runs are ok and both values finite;
    ``d_i = x_i - b_i`` and the interval is :func:`summarize` of the ``d_i``. ``p`` is the
    two-sided paired t-test of mean difference 0 (``scipy.stats.ttest_rel`` on the pairs,
    ``t = mean(d) / (std(d) / sqrt(n))`` with ``n - 1`` degrees of freedom), uncorrected: the
    interval excludes 0 exactly when ``p < 1 - confidence``. ``p`` is nan with fewer than two
    pairs or when every ``d_i`` is the same (no spread to test against).

    Returns:
      dict with ``mean, std, ci_low, ci_high, half_width, n`` (number of pairs), ``p``,
      ``seeds`` (the paired seeds) and ``diffs`` (the ``d_i``, in seed order of ``seeds``).
    """
    here = {int(s): (as_float(v), bool(o)) for s, v, o in zip(seeds, values, ok)}
    there = {int(s): (as_float(v), bool(o)) for s, v, o in zip(baseline_seeds, baseline_values, baseline_ok)}
    paired = [
        s
        for s in here
        if s in there and here[s][1] and there[s][1] and math.isfinite(here[s][0]) and math.isfinite(there[s][0])
    ]
    diffs = [here[s][0] - there[s][0] for s in paired]
    summary = summarize(diffs, confidence=confidence)
    p = math.nan
    if len(paired) >= 2 and np.ptp(diffs) > 0:
        p = float(stats.ttest_rel([here[s][0] for s in paired], [there[s][0] for s in paired]).pvalue)
    return {k: summary[k] for k in ("mean", "std", "ci_low", "ci_high", "half_width", "n")} | {
        "p": p,
        "seeds": paired,
        "diffs": diffs,
    }


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (Holm 1979): the step-down correction for a family of m tests.

    With the finite p-values sorted, ``p_(1) <= ... <= p_(m)``, the adjusted value is
    ``p~_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))``; rejecting every hypothesis with
    ``p~ <= alpha`` is Holm's procedure (reject ``H_(1), H_(2), ...`` while
    ``p_(j) <= alpha / (m - j + 1)``, stop at the first that is not), which keeps the
    family-wise error rate at ``alpha`` under any dependence between the tests. nan entries
    (tests that could not be run) are not counted in m and stay nan.
    """
    p = np.asarray(p_values, np.float64).reshape(-1)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def tost_paired(diffs: Sequence[float], margin: float) -> float:
    """p-value of TOST (Schuirmann 1987) for ``|mean difference| < margin`` from paired differences.

    Two one-sided t-tests on the ``n`` differences ``d_i`` with ``se = std(d) / sqrt(n)`` and
    ``n - 1`` degrees of freedom: ``H0-: mu <= -margin`` (``p- = P(T >= (mean + margin) / se)``)
    and ``H0+: mu >= margin`` (``p+ = P(T <= (mean - margin) / se)``). Equivalence is shown at
    level alpha when both are rejected, i.e. when ``max(p-, p+) <= alpha``; equivalently the
    ``1 - 2 alpha`` t interval of the mean lies inside ``(-margin, margin)``. nan with fewer than
    two differences, no spread, or no positive finite margin.
    """
    d = np.asarray(diffs, np.float64)
    if d.size < 2 or not np.ptp(d) > 0 or not (math.isfinite(margin) and margin > 0):
        return math.nan
    se = float(d.std(ddof=1)) / math.sqrt(d.size)
    mean, dof = float(d.mean()), d.size - 1
    return float(max(stats.t.sf((mean + margin) / se, dof), stats.t.cdf((mean - margin) / se, dof)))


def parse_contrast(entry: str) -> tuple[str, str]:
    """``"rae-l2:fd_ex_post"`` -> ``("rae-l2", "fd_ex_post")``: a row label and a metric key.

    The spelling of a primary contrast in an experiment file; row labels never contain ``:``.
    """
    row, _, metric = str(entry).rpartition(":")
    return row, metric


def equivalence_margin(spec, baseline_mean: float) -> float:
    """An equivalence margin as a number: ``1.0`` is absolute (metric units), ``"5%"`` is that
    fraction of ``|baseline mean|`` (the baseline row's mean over its usable seeds)."""
    if isinstance(spec, str) and spec.strip().endswith("%"):
        return float(spec.strip()[:-1]) / 100.0 * abs(baseline_mean)
    return float(spec)


def method_metric_keys(method_results: Mapping) -> list[str]:
    """The metrics a method has, in table order (discrete-only ones only for discrete codes)."""
    return [k for k in METRICS if k in method_results["metrics"]]


def evaluation_sd(method_results: Mapping, key: str) -> float | None:
    """The within-model SD of a metric over the evaluation's refits, pooled over seeds; None without refits.

    :func:`jaxrae.evaluate.evaluate` fits the ex-post density and draws samples R times per
    trained model and records, per seed s, the SD of the R values ``sd_s`` (``notes["refits"]``).
    Pooled over the seeds whose run is ok and whose value and SD are finite:
    ``sqrt(mean_s sd_s^2)``, the spread that refitting and redrawing alone cause for one model.
    Rows recorded without refits (older results, or R = 1) give None.
    """
    refits = (method_results.get("notes") or {}).get("refits") or {}
    sds = (refits.get("sd") or {}).get(key)
    if sds is None or (refits.get("n") or 1) < 2:
        return None
    values = method_results["metrics"][key]
    used = [
        as_float(sd) ** 2
        for sd, v, ok in zip(sds, values, method_results["ok"])
        if ok and math.isfinite(as_float(v)) and math.isfinite(as_float(sd))
    ]
    return math.sqrt(sum(used) / len(used)) if used else math.nan


def summary_table(results: Mapping) -> list[dict]:
    """One row per (method, metric): the summary across seeds, the paired difference and its tests.

    ``results`` is the ``results.json`` structure: ``results["methods"][name]`` holds ``seeds``,
    ``ok`` and ``metrics[key]`` (one value per seed); ``results["baseline"]`` names the baseline
    (or is None). Rows of the baseline itself carry no difference. ``std`` is the spread between
    seeds of the per-seed values (each already the mean over the evaluation's refits), ``eval_sd``
    the spread of one model's value over refits (:func:`evaluation_sd`; None for a metric that
    does not depend on the ex-post fit or on sample draws, or a row recorded without refits). ``name`` is the row label of
    :mod:`jaxrae.compare`: a preset's name, or a variant's label such as ``reinmax-tau0.5``.

    Every (row, metric) difference against the baseline is a *contrast* with its paired t-test
    ``p`` (:func:`paired_difference`). Contrasts fall in two Holm families (:func:`holm`): the
    primary contrasts the experiment declared before the run (``results["experiment"]["primary"]``,
    ``"row:metric"`` entries), and every other contrast of the table. ``p_holm`` is the adjusted p
    within the row's ``family`` and ``star`` is ``p_holm <= ALPHA``. Where the experiment states an
    equivalence margin for the metric (``results["experiment"]["equivalence"]``, see
    :func:`equivalence_margin`), ``p_tost`` is :func:`tost_paired` at that margin, ``p_tost_holm``
    its Holm adjustment over the family's TOST tests, and ``equivalent`` is ``p_tost_holm <= ALPHA``;
    without a margin these are None (no equivalence verdict).
    """
    methods = results["methods"]
    baseline = results.get("baseline")
    base = methods.get(baseline) if baseline else None
    declared = results.get("experiment") or {}
    primary = {parse_contrast(e) for e in declared.get("primary") or ()}
    margins = declared.get("equivalence") or {}
    rows = []
    for name, m in methods.items():
        for key in method_metric_keys(m):
            row = {"method": name, "metric": key, **summarize(m["metrics"][key], m["ok"])}
            row["eval_sd"] = evaluation_sd(m, key)
            row["baseline"] = baseline
            diff = None
            # Code log-likelihoods are densities (nats) for continuous codes and log-probabilities
            # for discrete ones: a difference between the two kinds would mean nothing.
            comparable = key != "code_loglik" or (
                base is not None and bool(m.get("discrete")) == bool(base.get("discrete"))
            )
            if base is not None and name != baseline and key in base["metrics"] and comparable:
                diff = paired_difference(
                    m["metrics"][key], m["seeds"], m["ok"], base["metrics"][key], base["seeds"], base["ok"]
                )
            for field in ("mean", "ci_low", "ci_high", "n", "p"):
                row[f"diff_{field}"] = None if diff is None else diff[field]
            row.update(
                family=None, p_holm=None, star=False, eq_margin=None, p_tost=None, p_tost_holm=None, equivalent=None
            )
            if diff is not None:
                row["family"] = "primary" if (name, key) in primary else "table"
                if key in margins:
                    row["eq_margin"] = equivalence_margin(
                        margins[key], summarize(base["metrics"][key], base["ok"])["mean"]
                    )
                    row["p_tost"] = tost_paired(diff["diffs"], row["eq_margin"])
            rows.append(row)
    for family in ("primary", "table"):
        members = [r for r in rows if r["family"] == family]
        for r, adjusted in zip(members, holm([r["diff_p"] for r in members])):
            r["p_holm"] = float(adjusted)
            r["star"] = bool(adjusted <= ALPHA)
        tested = [r for r in members if r["p_tost"] is not None]
        for r, adjusted in zip(tested, holm([r["p_tost"] for r in tested])):
            r["p_tost_holm"] = float(adjusted)
            r["equivalent"] = bool(adjusted <= ALPHA)
    return rows


# --------------------------------------------------------------------------------------------
# Text tables


def fmt(x, digits: int = 3) -> str:
    """A number with ``digits`` significant digits; ``-`` for missing, ``nan`` kept visible."""
    if x is None:
        return "-"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x != 0 and (abs(x) >= 10 ** (digits + 2) or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"


def _mean_pm(row: Mapping | None) -> str:
    if row is None:
        return "-"
    if math.isnan(row["mean"]):
        return "nan"
    if math.isnan(row["half_width"]):
        return fmt(row["mean"])
    return f"{fmt(row['mean'])} ± {fmt(row['half_width'], 2)}"


def fmt_p(p) -> str:
    """A p-value with two significant digits, ``<0.001`` below that (table.csv has every digit);
    ``-`` when there is no test, ``n/a`` when it could not run."""
    if p is None:
        return "-"
    p = float(p)
    return "n/a" if math.isnan(p) else "<0.001" if p < 0.001 else fmt(p, 2)


def _marks(row: Mapping) -> str:
    """``*``: survives Holm at ALPHA in its family; ``≈``: equivalent by TOST at the stated margin."""
    return ("*" if row.get("star") else "") + ("≈" if row.get("equivalent") else "")


def _diff_cell(row: Mapping | None, interval: bool = True) -> str:
    if row is None or row.get("diff_mean") is None:
        return "-"
    if math.isnan(row["diff_mean"]):
        return "nan"
    if not interval:
        return f"{fmt(row['diff_mean'])}{_marks(row)}"
    lo, hi = row["diff_ci_low"], row["diff_ci_high"]
    cell = f"{fmt(row['diff_mean'])} [{fmt(lo, 2)}, {fmt(hi, 2)}]{_marks(row)} p {fmt_p(row.get('diff_p'))}/{fmt_p(row.get('p_holm'))}"
    return cell + (f" TOST {fmt_p(row['p_tost_holm'])}" if row.get("p_tost") is not None else "")


def metric_header(key: str, shown: Sequence[str]) -> str:
    """A metric's column header; a deterministic-code metric whose trained-code twin is among the
    ``shown`` columns says which code it decodes (:data:`DETERMINISTIC_CODE_HEADERS`)."""
    if key in DETERMINISTIC_CODE_HEADERS and any(TRAINED_CODE_TWINS.get(k) == key for k in shown):
        return DETERMINISTIC_CODE_HEADERS[key]
    return METRICS[key][0]


def _grid(results: Mapping, rows: list[dict], cell, with_ok: bool = True) -> tuple[list[str], list[list[str]]]:
    """Methods x metrics cells, plus the n_ok/n_total column and, where recorded, the converged one."""
    keys = [k for k in METRICS if any(r["metric"] == k for r in rows)]
    by = {(r["method"], r["metric"]): r for r in rows}
    judged = with_ok and any(m.get("convergence") for m in results["methods"].values())
    header = (
        ["method"]
        + (["ok"] if with_ok else [])
        + (["converged"] if judged else [])
        + [metric_header(k, keys) for k in keys]
    )
    body = []
    for name, m in results["methods"].items():
        n_ok, n_total = int(np.sum(m["ok"])), len(m["ok"])
        status = [convergence_cell(m.get("convergence"))] if judged else []
        body.append(
            [name] + ([f"{n_ok}/{n_total}"] if with_ok else []) + status + [cell(by.get((name, k))) for k in keys]
        )
    return header, body


# --------------------------------------------------------------------------------------------
# Convergence of the training loss (jaxrae.evaluate.loss_convergence, recorded per row by compare)


def convergence_cell(convergence: Mapping | None) -> str:
    """``5/5``; ``2/5 !`` when some seed did not converge; ``-`` for a row judged by no criterion."""
    if not convergence:
        return "-"
    flags = convergence["converged"]
    return f"{sum(flags)}/{len(flags)}" + ("" if all(flags) else " !")


def convergence_text(convergence: Mapping | None) -> str:
    """One row's verdict in words: ``converged 5/5``, or ``NOT converged 2/5 (3 seeds: loss still
    falling 2.5%-3.6% over the last 10% of steps)``, naming diverged, rising and too-short seeds."""
    if not convergence:
        return "convergence not recorded"
    flags, status, change = convergence["converged"], convergence["status"], convergence["change"]
    verdict = f"{sum(flags)}/{len(flags)}"
    if all(flags):
        return f"converged {verdict}"
    window = (convergence.get("settings") or {}).get("window")
    over = f" over the last {_percent(window)} of steps" if window else ""
    parts = []
    for kind, words in (("falling", "loss still falling"), ("rising", "loss rising")):
        moved = sorted(abs(c) for c, s in zip(change, status) if s == kind)
        if moved:
            size = f"{moved[0]:.1%}" if len(moved) == 1 else f"{moved[0]:.1%}-{moved[-1]:.1%}"
            parts.append(f"{_seeds(len(moved))}: {words} {size}{over}")
    for kind, words in (("diverged", "diverged"), ("too short", "too few steps to judge")):
        n = status.count(kind)
        if n:
            parts.append(f"{_seeds(n)}: {words}")
    return f"NOT converged {verdict} ({'; '.join(parts)})"


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g}%"


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def convergence_caption(results: Mapping) -> list[str]:
    """The criterion behind the ``converged`` column, stated once (nothing for results without it)."""
    judged = [m["convergence"] for m in results["methods"].values() if m.get("convergence")]
    if not judged:
        return []
    settings = {**((results.get("experiment") or {}).get("convergence") or judged[0].get("settings") or {})}
    window, tol, z = settings.get("window"), settings.get("tol"), settings.get("z")
    if None in (window, tol, z):
        return ["converged = seeds whose training loss had settled (criterion not recorded in results.json)."]
    sources = sorted({c.get("source") or "per-step losses" for c in judged})
    return [
        f"converged = seeds whose training loss had settled: the mean loss of the last {_percent(window / 2)} of the "
        f"steps differs from the mean of the {_percent(window / 2)} before by at most {_percent(tol)}, up to "
        f"{z:g} standard errors of minibatch noise (jaxrae.evaluate.loss_convergence; from {', '.join(sources)}); "
        "! = some seed did not converge, a diverged run never does."
    ]


def _markdown(header: list[str], body: list[list[str]], align_right_from: int = 1) -> str:
    sep = ["---" if i < align_right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _plain(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in body])


def _provenance(results: Mapping) -> list[str]:
    """What produced a table: the command, its time, the code and package versions, the machine."""
    env = results.get("environment", {})
    versions = env.get("versions", {})
    commit = env.get("git_commit")
    times = results.get("times", {})
    run_time = sum(
        sum((m.get("times") or {}).get(k, 0.0) for k in ("train_s", "compile_s", "eval_s"))
        for m in results["methods"].values()
    )
    lines = [
        f"command: `{results['command']}`"
        if results.get("command")
        else "command: not recorded in results.json (written through the Python API, or by a jaxrae that did not record it)"
    ]
    if times:
        lines.append(
            f"time: {run_time / 60:.1f} min training + compiling + evaluating, summed over rows; "
            f"this invocation {times.get('this_invocation_s', float('nan')) / 60:.1f} min wall"
        )
    if versions:
        lines.append(
            "versions: "
            + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
            + (f", python {env['python']}" if env.get("python") else "")
            + (f"; git {commit[:10]}" if commit else "")
        )
    if env:
        devices = env.get("devices") or []
        cpus = f", {env['cpu_count']} CPU cores" if env.get("cpu_count") else ""
        lines.append(
            f"machine: {env.get('backend')} backend, {len(devices)} x {devices[0] if devices else '?'}{cpus}, "
            f"{env.get('process_count', 1)} process(es), {env.get('platform')}; finished {env.get('time_utc')}"
        )
    lines.append(mode_line(results))
    return lines


def mode_line(results: Mapping) -> str:
    """How the rows' weights were set: "mode: fixed weights", or "mode: tuned on validation (...)"
    with the criterion, the grids of multipliers, the tuning budget and the validation split."""
    tune = results.get("tuning")
    if not tune:
        return "mode: fixed weights (each row's own beta and lambda; no tuning)"
    grids = "; ".join(f"{w} x {tune[w]}" for w in ("beta", "lam") if tune.get(w))
    steps = f"{tune['steps']} steps" if tune.get("steps") else "each row's steps"
    return (
        f"mode: tuned on validation (criterion {tune['criterion']}, {tune.get('better', 'lower')} better; "
        f"grid of multipliers of each row's own value: {grids}; {steps}, seeds {tune.get('seeds')}; "
        f"validation {tune.get('n_val')} images ({tune.get('validation')} of train), never test)"
    )


def epochs(results: Mapping) -> str:
    """Passes over the training set, ``steps * batch_size / n_train``, from each row's config.

    One number when every row trained as long (``69.5 (1000 steps x batch 100 / 1438 training
    images)``), else the range over rows; ``not recorded`` when results.json lacks the sizes.
    """
    n_train = results.get("n_train")
    sizes = {
        (m["config"]["steps"], m["config"]["batch_size"])
        for m in results["methods"].values()
        if "steps" in (m.get("config") or {}) and "batch_size" in (m.get("config") or {})
    }
    if not n_train or not sizes:
        return "not recorded"
    values = sorted(steps * batch / n_train for steps, batch in sizes)
    if len(sizes) == 1:
        ((steps, batch),) = sizes
        return f"{values[0]:.3g} ({steps} steps x batch {batch} / {n_train} training images)"
    return f"{values[0]:.3g} to {values[-1]:.3g} (steps x batch / {n_train} training images, per row's config in results.json)"


def _contrast_caption(results: Mapping, rows: list[dict]) -> list[str]:
    """How to read the differences: pairing, p, the Holm families, the equivalence margins."""
    baseline = results.get("baseline")
    counts = {
        f: sum(1 for r in rows if r["family"] == f and r["p_holm"] is not None and not math.isnan(r["p_holm"]))
        for f in ("primary", "table")
    }
    if not baseline or not any(r["diff_mean"] is not None for r in rows):
        return []
    primary = f"; the {counts['primary']} primary contrasts are a family of their own" if counts["primary"] else ""
    lines = [
        (
            f"differences vs `{baseline}`: paired by seed, mean [95% t interval], p u/h = paired t-test "
            "(scipy.stats.ttest_rel, seeds both rows have ok) uncorrected / Holm-adjusted; "
            f"* = Holm-adjusted p <= {ALPHA:g}, Holm's step-down correction over the family of the "
            f"{counts['table']} (row, metric) contrasts against the baseline in this table{primary} "
            "(contrasts with fewer than 2 pairs or no spread have p n/a and are not counted)."
        )
    ]
    margins = (results.get("experiment") or {}).get("equivalence") or {}
    base = results["methods"].get(baseline, {})
    if margins:
        stated = []
        for key, spec in margins.items():
            if key in base.get("metrics", {}):
                value = equivalence_margin(spec, summarize(base["metrics"][key], base["ok"])["mean"])
                stated.append(
                    f"{key} ±{fmt(value)}" + (f" ({spec} of the baseline mean)" if isinstance(spec, str) else "")
                )
        lines.append(
            f"≈ = equivalent: TOST (two one-sided paired t-tests, Schuirmann 1987) rejects a difference of at "
            f"least the margin, Holm-adjusted TOST p <= {ALPHA:g} in the same family (TOST = that p); margins "
            f"from the experiment file: {', '.join(stated) or 'none for these metrics'}. A contrast with "
            "neither * nor ≈ is inconclusive."
        )
    else:
        lines.append(
            "no equivalence margins in the experiment file, so no contrast is declared equivalent: "
            "one without * is inconclusive, not evidence of no difference."
        )
    return lines


def _caption(results: Mapping) -> list[str]:
    fnet = results.get("feature_network", {})
    n_seeds = max((len(m["ok"]) for m in results["methods"].values()), default=0)
    lines = [
        f"data: {results.get('data')}  |  seeds per method: {n_seeds}  |  epochs: {epochs(results)}  |  "
        f"n_eval: {results.get('eval', {}).get('n_eval')}",
        f"FD = Frechet distance in classifier features (jaxrae's feature network for this data set, "
        f"{fnet.get('accuracy_name', 'test accuracy')} {fnet.get('test_accuracy', float('nan')):.1%}); "
        "not an Inception FID.",
        "cells: mean ± half-width of the 95% Student t interval across seeds; ok = n_ok/n_total "
        "(diverged runs are recorded but excluded from every mean).",
    ]
    if any(k in m["metrics"] for m in results["methods"].values() for k in TRAINED_CODE_TWINS):
        lines.append(TRAINED_CODES_NOTE)
    lines += weights_caption(results)
    lines += convergence_caption(results)
    lines += _likelihood_caption(results.get("eval", {}).get("likelihood"))
    return lines


def weights_caption(results: Mapping) -> list[str]:
    """Every row's regularizer weights as trained, beta (latent) / lambda (decoder), with ``^`` on a
    non-zero weight scaled from the image size it is stated for (:meth:`jaxrae.config.TrainConfig.for_images`);
    nothing for a results.json that does not record them."""
    rows = {label: m["weights"] for label, m in results["methods"].items() if m.get("weights")}
    if not rows:
        return []
    pixels = sorted({w["pixels"] for w in rows.values()})
    shape = results.get("image_shape")
    size = f"{pixels[0]} values per image" + (f" ({'x'.join(map(str, shape))})" if shape else "")
    stated = sorted({p for w in rows.values() for f, p in (w.get("stated_pixels") or {}).items() if p and w[f]})
    cells = []
    for label, w in rows.items():
        marks = {f: "^" if (w.get("stated_pixels") or {}).get(f) and w[f] else "" for f in ("beta", "lam")}
        cells.append(f"{label} {fmt(w['beta'])}{marks['beta']}/{fmt(w['lam'])}{marks['lam']}")
    factor = f"{pixels[0]}/{stated[0]}" if len(stated) == 1 else "P/P_stated"
    scaled = (
        f"; ^ = a weight stated for images of {' or '.join(map(str, stated))} pixels, scaled by {factor} "
        "(w(P) = w_stated * P / P_stated, jaxrae.methods)"
        if stated
        else ""
    )
    return [f"weights beta/lambda as trained, on {size}{scaled}: {', '.join(cells)}."]


def _likelihood_caption(settings: Mapping | None) -> list[str]:
    """How the test likelihoods were computed (k, and the observation variance of Gaussian decoders)."""
    if not settings:
        return []
    k = settings["k"]
    lines = [
        (
            f"test likelihoods (lower is better): -ELBO ({settings.get('elbo_samples')} samples) and NLL IWAE-{k} for VAEs, "
            f"NLL ex-post IS-{k} (importance sampling through the ex-post density) for deterministic rows; "
            "nats per image and bits per dimension."
        )
    ]
    variances = {
        label: row["observation_variance"]
        for label, row in settings.get("rows", {}).items()
        if row.get("likelihood") == "gaussian" and row.get("observation_variance")
    }
    if variances:
        spelled = "; ".join(f"{label} " + ", ".join(fmt(v) for v in values) for label, values in variances.items())
        lines.append(
            "Gaussian decoders: likelihoods at the observation variance sigma^2 fitted by maximum likelihood on "
            f"each seed's training reconstructions (training used sigma^2 = 1/2), per seed: {spelled}."
        )
    bernoulli = [label for label, row in settings.get("rows", {}).items() if row.get("likelihood") == "bernoulli"]
    if bernoulli:
        lines.append(f"Bernoulli decoders (logits; probabilities of binary pixels): {', '.join(bernoulli)}.")
    return lines


def result_warnings(results: Mapping) -> list[str]:
    """Every warning about a results structure, one line each ([] when there is none).

    First the feature network's (:func:`jaxrae.features.majority_warning` of its test and
    majority-rule accuracies: its FDs mean little when it is no better than the majority rule),
    then each row's ``notes["warnings"]`` (:func:`jaxrae.evaluate.ex_post_warnings`: codes at the
    covariance floor, fewer distinct codes than mixture components) and the rows some of whose seeds
    did not converge (:func:`convergence_text`), prefixed by the row label.
    Computed from the per-seed record alone, so an older results.json gets them too.
    """
    fnet = results.get("feature_network") or {}
    found = []
    network = majority_warning(
        as_float(fnet.get("test_accuracy")),
        as_float(fnet.get("majority_accuracy")),
        fnet.get("accuracy_name") or "test accuracy",
    )
    if network:
        found.append(network)
    for label, m in results["methods"].items():
        found += [f"{label}: {message}" for message in (m.get("notes") or {}).get("warnings") or []]
        if m.get("convergence") and not all(m["convergence"]["converged"]):
            found.append(f"{label}: {convergence_text(m['convergence'])}")
    return found


def row_settings(results: Mapping) -> list[list[str]]:
    """[label, preset, settings] for every row that is not a preset at [config] alone.

    Those are the variants and the methods with ``[overrides.<method>]``; ``settings`` lists
    the fields the row's own table set (``estimator=reinmax, tau=0.5``). A results.json whose
    rows carry no ``preset`` gives no lines.
    """
    lines = []
    for name, m in results["methods"].items():
        preset, fields = m.get("preset", name), m.get("overrides") or {}
        if preset != name or fields:
            lines.append([name, preset, ", ".join(f"{k}={v}" for k, v in fields.items()) or "-"])
    return lines


def _code_shape(config: TrainConfig) -> str:
    """A discrete code's shape in words: N variables x K classes, N VQ vectors, N FSQ groups."""
    spec = grid.code_spec(config)
    encoder = config.method_spec.encoder
    if encoder == "vq":
        return f"{spec.n_vars} vectors from a {spec.n_classes}-entry codebook"
    if encoder == "fsq":
        return f"{spec.n_vars} groups of levels {'-'.join(map(str, config.fsq_levels))} ({spec.n_classes} values each)"
    return f"{spec.n_vars} variables x {spec.n_classes} classes"


def code_capacity(results: Mapping) -> list[list[str]]:
    """[row, code, bits per code] for every discrete row: the capacity ``N log2 K`` of its code
    (:func:`jaxrae.grid.code_bits`), read from the row's config in results.json.

    Codes of different capacity are not like for like (FSQ at 8-5-5-5 has 3x the bits of 16 x 10
    categorical codes), so every discrete table states it. A row whose config no longer builds
    (a preset that was renamed, say) gives ``not recorded``; the network does not enter the code,
    so a row trained with your own modules is read as if its architecture were built in.
    """
    lines = []
    for name, m in results["methods"].items():
        if not m.get("discrete") or not isinstance(m.get("config"), Mapping):
            continue
        values = dict(m["config"])
        if isinstance(values.get("arch"), Mapping):
            values["arch"] = "mlp"
        try:
            config = TrainConfig.from_dict(values)
        except (ConfigError, TypeError):
            lines.append([name, "not recorded", "-"])
            continue
        lines.append([name, _code_shape(config), fmt(grid.code_bits(config))])
    return lines


#: Under the code-capacity table of table.md.
CAPACITY_CAPTION = (
    "bits per code = N log2 K, log2 of the number of distinct codes (jaxrae.relax.code_capacity_bits): "
    "the most a code can carry, reached only when every code is used equally often."
)


def render_summary(results: Mapping, rows: list[dict] | None = None) -> str:
    """The one-screen summary printed at the end of ``jaxrae compare``."""
    rows = summary_table(results) if rows is None else rows
    out = _caption(results) + [""]
    out.append(_plain(*_grid(results, rows, _mean_pm)))
    capacity = code_capacity(results)
    if capacity:
        bits = {line[2] for line in capacity}
        spelled = ", ".join(f"{row} {b}" for row, _, b in capacity) if len(bits) > 1 else f"{bits.pop()} in every row"
        out += ["", f"bits per code (discrete rows): {spelled}"]
    warned = result_warnings(results)
    if warned:
        out += ["", "WARNINGS (these numbers may mean little):"] + [f"  ! {w}" for w in warned]
    baseline = results.get("baseline")
    if baseline and len(results["methods"]) > 1:
        out += [
            "",
            (
                f"paired difference vs {baseline} over common seeds: mean, * = survives Holm at {ALPHA:g} within "
                "the table's contrasts, ≈ = equivalent by TOST at the stated margin (intervals and p in table.md)"
            ),
        ]
        header, body = _grid(results, rows, lambda r: _diff_cell(r, interval=False), with_ok=False)
        body = [r for r in body if r[0] != baseline]
        out.append(_plain(header, body))
    return "\n".join(out)


#: The heading of table.md's hand-written notes, which :func:`table_notes` reads back on a re-render.
NOTES_HEADING = "## Notes (written by hand; `jaxrae report` keeps them when it re-renders this file)"


def _primary_section(results: Mapping, rows: list[dict]) -> list[str]:
    """The declared primary contrasts, first and in their declared order, with their own Holm family."""
    declared = [parse_contrast(e) for e in (results.get("experiment") or {}).get("primary") or ()]
    if not declared:
        return []
    by = {(r["method"], r["metric"]): r for r in rows}
    header = [
        "contrast",
        "baseline mean",
        "difference [95% interval]",
        "pairs",
        "p",
        "p Holm",
        "TOST p Holm (margin)",
        "verdict",
    ]
    body = []
    for name, key in declared:
        r = by.get((name, key))
        if r is None or r["diff_mean"] is None:
            body.append([f"{name}:{key}", "-", "not comparable or not measured", "-", "-", "-", "-", "-"])
            continue
        base = by.get((results["baseline"], key))
        verdict = (
            "differs (*)"
            if r["star"]
            else f"equivalent within ±{fmt(r['eq_margin'])} (≈)"
            if r["equivalent"]
            else "inconclusive"
        )
        tost = "-" if r["p_tost"] is None else f"{fmt_p(r['p_tost_holm'])} (±{fmt(r['eq_margin'])})"
        body.append(
            [
                f"{name}:{key}",
                fmt(base["mean"]) if base else "-",
                _diff_interval(r),
                str(r["diff_n"]),
                fmt_p(r["diff_p"]),
                fmt_p(r["p_holm"]),
                tost,
                verdict,
            ]
        )
    n = sum(1 for r in rows if r["family"] == "primary" and r["p_holm"] is not None and not math.isnan(r["p_holm"]))
    heading = (
        f"## Primary contrasts vs baseline `{results['baseline']}` (declared in the experiment file before the run; "
        f"Holm over these {n})"
    )
    return [heading, "", _markdown(header, body), ""]


def _diff_interval(row: Mapping) -> str:
    if row.get("diff_mean") is None:
        return "-"
    if math.isnan(row["diff_mean"]):
        return "nan"
    return f"{fmt(row['diff_mean'])} [{fmt(row['diff_ci_low'], 2)}, {fmt(row['diff_ci_high'], 2)}]{_marks(row)}"


#: Said once above the per-metric tables of a result with evaluation refits.
EVAL_SD_NOTE = (
    "std is the spread between seeds of the per-seed values, each the mean over R independent ex-post fits "
    "and sample draws; eval SD is the spread of one model's value over those R refits (pooled over seeds), "
    "the evaluation noise alone: it adds about eval SD / sqrt(R) to a per-seed value, so a std not well above "
    "that is evaluation noise rather than a difference between trained models."
)


def render_markdown(
    results: Mapping,
    rows: list[dict] | None = None,
    *,
    title: str = "jaxrae compare",
    notes: Sequence[str] = (),
    rendered_by: str | None = None,
) -> str:
    """table.md: provenance, caption, notes, primary contrasts, the summary and paired grids, every number per metric.

    ``title`` is the first heading; ``notes`` are hand-written lines kept verbatim under
    :data:`NOTES_HEADING` (see :func:`table_notes`); ``rendered_by`` (the ``jaxrae report``
    command line) adds a provenance line saying the file was re-rendered from results.json.
    """
    rows = summary_table(results) if rows is None else rows
    baseline = results.get("baseline")
    provenance = _provenance(results)
    if rendered_by:
        provenance.append(f"re-rendered from results.json alone by `{rendered_by}`")
    parts = [f"# {title}", ""] + [f"- {line}" for line in provenance] + [""]
    parts += [f"- {line}" for line in _caption(results) + _contrast_caption(results, rows)] + [""]
    if notes:
        parts += [NOTES_HEADING, "", *notes, ""]
    parts += _primary_section(results, rows)
    settings = row_settings(results)
    if settings:  # what a label such as `reinmax-tau0.5` stands for (full configs: results.json)
        parts += [
            "## Rows: preset and own settings (on top of the shared config)",
            "",
            _markdown(["row", "preset", "settings"], settings, align_right_from=3),
            "",
        ]
    capacity = code_capacity(results)
    if capacity:
        shared = {tuple(line[1:]) for line in capacity}
        table = (
            [f"every discrete row: {capacity[0][1]}, {capacity[0][2]} bits per code."]
            if len(shared) == 1
            else [_markdown(["row", "code", "bits per code"], capacity, align_right_from=2)]
        )
        parts += ["## Code capacity (discrete rows)", "", *table, "", CAPACITY_CAPTION, ""]
    parts += ["## Summary (mean ± 95% interval half-width)", "", _markdown(*_grid(results, rows, _mean_pm)), ""]
    warned = result_warnings(results)
    if warned:
        parts += ["## Warnings (these numbers may mean little)", ""] + [f"- {w}" for w in warned] + [""]
    if baseline and len(results["methods"]) > 1:
        header, body = _grid(results, rows, _diff_cell, with_ok=False)
        parts += [
            f"## Paired difference vs baseline `{baseline}` (mean [95% interval], * Holm, ≈ TOST; p uncorrected/Holm)",
            "",
            _markdown(header, [r for r in body if r[0] != baseline]),
            "",
        ]
    parts += ["## Per metric", ""]
    if any(r.get("eval_sd") is not None for r in rows):
        parts += [EVAL_SD_NOTE, ""]
    for key, (_short, long, better) in METRICS.items():
        metric_rows = [r for r in rows if r["metric"] == key]
        if not metric_rows:
            continue
        parts += [f"### {long} ({better} is better)", ""]
        with_tost = any(r["p_tost"] is not None for r in metric_rows)
        with_eval_sd = any(r.get("eval_sd") is not None for r in metric_rows)
        header = [
            "method",
            "n/ok/total",
            "mean",
            "std",
            *(["eval SD"] if with_eval_sd else []),
            "95% interval",
            f"diff vs {baseline}" if baseline else "diff",
            "pairs",
            "p",
            "p Holm",
        ] + (["TOST p", "TOST p Holm"] if with_tost else [])
        body = [
            [
                r["method"],
                f"{r['n']}/{r['n_ok']}/{r['n_total']}",
                fmt(r["mean"]),
                fmt(r["std"]),
                *([fmt(r.get("eval_sd"))] if with_eval_sd else []),
                f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]",
                _diff_interval(r),
                "-" if r["diff_n"] is None else str(r["diff_n"]),
                fmt_p(r["diff_p"]),
                fmt_p(r["p_holm"]),
            ]
            + ([fmt_p(r["p_tost"]), fmt_p(r["p_tost_holm"])] if with_tost else [])
            for r in metric_rows
        ]
        parts += [_markdown(header, body), ""]
    return "\n".join(parts)


def table_notes(markdown: str, results: Mapping) -> tuple[str | None, list[str]]:
    """The title and the hand-written notes of an existing table.md, for :func:`render_markdown`.

    A file with a :data:`NOTES_HEADING` section gives that section's lines verbatim. An older
    file without one gives the lines of its opening bullet list (from the title to the first
    blank line) that the renderer would not write itself for ``results``: hand-written
    provenance such as ``- note: ...`` or ``- wall time: ...``, so re-rendering loses nothing.
    The title is the text of a first line ``# ...`` (None when there is none).
    """
    lines = markdown.splitlines()
    title = lines[0][2:].strip() if lines and lines[0].startswith("# ") else None
    if NOTES_HEADING in lines:
        start = lines.index(NOTES_HEADING) + 1
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
        body = lines[start:end]
    else:
        generated = {f"- {line}" for line in _provenance(results)}
        start = 1 if title is not None else 0
        while start < len(lines) and not lines[start].strip():
            start += 1
        end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
        body = [line for line in lines[start:end] if line not in generated and not line.startswith("## ")]
    while body and not body[0].strip():
        body = body[1:]
    while body and not body[-1].strip():
        body = body[:-1]
    return title, body


CSV_FIELDS = [
    "method",
    "metric",
    "n",
    "n_ok",
    "n_total",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "baseline",
    "diff_mean",
    "diff_ci_low",
    "diff_ci_high",
    "diff_n",
    "diff_p",
    "family",
    "p_holm",
    "star",
    "eq_margin",
    "p_tost",
    "p_tost_holm",
    "equivalent",
]


def rerender(results: Mapping, existing_markdown: str | None = None, rendered_by: str | None = None) -> tuple[str, str]:
    """(table.md, table.csv) from a results.json structure alone, keeping an existing table.md's
    title and hand-written notes (:func:`table_notes`); the per-seed numbers decide everything else.

    The summary rows are recomputed (:func:`summary_table`), never read from ``results["table"]``.
    """
    rows = summary_table(results)
    title, notes = table_notes(existing_markdown, results) if existing_markdown else (None, [])
    markdown = render_markdown(results, rows, title=title or "jaxrae compare", notes=notes, rendered_by=rendered_by)
    return markdown + "\n", render_csv(rows)


def render_csv(rows: Iterable[Mapping]) -> str:
    """table.csv: one row per (method, metric), full precision (repr of the float)."""
    rows = list(rows)
    # eval_sd only where some row has it: results recorded without refits keep their columns
    fields = CSV_FIELDS + (["eval_sd"] if any(r.get("eval_sd") is not None for r in rows) else [])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg backend: no display needed)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    """PNG bytes rendered in memory, then written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def tile(images: np.ndarray, n_cols: int, gap_value: float = 0.12) -> np.ndarray:
    """(n, H, W, C) images in [0, 1] -> one (rows*(H+1)-1, cols*(W+1)-1, C) mosaic, 1-px gaps."""
    images = np.clip(np.nan_to_num(np.asarray(images, np.float32)), 0.0, 1.0)
    n, h, w, c = images.shape
    n_rows = max(1, -(-n // n_cols))
    canvas = np.full((n_rows * (h + 1) - 1, n_cols * (w + 1) - 1, c), gap_value, np.float32)
    for i in range(n):
        r, col = divmod(i, n_cols)
        canvas[r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = images[i]
    return canvas


def _show(ax, mosaic: np.ndarray, title: str | None = None) -> None:
    if mosaic.shape[-1] == 1:
        # One colormap for every panel (ink dark on light), so methods are compared by eye fairly.
        ax.imshow(mosaic[..., 0], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def show_grid(ax, images: np.ndarray, n_cols: int, title: str | None = None) -> np.ndarray:
    """Draw images (n, H, W, C) in [0, 1] on a matplotlib ``ax`` as one :func:`tile` mosaic.

    The panels of this module's figures, for notebooks and scripts: gray images use ``gray_r``
    (ink dark on light) on the fixed range [0, 1], color images are shown as they are, no ticks.
    Returns the mosaic drawn, (rows*(H+1)-1, n_cols*(W+1)-1, C).
    """
    mosaic = tile(images, n_cols)
    _show(ax, mosaic, title)
    return mosaic


def figure_png(fig, dpi: int = 110) -> bytes:
    """A matplotlib figure rendered to PNG bytes (tight bounding box), then closed to free it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def show_figure(fig, dpi: int = 90) -> None:
    """Display a figure in Jupyter/IPython as a PNG (:func:`figure_png`), whatever the backend.

    The PNG is rendered explicitly, so a notebook shows the same image under the inline backend,
    Agg, or a headless kernel executed by nbclient; the figure is closed, so the inline backend
    does not show it a second time.
    """
    from IPython.display import Image, display

    display(Image(data=figure_png(fig, dpi), format="png"))


def plot_reconstructions(path, originals: np.ndarray, reconstructions: Mapping[str, np.ndarray]) -> None:
    """Row 1: test images; one row per method: their reconstructions (representative seed)."""
    plt = _pyplot()
    names = list(reconstructions)
    fig, axes = plt.subplots(
        len(names) + 1,
        1,
        figsize=(0.5 * len(originals) + 1.5, 0.75 * (len(names) + 1) + 0.5),
        squeeze=False,
        layout="constrained",
    )
    _show(axes[0, 0], tile(originals, len(originals)))
    axes[0, 0].set_ylabel("test", rotation=0, ha="right", va="center")
    for ax, name in zip(axes[1:, 0], names):
        _show(ax, tile(reconstructions[name], len(originals)))
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
    fig.suptitle("Reconstructions of test images (first non-diverged seed)", fontsize=10)
    _save(fig, path)


def plot_samples(path, prior: Mapping[str, np.ndarray], ex_post: Mapping[str, np.ndarray], n_cols: int = 8) -> None:
    """One row per method: prior samples (left) and ex-post samples (right), same seed."""
    plt = _pyplot()
    names = list(prior)
    fig, axes = plt.subplots(len(names), 2, figsize=(7, 1.9 * len(names) + 0.4), squeeze=False, layout="constrained")
    for row, name in zip(axes, names):
        _show(row[0], tile(prior[name], n_cols), f"{name}: prior")
        _show(row[1], tile(ex_post[name], n_cols), f"{name}: ex-post density")
    fig.suptitle("Samples: prior (N(0,I) or uniform codes) vs ex-post density fitted on training codes", fontsize=10)
    _save(fig, path)


def plot_interpolations(path, strips: Mapping[str, np.ndarray]) -> None:
    """One panel per method: rows are test pairs, columns go from one endpoint to the other."""
    plt = _pyplot()
    names = list(strips)
    fig, axes = plt.subplots(len(names), 1, figsize=(5, 1.6 * len(names) + 0.4), squeeze=False, layout="constrained")
    for ax, name in zip(axes[:, 0], names):
        pairs, steps = strips[name].shape[:2]
        _show(ax, tile(strips[name].reshape(pairs * steps, *strips[name].shape[2:]), steps), name)
    fig.suptitle("Interpolations between test codes (discrete codes: variables switched one by one)", fontsize=10)
    _save(fig, path)


def plot_metrics(path, results: Mapping, rows: list[dict] | None = None) -> None:
    """One panel per metric: mean with 95% interval error bars, per-seed values as dots (x = diverged)."""
    plt = _pyplot()
    rows = summary_table(results) if rows is None else rows
    keys = [k for k in METRICS if any(r["metric"] == k for r in rows)]
    names = list(results["methods"])
    n_cols = min(4, len(keys)) or 1
    n_rows = max(1, -(-len(keys) // n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.3 * n_cols, 2.8 * n_rows), squeeze=False, layout="constrained")
    by = {(r["method"], r["metric"]): r for r in rows}
    for ax, key in zip(axes.ravel(), keys):
        for i, name in enumerate(names):
            m = results["methods"][name]
            r = by.get((name, key))
            if r is None:
                continue
            vals = np.array([as_float(v) for v in m["metrics"][key]], np.float64)
            ok = np.asarray(m["ok"], bool)
            jitter = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else np.zeros(1)
            ax.scatter(i + jitter[ok], vals[ok], s=8, color="0.6", zorder=1)
            if (~ok).any():
                ax.scatter(i + jitter[~ok], np.nan_to_num(vals[~ok]), s=14, marker="x", color="red", zorder=1)
            if not math.isnan(r["mean"]):
                err = 0.0 if math.isnan(r["half_width"]) else r["half_width"]
                ax.errorbar(i, r["mean"], yerr=err, fmt="o", color="C0", capsize=3, zorder=2)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, fontsize=7)
        ax.set_title(f"{metric_header(key, keys)} ({METRICS[key][2]} better)", fontsize=9)
    for ax in axes.ravel()[len(keys) :]:
        ax.axis("off")
    fig.suptitle("Mean and 95% t-interval across seeds (dots: seeds; red x: diverged, excluded)", fontsize=10)
    _save(fig, path)


def plot_losses(path, curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Training loss per method: median across ok seeds, band from min to max.

    ``curves[name] = (steps, losses (n_runs, n_points), ok (n_runs,))``. Log scale when every
    plotted value is positive (losses span orders of magnitude early in training).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    positive = True
    for i, (name, (steps, losses, ok)) in enumerate(curves.items()):
        losses = np.asarray(losses, np.float64)
        ok = np.asarray(ok, bool)
        used = losses[ok] if ok.any() else losses
        with np.errstate(all="ignore"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                med, lo, hi = np.nanmedian(used, 0), np.nanmin(used, 0), np.nanmax(used, 0)
        positive &= bool(np.all(lo[np.isfinite(lo)] > 0))
        ax.plot(steps, med, color=f"C{i % 10}", label=f"{name} ({int(ok.sum())}/{len(ok)} ok)", lw=1.2)
        ax.fill_between(steps, lo, hi, color=f"C{i % 10}", alpha=0.2, lw=0)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss: median across seeds, band = min..max", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)
