"""Orchestration of a comparison: rows -> train -> evaluate -> ``results.json``, tables, figures.

The main job of the project (Ghosh et al. 2020, Table 1, carried to discrete codes). An
:class:`~jaxrae.experiment.Experiment` names the rows (methods and labelled variants); for every
row, all seeds train in one vmapped program (:func:`jaxrae.train.train`), then each seed is
evaluated on the same draws (:func:`jaxrae.evaluate.evaluate`, whose docstring lists the
metrics), and :mod:`jaxrae.report` turns the per-seed numbers into tables and figures. A row that
finished is not rerun, and an interrupted one continues from its checkpoint.

Output directory (all files written atomically: temp file + rename):

  results.json            every per-seed number, feature network, versions, device, times; per row
                          (keyed by its label) its preset, its own fields and its full config
  table.md, table.csv     mean, std, 95% t-interval, n_ok/n_total, paired difference vs baseline
  reconstructions.png, samples.png, interpolations.png, metrics.png, losses.png
  experiment.json         the resolved experiment of the last invocation
  methods/<label>.json    a finished row's numbers (its presence means "done": resume skips it)
  methods/<label>.npz     the images its figures show
  checkpoints/<label>.msgpack  the training checkpoint (an interrupted row resumes from it)

A row's label is the method's name for a plain method, the table key for a variant.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from tqdm.auto import tqdm

from jaxrae import report
from jaxrae.data import load_data
from jaxrae.errors import CheckpointError
from jaxrae.evaluate import ELBO_SAMPLES, EVAL_SEED, LIKELIHOOD_CHUNK, PR_NEIGHBOURS, evaluate, loss_curve
from jaxrae.experiment import Experiment
from jaxrae.io import atomic_write_json, atomic_write_npz, atomic_write_text, json_roundtrip, nonfinite_to_null, prepare_out_dir
from jaxrae.features import FD_METRIC_NAME, feature_network
from jaxrae.provenance import environment
from jaxrae.train import train

FORMAT = "jaxrae-compare-v1"


class CompareInterrupted(Exception):
    """Training stopped early on request (``stop_after_chunks``); rerun to resume."""


def _row_header(experiment: Experiment, label: str, data, fnet, n_eval: int) -> dict:
    """What a finished row's numbers depend on; a saved row is reused only if it matches.

    The header holds the row's full config (its preset and every field its table sets), not its
    label or the table that spelled it: ``[overrides.m]`` and a variant of ``m`` with the same
    fields compute, and resume, the same numbers.
    """
    return {
        "format": FORMAT,
        "data": experiment.data,
        "fingerprint": data.fingerprint,
        "config": experiment.method_config(label).to_dict(),
        "seeds": list(experiment.seeds),
        "eval": {"n_eval": n_eval, "n_components": experiment.n_components, "k": PR_NEIGHBOURS,
                 "eval_seed": EVAL_SEED, "feature_steps": fnet.steps, "feature_version": fnet.version,
                 "likelihood_k": experiment.likelihood_k},
    }


def _differences(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _load_finished(path: Path, header: dict) -> dict | None:
    """A finished row's record if it exists and matches ``header``; error if it is foreign."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        saved = record["header"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is unreadable ({type(e).__name__}); delete it to redo that method, or rerun with --overwrite") from None
    if saved != json_roundtrip(header):
        diff = ", ".join(_differences(saved, json_roundtrip(header))[:6])
        raise CheckpointError(f"{path} was computed with other settings (differs in: {diff}); "
                              "rerun with --overwrite or choose another --out")
    return record


def _row_description(experiment: Experiment, label: str) -> dict:
    """What a reader of results.json needs to know what a row was, next to its full config:
    the preset it starts from and the fields its own table (variant or overrides) set."""
    row = experiment.rows[label]
    return {"preset": row["method"], "overrides": {k: v for k, v in row.items() if k != "method"}}


