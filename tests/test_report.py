"""Statistics and tables of jaxrae.report, and the experiment-file rules of jaxrae.experiment (no training)."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from jaxrae import report
from jaxrae.errors import ConfigError
from jaxrae.evaluate import interpolate_codes, interpolation_pairs, loss_curve
from jaxrae.experiment import DEFAULT_JOB_CONFIG, Experiment, load_experiment

# --------------------------------------------------------------------------------------------
# mean, std, Student t interval


def test_summarize_matches_hand_computed_t_interval():
    s = report.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, s = sqrt(2.5), t_{0.975,4} = 2.7764451052 (table value), half = t s / sqrt(5)
    assert s["mean"] == pytest.approx(3.0)
    assert s["std"] == pytest.approx(math.sqrt(2.5))
    assert s["half_width"] == pytest.approx(2.7764451052 * math.sqrt(2.5) / math.sqrt(5), rel=1e-9)
    lo, hi = stats.t.interval(0.95, 4, loc=3.0, scale=math.sqrt(2.5) / math.sqrt(5))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((lo, hi), rel=1e-12)
    assert (s["n"], s["n_ok"], s["n_total"]) == (5, 5, 5)


def test_summarize_two_values_uses_t_with_one_degree_of_freedom():
    s = report.summarize([0.0, 2.0])
    # t_{0.975,1} = 12.7062047362; s = sqrt(2); half = t * sqrt(2) / sqrt(2)
    assert s["half_width"] == pytest.approx(12.7062047362, rel=1e-9)


def test_summarize_single_and_empty():
    one = report.summarize([4.0])
    assert one["mean"] == 4.0 and math.isnan(one["std"]) and math.isnan(one["ci_low"])
    none = report.summarize([1.0, 2.0], ok=[False, False])
    assert math.isnan(none["mean"]) and none["n"] == 0 and none["n_ok"] == 0 and none["n_total"] == 2


def test_diverged_run_is_excluded_but_counted():
    s = report.summarize([1.0, 2.0, 1e9], ok=[True, True, False])
    assert s["mean"] == pytest.approx(1.5)
    assert (s["n"], s["n_ok"], s["n_total"]) == (2, 2, 3)
    # a non-finite value of an ok run is not averaged either, and shows in n
    s = report.summarize([1.0, float("nan"), 3.0])
    assert s["mean"] == pytest.approx(2.0) and (s["n"], s["n_ok"]) == (2, 3)
    s = report.summarize([1.0, None, 3.0])  # results.json stores nan as null
    assert s["mean"] == pytest.approx(2.0) and (s["n"], s["n_ok"]) == (2, 3)


# --------------------------------------------------------------------------------------------
# paired comparison


def test_paired_difference_over_common_ok_seeds():
    d = report.paired_difference(
        values=[1.0, 2.0, 3.0, 7.0],
        seeds=[0, 1, 2, 5],
        ok=[True, True, True, True],
        baseline_values=[0.5, 1.0, 2.0, 100.0],
        baseline_seeds=[0, 1, 2, 3],
        baseline_ok=[True, True, True, True],
    )
    diffs = np.array([0.5, 1.0, 1.0])  # seeds 0, 1, 2 are common; 5 and 3 are not
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3
    assert d["mean"] == pytest.approx(diffs.mean())
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    # a diverged baseline seed drops that pair
    d2 = report.paired_difference(
        [1.0, 2.0, 3.0], [0, 1, 2], [True] * 3, [0.5, 1.0, 2.0], [0, 1, 2], [True, False, True]
    )
    assert d2["seeds"] == [0, 2] and d2["mean"] == pytest.approx(0.75)


def _fake_results():
    return {
        "data": "digits",
        "baseline": "a",
        "eval": {"n_eval": 100},
        "feature_network": {"test_accuracy": 0.9},
        "methods": {
            "a": {
                "seeds": [0, 1, 2],
                "ok": [True, True, True],
                "metrics": {"rec_error": [1.0, 2.0, 3.0], "fd_ex_post": [10.0, 11.0, 12.0]},
            },
            "b": {
                "seeds": [0, 1, 2],
                "ok": [True, True, False],
                "metrics": {
                    "rec_error": [2.0, 4.0, 1e6],
                    "fd_ex_post": [9.0, 10.0, float("nan")],
                    "perplexity": [3.0, 4.0, 1.0],
                },
            },
        },
    }


def test_table_rows_csv_and_markdown():
    results = _fake_results()
    rows = report.summary_table(results)
    by = {(r["method"], r["metric"]): r for r in rows}
    assert by[("b", "rec_error")]["mean"] == pytest.approx(3.0)  # the diverged 1e6 is excluded
    assert (by[("b", "rec_error")]["n_ok"], by[("b", "rec_error")]["n_total"]) == (2, 3)
    assert by[("b", "rec_error")]["diff_mean"] == pytest.approx(1.5)  # (2-1 + 4-2) / 2 over seeds 0, 1
    assert by[("a", "rec_error")]["diff_mean"] is None  # the baseline has no difference to itself
    assert ("a", "perplexity") not in by  # discrete-only metric absent for a continuous method

    parsed = list(csv.DictReader(io.StringIO(report.render_csv(rows))))
    assert len(parsed) == len(rows)
    row = next(r for r in parsed if r["method"] == "b" and r["metric"] == "fd_ex_post")
    assert float(row["mean"]) == pytest.approx(9.5) and row["n_ok"] == "2" and row["n_total"] == "3"

    md = report.render_markdown(results, rows)
    text = report.render_summary(results, rows)
    for out in (md, text):
        assert "2/3" in out and "3/3" in out
        assert "classifier features" in out and "Inception FID" in out  # named as "not an Inception FID"
        assert "FID (Inception)" not in out
    assert "paired difference" in text.lower()
    assert "test accuracy 90.0%" in md


def test_caption_names_what_an_attribute_feature_network_was_scored_on():
    results = _fake_results()
    results["feature_network"] = {"test_accuracy": 0.87, "accuracy_name": "test mean attribute accuracy"}
    md = report.render_markdown(results, report.summary_table(results))
    assert "test mean attribute accuracy 87.0%" in md and "test accuracy" not in md


def test_warnings_section_lists_feature_network_and_row_warnings():
    healthy = _fake_results()
    healthy["feature_network"]["majority_accuracy"] = 0.1
    assert report.result_warnings(healthy) == []
    assert "Warnings" not in report.render_markdown(healthy) and "WARNINGS" not in report.render_summary(healthy)

    results = _fake_results()
    results["feature_network"] = {"test_accuracy": 0.11, "majority_accuracy": 0.1}  # removes 1% of the errors
    results["methods"]["b"]["notes"] = {"warnings": ["codes at the covariance floor"]}
    warned = report.result_warnings(results)
    assert len(warned) == 2 and warned[0].startswith(
        "the FD feature network is at or near the majority rule (test accuracy 11.0%"
    )
    assert warned[1] == "b: codes at the covariance floor"
    md = report.render_markdown(results)
    # under the summary table, before the paired differences and the per-metric detail
    assert md.index("## Summary") < md.index("## Warnings") < md.index("## Paired difference")
    assert all(f"- {w}\n" in md for w in warned)
    text = report.render_summary(results)
    assert all(f"  ! {w}" in text for w in warned)


def test_fmt():
    assert report.fmt(None) == "-" and report.fmt(float("nan")) == "nan"
    assert report.fmt(3.14159) == "3.14" and report.fmt(12345.6) == "12346" and report.fmt(2e-5) == "2.00e-05"


def test_figures_render(tmp_path):
    results = _fake_results()
    report.plot_metrics(tmp_path / "m.png", results)
    report.plot_losses(tmp_path / "l.png", {"a": (np.arange(5), np.ones((2, 5)), np.array([True, False]))})
    imgs = np.random.default_rng(0).random((6, 8, 8, 1))
    report.plot_reconstructions(tmp_path / "r.png", imgs[:3], {"a": imgs[3:]})
    report.plot_samples(tmp_path / "s.png", {"a": imgs}, {"a": imgs})
    report.plot_interpolations(tmp_path / "i.png", {"a": imgs.reshape(2, 3, 8, 8, 1)})
    for name in "mlrsi":
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_grid_draws_the_tiled_mosaic_in_gray_r():
    import matplotlib.pyplot as plt

    images = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3, 1) / 30.0
    fig, ax = plt.subplots()
    mosaic = report.show_grid(ax, images, n_cols=3, title="five")
    # 2 rows x 3 columns of 2x3 images with 1-pixel gaps; the sixth cell stays gap-valued.
    assert mosaic.shape == (2 * 3 - 1, 3 * 4 - 1, 1)
    np.testing.assert_array_equal(mosaic[0:2, 0:3, 0], images[0, ..., 0])
    np.testing.assert_array_equal(mosaic[3:5, 4:7, 0], images[4, ..., 0])
    assert np.all(mosaic[2, :, 0] == 0.12) and np.all(mosaic[3:5, 8:11, 0] == 0.12)
    (drawn,) = ax.get_images()
    np.testing.assert_array_equal(drawn.get_array(), mosaic[..., 0])
    assert drawn.get_cmap().name == "gray_r" and drawn.get_clim() == (0, 1)
    assert ax.get_title() == "five"
    plt.close(fig)


def test_show_figure_displays_one_png_and_closes_the_figure(monkeypatch):
    import matplotlib.pyplot as plt

    display_module = pytest.importorskip("IPython.display")
    shown = []
    monkeypatch.setattr(display_module, "display", shown.append)
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    report.show_figure(fig)
    (image,) = shown
    assert isinstance(image, display_module.Image) and image.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)


# --------------------------------------------------------------------------------------------
# compare's pure pieces: experiment files, interpolation, loss curves


def test_toml_unknown_keys_are_config_errors(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(
        'data = "digits"\nmethods = ["ae", "drae"]\nseeds = 3\nbaseline = "ae"\n'
        "[config]\nsteps = 20\n[overrides.drae]\nbeta = 0.01\n"
    )
    exp = load_experiment(good)
    assert exp.seeds == (0, 1, 2) and exp.method_config("drae").beta == 0.01 and exp.method_config("ae").steps == 20
    assert (
        exp.method_config("ae").batch_size == DEFAULT_JOB_CONFIG["batch_size"]
    )  # compare's shared default survives a partial [config]

    for body, needle in [
        ('methods = ["ae"]\nsedes = 3\n', "sedes"),
        ('methods = ["ae"]\n[config]\nstep = 20\n', "step"),
        ('methods = ["ae"]\n[overrides.ae]\nlearning_rate = 0.1\n', "learning_rate"),
        ('methods = ["ae"]\n[overrides.vae]\nbeta = 0.1\n', "vae"),
        ('methods = ["ae", "nope"]\n', "nope"),
        ('methods = ["ae"]\nbaseline = "vae"\n', "baseline"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(body)
        with pytest.raises(ConfigError, match=needle):
            load_experiment(bad)


def test_non_empty_out_without_resume_or_overwrite_exits_2_with_one_line(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    proc = subprocess.run(
        [sys.executable, "-m", "jaxrae.cli", "compare", "--methods", "ae", "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("jaxrae: error:")
        and "--resume" in lines[0]
        and "--overwrite" in lines[0]
    )
    assert (out / "results.json").read_text() == "{}"  # untouched


def test_experiment_validation():
    with pytest.raises(ConfigError, match="n_eval"):
        Experiment(methods=("ae",), n_eval=2)
    with pytest.raises(ConfigError, match="repeat"):
        Experiment(methods=("ae", "ae"))
    with pytest.raises(ConfigError, match="steps"):
        Experiment(methods=("ae",), config={"steps": 0})


def test_discrete_midpoint_takes_each_variable_from_an_endpoint():
    a = np.zeros((2, 50, 6), np.int32)
    b = np.full((2, 50, 6), 3, np.int32)
    coins = np.random.default_rng(0).random((50, 6)) < 0.5
    mid = interpolate_codes(a, b, 0.5, discrete=True, coins=coins)
    assert set(np.unique(mid)) == {0, 3} and np.array_equal(mid[0] == 3, coins)
    order = np.array([2, 0, 1, 5, 4, 3])
    assert np.array_equal(interpolate_codes(a, b, 0.0, True, order=order), a)
    assert np.array_equal(interpolate_codes(a, b, 1.0, True, order=order), b)
    third = interpolate_codes(a, b, 1 / 3, True, order=order)
    assert np.array_equal(np.flatnonzero(third[0, 0] == 3), [0, 2])  # the first two variables of `order`
    z = interpolate_codes(np.zeros((1, 3, 2)), np.ones((1, 3, 2)), 0.25, discrete=False)
    assert np.allclose(z, 0.25)
    i, j = interpolation_pairs(5, 200)
    assert np.all(i != j) and i.max() < 5 and j.max() < 5


def test_loss_curve_downsamples_with_nan_for_missing():
    losses = np.arange(20, dtype=float).reshape(2, 10)
    losses[1, 4:] = np.nan
    curve = loss_curve(losses, max_points=5)
    assert len(curve["steps"]) == 5
    assert curve["loss"][0] == [0.5, 2.5, 4.5, 6.5, 8.5]
    assert curve["loss"][1][2:] == [None, None, None]


# --------------------------------------------------------------------------------------------
# p-values, Holm's correction, TOST, primary contrasts


def test_holm_hand_computed_example():
    # sorted: 0.005 (x4 -> 0.02), 0.01 (x3 -> 0.03), 0.03 (x2 -> 0.06), 0.04 (x1 -> 0.04, raised to 0.06 by the step-down max)
    np.testing.assert_allclose(report.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    np.testing.assert_allclose(report.holm([0.5, 0.6]), [1.0, 1.0])  # clipped to 1
    out = report.holm([0.02, float("nan"), 0.01])  # nan is not a test: m = 2
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.02])
    assert math.isnan(out[1])


def _holm_step_down_rejections(p, alpha):
    """Holm (1979) as the paper states it: walk the sorted p, reject while p_(j) <= alpha / (m - j + 1)."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    rejected = set()
    for j, i in enumerate(order):
        if p[i] > alpha / (len(p) - j):
            break
        rejected.add(i)
    return rejected


