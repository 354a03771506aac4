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

Diverged runs (``ok`` false: the loss became non-finite and the run was frozen) keep their numbers
in ``results.json`` but never enter a mean: every summary carries ``n`` (values used) next to
``n_ok/n_total`` (runs that trained without diverging / runs started).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from jaxrae.io import atomic_write_bytes

# Metric key -> (table header, long name, better direction). The order is the table's column order.
# "FD" is the Frechet distance in the penultimate features of jaxrae's per-data-set classifier
# (jaxrae.features.feature_network), never an Inception FID.
METRICS: dict[str, tuple[str, str, str]] = {
    "rec_error": ("rec err", "test reconstruction error (sum of squares per image)", "lower"),
    "fd_rec": ("FD rec", "FD (classifier features) of test reconstructions", "lower"),
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
    "nll_ex_post": ("NLL ex-post", "test NLL (ex-post IS-k): importance sampling through the ex-post density, nats per image", "lower"),
    "neg_elbo_bpd": ("-ELBO bpd", "test -ELBO (VAEs), bits per dimension", "lower"),
    "nll_iwae_bpd": ("NLL IWAE bpd", "test NLL (IWAE-k), bits per dimension", "lower"),
    "nll_ex_post_bpd": ("NLL ex-post bpd", "test NLL (ex-post IS-k), bits per dimension", "lower"),
}