def run_method(label: str, experiment: Experiment, data, fnet, out: Path, *, progress: bool = True,
               progress_desc: str | None = None, stop_after_chunks: int | None = None) -> dict:
    """Train all seeds of one row (a method or a variant; resuming its checkpoint), evaluate them,
    save the record ``out/methods/<label>.json``."""
    config = experiment.method_config(label)
    n_eval = min(experiment.n_eval, data.n_test)
    header = _row_header(experiment, label, data, fnet, n_eval)
    record_path = out / "methods" / f"{label}.json"
    runs = train(config, data, experiment.seeds, checkpoint_path=out / "checkpoints" / f"{label}.msgpack",
                 progress=progress, progress_desc=progress_desc or label, stop_after_chunks=stop_after_chunks)
    if int(np.asarray(runs.state.step).min()) < config.steps:
        raise CompareInterrupted(f"{label} stopped at step {int(np.asarray(runs.state.step).min())} of {config.steps}")
    t0 = time.perf_counter()
    values, images, notes = evaluate(runs, data, fnet, n_eval=experiment.n_eval, n_components=experiment.n_components,
                                     likelihood_k=experiment.likelihood_k)
    eval_s = time.perf_counter() - t0
    record = {
        "header": header,
        "method": label,
        **_row_description(experiment, label),
        "discrete": bool(runs.codec.discrete),
        "config": config.to_dict(),
        "seeds": list(runs.seeds),
        "runs": runs.runs,
        "ok": runs.ok.tolist(),
        "diverged_at": runs.diverged_at.tolist(),
        "final_loss": [None if not np.isfinite(v) else float(v) for v in runs.summary()["final_loss"]],
        "metrics": values,
        "times": {"train_s": runs.wall_time_s, "compile_s": runs.compile_time_s, "eval_s": eval_s},
        "notes": notes,
        "loss_curve": loss_curve(runs.losses),
    }
    atomic_write_npz(out / "methods" / f"{label}.npz", {k: np.asarray(v, np.float32) for k, v in images.items()})
    record = nonfinite_to_null(record)  # the same values a later resume reads back
    atomic_write_json(record_path, record)  # last: its presence marks the row as done
    return record


def run_compare(experiment: Experiment, out: str | Path, *, resume: bool = False, overwrite: bool = False,
                progress: bool = True, feature_cache_dir: str | Path | None = None,
                stop_after_chunks: int | None = None, log: Callable = print, figures: bool = True,
                command: str | None = None) -> dict:
    """Run (or resume) a comparison into ``out``; returns the ``results.json`` structure.

    Rows are ``experiment.rows`` (methods, then variants), each keyed by its label: finished
    rows (``out/methods/<label>.json`` of the same settings) are loaded, not rerun; an
    interrupted row continues from ``out/checkpoints/<label>.msgpack``. ``out`` must be empty
    unless ``resume`` or ``overwrite``. ``stop_after_chunks`` stops the first row that still
    trains after that many chunks and raises :class:`CompareInterrupted` (for resume tests);
    ``figures=False`` writes the tables and results but no PNGs. ``command`` (the shell line
    that ran this, e.g. ``jaxrae compare --config ...``) heads table.md and is kept in results.json.
    """
    t_start = time.perf_counter()
    out = Path(out)
    prepare_out_dir(out, resume, overwrite)
    data = load_data(experiment.data, n_train=experiment.n_train, n_test=experiment.n_test)
    t0 = time.perf_counter()
    fnet = feature_network(data, cache_dir=feature_cache_dir, steps=experiment.feature_steps)
    feature_s = time.perf_counter() - t0
    n_eval = min(experiment.n_eval, data.n_test)
    labels = list(experiment.rows)

    bar = None
    if progress:
        bar = tqdm(total=len(labels), desc="compare", unit="row", position=0, dynamic_ncols=True)
    say = (lambda msg: bar.write(msg)) if bar is not None else log  # noqa: E731
    records: dict[str, dict] = {}
    try:
        for index, label in enumerate(labels):
            header = _row_header(experiment, label, data, fnet, n_eval)
            record = _load_finished(out / "methods" / f"{label}.json", header)
            if record is not None:
                say(f"{label}: finished earlier, loaded from {out / 'methods' / (label + '.json')}")
            else:
                if bar is not None:
                    bar.set_postfix_str(f"{label}: training + evaluation")
                record = run_method(label, experiment, data, fnet, out, progress=progress,
                                    progress_desc=f"{label} [{index + 1}/{len(labels)}]",
                                    stop_after_chunks=stop_after_chunks)
                t = record["times"]
                say(f"{label}: {sum(record['ok'])}/{len(record['ok'])} ok, train {t['train_s']:.1f}s "
                    f"+ compile {t['compile_s']:.1f}s + eval {t['eval_s']:.1f}s")
            records[label] = record
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    results = assemble_results(experiment, data, fnet, records, n_eval)
    results["times"] = {"this_invocation_s": time.perf_counter() - t_start, "feature_network_s": feature_s}
    results["command"] = command
    write_outputs(results, records, out, figures=figures)
    atomic_write_json(out / "experiment.json", experiment.to_dict())
    return results