def test_holm_adjusted_p_reproduces_the_step_down_procedure_at_every_level():
    rng = np.random.default_rng(0)
    for m in range(1, 7):
        for _ in range(40):
            p = (
                rng.choice([0.001, 0.004, 0.01, 0.0125, 0.02, 0.03, 0.05, 0.2], size=m)
                if rng.random() < 0.5
                else rng.random(m) * 0.1
            )
            adjusted = report.holm(p)
            for alpha in (0.001, 0.01, 0.025, 0.05, 0.1, 0.5):
                assert {i for i in range(m) if adjusted[i] <= alpha} == _holm_step_down_rejections(list(p), alpha)


def test_paired_p_matches_the_closed_form_t_distribution_with_two_degrees_of_freedom():
    # Student t with 2 dof: P(|T| >= t) = 1 - t / sqrt(2 + t^2)
    x, b = [1.0, 2.5, 2.0], [0.0, 1.0, 1.5]
    d = np.subtract(x, b)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    res = report.paired_difference(x, [0, 1, 2], [True] * 3, b, [0, 1, 2], [True] * 3)
    assert res["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)
    assert (res["p"] < 0.05) == (res["ci_low"] > 0 or res["ci_high"] < 0)
    same = report.paired_difference([1.0, 2.0], [0, 1], [True] * 2, [0.0, 1.0], [0, 1], [True] * 2)  # no spread
    assert math.isnan(same["p"])


def test_tost_matches_the_closed_form_and_the_90_percent_interval_rule():
    # 2 dof: F(t) = 1/2 + t / (2 sqrt(2 + t^2)); p = max(1 - F((m + delta) / se), F((m - delta) / se))
    def F(t):
        return 0.5 + t / (2 * math.sqrt(2 + t * t))

    d = np.array([0.1, -0.2, 0.25])
    se = d.std(ddof=1) / math.sqrt(3)
    for delta in (0.3, 1.0, 3.0):
        expected = max(1 - F((d.mean() + delta) / se), F((d.mean() - delta) / se))
        assert report.tost_paired(d, delta) == pytest.approx(expected, rel=1e-10)
    rng = np.random.default_rng(1)
    for _ in range(200):
        d = rng.normal(rng.normal(), rng.uniform(0.1, 2), size=rng.integers(2, 8))
        delta = rng.uniform(0.1, 3)
        s = report.summarize(d, confidence=0.90)
        inside = -delta < s["ci_low"] and s["ci_high"] < delta
        assert (report.tost_paired(d, delta) <= 0.05) == inside  # Schuirmann: TOST at 5% <=> 90% interval inside
    assert math.isnan(report.tost_paired([0.1], 1.0)) and math.isnan(report.tost_paired([0.1, 0.2], 0.0))


def _contrast_results(primary=(), equivalence=None):
    rng = np.random.default_rng(3)
    base = rng.normal(10.0, 1.0, 6)
    methods = {
        "base": {
            "seeds": list(range(6)),
            "ok": [True] * 6,
            "config": {"steps": 300, "batch_size": 50},
            "metrics": {"rec_error": list(base), "fd_ex_post": list(base + 20)},
        }
    }
    shifts = {"far": 3.0, "near": 0.0, "mid": 0.4}
    for name, shift in shifts.items():
        methods[name] = {
            "seeds": list(range(6)),
            "ok": [True] * 6,
            "config": {"steps": 300, "batch_size": 50},
            "metrics": {
                "rec_error": list(base + shift + rng.normal(0, 0.05, 6)),
                "fd_ex_post": list(base + 20 + rng.normal(0, 0.5, 6)),
            },
        }
    return {
        "data": "digits",
        "baseline": "base",
        "n_train": 1000,
        "eval": {"n_eval": 100},
        "feature_network": {"test_accuracy": 0.9},
        "experiment": {"primary": list(primary), "equivalence": equivalence or {}},
        "methods": methods,
    }


def test_stars_are_holm_within_the_table_family_and_primary_contrasts_have_their_own():
    results = _contrast_results(primary=["mid:rec_error"])
    rows = report.summary_table(results)
    contrasts = [r for r in rows if r["diff_mean"] is not None]
    table = [r for r in contrasts if r["family"] == "table"]
    (prim,) = [r for r in contrasts if r["family"] == "primary"]
    assert (prim["method"], prim["metric"]) == ("mid", "rec_error") and prim["p_holm"] == pytest.approx(prim["diff_p"])
    p = np.array([r["diff_p"] for r in table])
    ranks = np.argsort(np.argsort(p))
    for r, rank in zip(table, ranks):  # Holm 1979 by its definition, m = 5 (six contrasts, one primary)
        expected = min(1.0, max((len(p) - k) * np.sort(p)[k] for k in range(rank + 1)))
        assert r["p_holm"] == pytest.approx(expected) and r["star"] == (expected <= 0.05)
    by = {(r["method"], r["metric"]): r for r in rows}
    assert by[("far", "rec_error")]["star"] and not by[("near", "fd_ex_post")]["star"]
    md = report.render_markdown(results, rows)
    assert md.index("## Primary contrasts") < md.index("## Summary")
    assert "| mid:rec_error |" in md and "Holm over these 1" in md and "family of the 5 (row, metric) contrasts" in md
    assert "epochs: 15 (300 steps x batch 50 / 1000 training images)" in md
    assert "one without * is inconclusive" in md  # no margins, no equivalence verdict
    assert all(r["equivalent"] is None for r in rows)
    parsed = {(r["method"], r["metric"]): r for r in csv.DictReader(io.StringIO(report.render_csv(rows)))}
    assert float(parsed[("far", "rec_error")]["diff_p"]) == by[("far", "rec_error")]["diff_p"]
    assert parsed[("far", "rec_error")]["star"] == "True" and parsed[("mid", "rec_error")]["family"] == "primary"


def test_equivalence_only_from_tost_at_the_stated_margin():
    results = _contrast_results(equivalence={"rec_error": "5%", "fd_ex_post": 0.01})
    rows = report.summary_table(results)
    by = {(r["method"], r["metric"]): r for r in rows}
    base_mean = np.mean(results["methods"]["base"]["metrics"]["rec_error"])
    near = by[("near", "rec_error")]
    assert near["eq_margin"] == pytest.approx(0.05 * base_mean)
    d = np.subtract(
        results["methods"]["near"]["metrics"]["rec_error"], results["methods"]["base"]["metrics"]["rec_error"]
    )
    assert near["p_tost"] == pytest.approx(report.tost_paired(d, 0.05 * base_mean))
    assert near["equivalent"] and not by[("far", "rec_error")]["equivalent"]
    assert not by[("near", "fd_ex_post")]["equivalent"]  # a margin of 0.01 is far below the FD noise: inconclusive
    md = report.render_markdown(results, rows)
    assert (
        f"rec_error ±{report.fmt(0.05 * base_mean)}" in md
        and "(5% of the baseline mean)" in md
        and "fd_ex_post ±0.01" in md
    )
    assert "TOST p Holm" in md
    assert any(line.startswith("| near |") and "≈" in line for line in md.splitlines())


def test_rerender_keeps_title_and_notes_and_is_idempotent():
    results = _contrast_results()
    legacy = (
        "# my table\n\n"
        + "\n".join(f"- {line}" for line in report._provenance(results))
        + "\n- note: written by hand\n- wall time: 3 min\n\n## jaxrae compare output\n\n- data: old caption\n"
    )
    md, table_csv = report.rerender(results, legacy, rendered_by="jaxrae report x")
    assert md.startswith("# my table\n") and "re-rendered from results.json alone by `jaxrae report x`" in md
    title, notes = report.table_notes(md, results)
    assert title == "my table" and notes == ["- note: written by hand", "- wall time: 3 min"]
    assert report.rerender(results, md, rendered_by="jaxrae report x") == (md, table_csv)
    assert "old caption" not in md and "## jaxrae compare output" not in md


def test_report_command_rerenders_from_results_json(tmp_path, capsys):
    from jaxrae import cli

    results = _contrast_results(primary=["far:rec_error"])
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "table.md").write_text("# t\n\n- note: kept\n")
    assert cli.main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "table.md").read_text()
    assert "- note: kept" in md and f"`jaxrae report {tmp_path}`" in md and "## Primary contrasts" in md
    assert (tmp_path / "table.csv").read_text() == report.render_csv(report.summary_table(results))
    assert "no figures" in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path / "missing")]) == 2

    # with the per-row files (records and images) the figures are redrawn too
    (tmp_path / "methods").mkdir()
    imgs = np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32)
    for label, m in results["methods"].items():
        record = {"ok": m["ok"], "loss_curve": {"steps": [1, 2], "loss": [[2.0, 1.0]] * len(m["ok"])}}
        (tmp_path / "methods" / f"{label}.json").write_text(json.dumps(record))
        np.savez(
            tmp_path / "methods" / f"{label}.npz",
            originals=imgs,
            reconstructions=imgs,
            prior=imgs,
            ex_post=imgs,
            interpolations=imgs.reshape(2, 2, 8, 8, 1),
        )
    assert cli.main(["report", str(tmp_path / "results.json")]) == 0
    assert "and the figures" in capsys.readouterr().out
    for name in ("reconstructions", "samples", "interpolations", "metrics", "losses"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_epochs_from_each_rows_config_and_p_formatting():
    results = _contrast_results()
    results["methods"]["far"]["config"] = {"steps": 600, "batch_size": 50}
    assert report.epochs(results).startswith("15 to 30 (steps x batch / 1000 training images")
    del results["n_train"]
    assert report.epochs(results) == "not recorded"
    assert [report.fmt_p(p) for p in (None, float("nan"), 0.0004, 0.0123, 1.0)] == ["-", "n/a", "<0.001", "0.012", "1"]


def test_primary_and_equivalence_are_validated_when_the_experiment_is_built(tmp_path):
    exp = Experiment(
        methods=("ae", "vae"), primary=["vae:fd_ex_post"], equivalence={"rec_error": "5%", "fd_ex_post": 1.0}
    )
    assert exp.to_dict()["primary"] == ["vae:fd_ex_post"] and exp.to_dict()["equivalence"]["rec_error"] == "5%"
    for kwargs, needle in [
        ({"primary": ["ae:fd_ex_post"]}, "ae:fd_ex_post"),  # the baseline against itself
        ({"primary": ["vea:fd_ex_post"]}, "vea:fd_ex_post"),
        ({"primary": ["vae:fd_expost"]}, "vae:fd_expost"),
        ({"primary": ["vae:rec_error", "vae:rec_error"]}, "repeat"),
        ({"equivalence": {"rec_err": 1.0}}, "rec_err"),
        ({"equivalence": {"rec_error": "5"}}, "equivalence.rec_error"),
        ({"equivalence": {"rec_error": -1.0}}, "equivalence.rec_error"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            Experiment(methods=("ae", "vae"), **kwargs)
    path = tmp_path / "e.toml"
    path.write_text('methods = ["ae", "vae"]\nprimary = ["vae:recall"]\n[equivalence]\nfd_ex_post = 1.0\n')
    assert load_experiment(path).primary == ("vae:recall",)
    path.write_text('methods = ["ae", "vae"]\nprimary = ["vae:recal"]\n')
    with pytest.raises(ConfigError, match=f"{path}.*vae:recal"):
        load_experiment(path)


def test_metric_keys_of_experiment_files_are_the_report_columns():
    from jaxrae.evaluate import METRIC_KEYS

    assert list(METRIC_KEYS) == list(report.METRICS)