CONFIDENCE = 0.95


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
    out = {"mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "half_width": math.nan, "n": n, "n_ok": int(ok_mask.sum()), "n_total": int(x.size)}
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
    ``d_i = x_i - b_i`` and the interval is :func:`summarize` of the ``d_i``. A difference
    interval that excludes 0 says the method differs from the baseline at that seed count
    (no multiple-comparison correction is applied).

    Returns:
      dict with ``mean, std, ci_low, ci_high, half_width, n`` (number of pairs) and
      ``seeds`` (the paired seeds).
    """
    here = {int(s): (as_float(v), bool(o)) for s, v, o in zip(seeds, values, ok)}
    there = {int(s): (as_float(v), bool(o)) for s, v, o in zip(baseline_seeds, baseline_values, baseline_ok)}
    paired = [s for s in here if s in there and here[s][1] and there[s][1]
              and math.isfinite(here[s][0]) and math.isfinite(there[s][0])]
    diffs = [here[s][0] - there[s][0] for s in paired]
    summary = summarize(diffs, confidence=confidence)
    return {k: summary[k] for k in ("mean", "std", "ci_low", "ci_high", "half_width", "n")} | {"seeds": paired}


def method_metric_keys(method_results: Mapping) -> list[str]:
    """The metrics a method has, in table order (discrete-only ones only for discrete codes)."""
    return [k for k in METRICS if k in method_results["metrics"]]


def summary_table(results: Mapping) -> list[dict]:
    """One row per (method, metric): the summary across seeds and the paired difference.

    ``results`` is the ``results.json`` structure: ``results["methods"][name]`` holds ``seeds``,
    ``ok`` and ``metrics[key]`` (one value per seed); ``results["baseline"]`` names the baseline
    (or is None). Rows of the baseline itself carry no difference. ``name`` is the row label of
    :mod:`jaxrae.compare`: a preset's name, or a variant's label such as ``reinmax-tau0.5``.
    """
    methods = results["methods"]
    baseline = results.get("baseline")
    base = methods.get(baseline) if baseline else None
    rows = []
    for name, m in methods.items():
        for key in method_metric_keys(m):
            row = {"method": name, "metric": key, **summarize(m["metrics"][key], m["ok"])}
            row["baseline"] = baseline
            diff = None
            # Code log-likelihoods are densities (nats) for continuous codes and log-probabilities
            # for discrete ones: a difference between the two kinds would mean nothing.
            comparable = key != "code_loglik" or (base is not None and bool(m.get("discrete")) == bool(base.get("discrete")))
            if base is not None and name != baseline and key in base["metrics"] and comparable:
                diff = paired_difference(m["metrics"][key], m["seeds"], m["ok"],
                                         base["metrics"][key], base["seeds"], base["ok"])
            for field in ("mean", "ci_low", "ci_high", "n"):
                row[f"diff_{field}"] = None if diff is None else diff[field]
            rows.append(row)
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


def _diff_cell(row: Mapping | None, interval: bool = True) -> str:
    if row is None or row.get("diff_mean") is None:
        return "-"
    if math.isnan(row["diff_mean"]):
        return "nan"
    lo, hi = row["diff_ci_low"], row["diff_ci_high"]
    # '*' marks an interval that excludes 0, i.e. a difference the seeds resolve.
    star = "*" if (not math.isnan(lo) and (lo > 0 or hi < 0)) else ""
    if not interval:
        return f"{fmt(row['diff_mean'])}{star}"
    return f"{fmt(row['diff_mean'])} [{fmt(lo, 2)}, {fmt(hi, 2)}]{star}"


def _grid(results: Mapping, rows: list[dict], cell, with_ok: bool = True) -> tuple[list[str], list[list[str]]]:
    """Methods x metrics cells, plus the n_ok/n_total column."""
    keys = [k for k in METRICS if any(r["metric"] == k for r in rows)]
    by = {(r["method"], r["metric"]): r for r in rows}
    header = ["method"] + (["ok"] if with_ok else []) + [METRICS[k][0] for k in keys]
    body = []
    for name, m in results["methods"].items():
        n_ok, n_total = int(np.sum(m["ok"])), len(m["ok"])
        body.append([name] + ([f"{n_ok}/{n_total}"] if with_ok else []) + [cell(by.get((name, k))) for k in keys])
    return header, body


def _markdown(header: list[str], body: list[list[str]], align_right_from: int = 1) -> str:
    sep = ["---" if i < align_right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _plain(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in body])


def _provenance(results: Mapping) -> list[str]:
    """What produced a table: the command, its time, the code and package versions, the machine."""
    env = results.get("environment", {})
    versions = env.get("versions", {})
    commit = env.get("git_commit")
    times = results.get("times", {})
    run_time = sum(sum((m.get("times") or {}).get(k, 0.0) for k in ("train_s", "compile_s", "eval_s"))
                   for m in results["methods"].values())
    lines = [f"command: `{results['command']}`" if results.get("command") else
             "command: not recorded (results written through the Python API)"]
    if times:
        lines.append(f"time: {run_time / 60:.1f} min training + compiling + evaluating, summed over rows; "
                     f"this invocation {times.get('this_invocation_s', float('nan')) / 60:.1f} min wall")
    if versions:
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
                     + (f", python {env['python']}" if env.get("python") else "")
                     + (f"; git {commit[:10]}" if commit else ""))
    if env:
        devices = env.get("devices") or []
        cpus = f", {env['cpu_count']} CPU cores" if env.get("cpu_count") else ""
        lines.append(f"machine: {env.get('backend')} backend, {len(devices)} x {devices[0] if devices else '?'}{cpus}, "
                     f"{env.get('process_count', 1)} process(es), {env.get('platform')}; finished {env.get('time_utc')}")
    return lines


def _caption(results: Mapping) -> list[str]:
    fnet = results.get("feature_network", {})
    n_seeds = max((len(m["ok"]) for m in results["methods"].values()), default=0)
    lines = [
        f"data: {results.get('data')}  |  seeds per method: {n_seeds}  |  "
        f"n_eval: {results.get('eval', {}).get('n_eval')}",
        f"FD = Frechet distance in classifier features (jaxrae's feature network for this data set, "
        f"{fnet.get('accuracy_name', 'test accuracy')} {fnet.get('test_accuracy', float('nan')):.1%}); "
        "not an Inception FID.",
        "cells: mean ± half-width of the 95% Student t interval across seeds; ok = n_ok/n_total "
        "(diverged runs are recorded but excluded from every mean).",
    ]
    lines += _likelihood_caption(results.get("eval", {}).get("likelihood"))
    return lines


def _likelihood_caption(settings: Mapping | None) -> list[str]:
    """How the test likelihoods were computed (k, and the observation variance of Gaussian decoders)."""
    if not settings:
        return []
    k = settings["k"]
    lines = [(f"test likelihoods (lower is better): -ELBO ({settings.get('elbo_samples')} samples) and NLL IWAE-{k} for VAEs, "
              f"NLL ex-post IS-{k} (importance sampling through the ex-post density) for deterministic rows; "
              "nats per image and bits per dimension.")]
    variances = {label: row["observation_variance"] for label, row in settings.get("rows", {}).items()
                 if row.get("likelihood") == "gaussian" and row.get("observation_variance")}
    if variances:
        spelled = "; ".join(f"{label} " + ", ".join(fmt(v) for v in values) for label, values in variances.items())
        lines.append("Gaussian decoders: likelihoods at the observation variance sigma^2 fitted by maximum likelihood on "
                     f"each seed's training reconstructions (training used sigma^2 = 1/2), per seed: {spelled}.")
    bernoulli = [label for label, row in settings.get("rows", {}).items() if row.get("likelihood") == "bernoulli"]
    if bernoulli:
        lines.append(f"Bernoulli decoders (logits; probabilities of binary pixels): {', '.join(bernoulli)}.")
    return lines


def row_settings(results: Mapping) -> list[list[str]]:
    """[label, preset, settings] for every row that is not a preset at [config] alone.

    Those are the variants and the methods with ``[overrides.<method>]``; ``settings`` lists
    the fields the row's own table set (``estimator=reinmax, tau=0.5``). Results written
    before variants existed carry no ``preset`` and give no lines.
    """
    lines = []
    for name, m in results["methods"].items():
        preset, fields = m.get("preset", name), m.get("overrides") or {}
        if preset != name or fields:
            lines.append([name, preset, ", ".join(f"{k}={v}" for k, v in fields.items()) or "-"])
    return lines


def render_summary(results: Mapping, rows: list[dict] | None = None) -> str:
    """The one-screen summary printed at the end of ``jaxrae compare``."""
    rows = summary_table(results) if rows is None else rows
    out = _caption(results) + [""]
    out.append(_plain(*_grid(results, rows, _mean_pm)))
    baseline = results.get("baseline")
    if baseline and len(results["methods"]) > 1:
        out += ["", f"paired difference vs {baseline} over common seeds: mean, * = its 95% interval excludes 0 "
                    "(intervals in table.md)"]
        header, body = _grid(results, rows, lambda r: _diff_cell(r, interval=False), with_ok=False)
        body = [r for r in body if r[0] != baseline]
        out.append(_plain(header, body))
    return "\n".join(out)


def render_markdown(results: Mapping, rows: list[dict] | None = None) -> str:
    """table.md: the summary grid, the paired grid, then every number per metric."""
    rows = summary_table(results) if rows is None else rows
    baseline = results.get("baseline")
    parts = ["# jaxrae compare", ""] + [f"- {line}" for line in _provenance(results)] + [""]
    parts += [f"- {line}" for line in _caption(results)] + [""]
    settings = row_settings(results)
    if settings:  # what a label such as `reinmax-tau0.5` stands for (full configs: results.json)
        parts += ["## Rows: preset and own settings (on top of the shared config)", "",
                  _markdown(["row", "preset", "settings"], settings, align_right_from=3), ""]
    parts += ["## Summary (mean ± 95% interval half-width)", "", _markdown(*_grid(results, rows, _mean_pm)), ""]
    if baseline and len(results["methods"]) > 1:
        header, body = _grid(results, rows, _diff_cell, with_ok=False)
        parts += [f"## Paired difference vs baseline `{baseline}` (mean [95% interval], * excludes 0)", "",
                  _markdown(header, [r for r in body if r[0] != baseline]), ""]
    parts += ["## Per metric", ""]
    for key, (short, long, better) in METRICS.items():
        metric_rows = [r for r in rows if r["metric"] == key]
        if not metric_rows:
            continue
        parts += [f"### {long} ({better} is better)", ""]
        header = ["method", "n/ok/total", "mean", "std", "95% interval", f"diff vs {baseline}" if baseline else "diff", "pairs"]
        body = [[r["method"], f"{r['n']}/{r['n_ok']}/{r['n_total']}", fmt(r["mean"]), fmt(r["std"]),
                 f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]", _diff_cell(r) or "-",
                 "-" if r["diff_n"] is None else str(r["diff_n"])] for r in metric_rows]
        parts += [_markdown(header, body), ""]
    return "\n".join(parts)


CSV_FIELDS = ["method", "metric", "n", "n_ok", "n_total", "mean", "std", "ci_low", "ci_high",
              "baseline", "diff_mean", "diff_ci_low", "diff_ci_high", "diff_n"]


def render_csv(rows: Iterable[Mapping]) -> str:
    """table.csv: one row per (method, metric), full precision (repr of the float)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
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
        canvas[r * (h + 1): r * (h + 1) + h, col * (w + 1): col * (w + 1) + w] = images[i]
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
    fig, axes = plt.subplots(len(names) + 1, 1, figsize=(0.5 * len(originals) + 1.5, 0.75 * (len(names) + 1) + 0.5), squeeze=False, layout="constrained")
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
        ax.set_title(f"{METRICS[key][0]} ({METRICS[key][2]} better)", fontsize=9)
    for ax in axes.ravel()[len(keys):]:
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