def assemble_results(experiment: Experiment, data, fnet, records: Mapping[str, dict], n_eval: int) -> dict:
    """The results.json structure from the per-row records (no loss curves: see methods/*.json).

    ``methods`` maps each row label to its record: per-seed numbers, ``preset``, ``overrides``
    (the fields the row's own table set) and the full ``config`` it trained with.
    """
    methods = {}
    for label, r in records.items():
        # preset/overrides come from the experiment, not the record: the record's header matched
        # this row's, so both describe the same row, and a record saved without them gets them.
        methods[label] = {**{k: v for k, v in r.items() if k not in ("header", "loss_curve")},
                          **_row_description(experiment, label)}
    return {
        "format": FORMAT,
        "data": experiment.data,
        "data_name": data.name,
        "fingerprint": data.fingerprint,
        "n_train": data.n_train,
        "n_test": data.n_test,
        "experiment": experiment.to_dict(),
        "baseline": experiment.baseline_label if len(records) > 1 else None,
        "feature_network": {"metric": FD_METRIC_NAME, "label": fnet.metric_label, "test_accuracy": fnet.test_accuracy,
                            "target": fnet.target, "accuracy_name": fnet.accuracy_name,
                            "majority_accuracy": fnet.majority_accuracy, "steps": fnet.steps, "version": fnet.version, "fingerprint": fnet.fingerprint},
        "eval": {"n_eval": n_eval, "n_components": experiment.n_components, "k": PR_NEIGHBOURS, "eval_seed": EVAL_SEED,
                 "likelihood": likelihood_settings(experiment, records)},
        "metric_names": {k: v[1] for k, v in report.METRICS.items()},
        "methods": methods,
        "environment": environment(),
    }


def likelihood_settings(experiment: Experiment, records: Mapping[str, dict]) -> dict | None:
    """How the test likelihoods were computed: k, the samples of the ELBO, and per row its decoder
    likelihood, and for a Gaussian decoder the observation variance fitted per seed on training
    reconstructions (by maximum likelihood). None when the experiment computes none."""
    if experiment.likelihood_k is None:
        return None
    rows = {}
    for label, r in records.items():
        notes = (r.get("notes") or {}).get("likelihood") or {}
        rows[label] = {"likelihood": r["config"].get("likelihood", "gaussian"), "kind": notes.get("kind"),
                       "observation_variance": notes.get("observation_variance"),
                       "proposal": notes.get("proposal"), "proposal_width": notes.get("proposal_width")}
    return {"k": experiment.likelihood_k, "elbo_samples": min(ELBO_SAMPLES, experiment.likelihood_k),
            "chunk_size": min(LIKELIHOOD_CHUNK, experiment.likelihood_k), "rows": rows}


def write_outputs(results: dict, records: Mapping[str, dict], out: Path, figures: bool = True) -> None:
    """results.json, table.md, table.csv and the five figures, each written atomically."""
    rows = report.summary_table(results)
    results["table"] = rows
    atomic_write_json(out / "results.json", nonfinite_to_null(results))
    atomic_write_text(out / "table.md", report.render_markdown(results, rows) + "\n")
    atomic_write_text(out / "table.csv", report.render_csv(rows))
    if figures:
        write_figures(results, records, out, rows)


def write_figures(results: Mapping, records: Mapping[str, dict], out: Path, rows: list[dict]) -> None:
    """The five PNGs, from the per-row image files and records (so a resume can redraw them)."""
    images = {}
    for name in records:
        path = out / "methods" / f"{name}.npz"
        try:
            with np.load(path) as z:
                images[name] = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path} is missing or unreadable ({type(e).__name__}); delete "
                                  f"{out / 'methods' / (name + '.json')} to redo {name}, or rerun with --overwrite") from None
    names = list(records)
    originals = images[names[0]]["originals"]
    report.plot_reconstructions(out / "reconstructions.png", originals, {n: images[n]["reconstructions"] for n in names})
    report.plot_samples(out / "samples.png", {n: images[n]["prior"] for n in names}, {n: images[n]["ex_post"] for n in names})
    report.plot_interpolations(out / "interpolations.png", {n: images[n]["interpolations"] for n in names})
    report.plot_metrics(out / "metrics.png", results, rows)
    curves = {n: (np.asarray(r["loss_curve"]["steps"]),
                  np.array([[np.nan if v is None else v for v in row] for row in r["loss_curve"]["loss"]], np.float64),
                  np.asarray(r["ok"], bool)) for n, r in records.items()}
    report.plot_losses(out / "losses.png", curves)
