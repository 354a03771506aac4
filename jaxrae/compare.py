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
  models/<label>/model.msgpack  every seed's final model (jaxrae.load_runs(out, row=label))
  tensorboard/<label>/seed<s>/ live logs: training curves per chunk, evaluation metrics (jaxrae.runlog)

A row's label is the method's name for a plain method, the table key for a variant.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jaxrae import distributed, report
from jaxrae.config import TrainConfig
from jaxrae.data import load_data
from jaxrae.density import check_mixture_size
from jaxrae.errors import CheckpointError, ConfigError, require
from jaxrae.evaluate import (
    ELBO_SAMPLES,
    EVAL_SEED,
    LIKELIHOOD_CHUNK,
    PR_NEIGHBOURS,
    evaluate,
    loss_convergence,
    loss_curve,
)
from jaxrae.experiment import Experiment
from jaxrae.features import FD_METRIC_NAME, feature_network
from jaxrae.io import (
    atomic_write_json,
    atomic_write_npz,
    atomic_write_text,
    json_roundtrip,
    load_checkpoint,
    nonfinite_to_null,
    prepare_out_dir,
)
from jaxrae.provenance import environment
from jaxrae.runlog import RunLogger, require_wandb
from jaxrae.train import MODEL_FILE, MODEL_FORMAT, ROW_MODELS_DIR, make_train, save_runs, train

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
        "config": row_config(experiment, label, data).to_dict(),
        "seeds": list(experiment.seeds),
        "eval": {
            "n_eval": n_eval,
            "n_components": experiment.n_components,
            "k": PR_NEIGHBOURS,
            "eval_seed": EVAL_SEED,
            "feature_steps": fnet.steps,
            "feature_version": fnet.version,
            "likelihood_k": experiment.likelihood_k,
        },
    }


def row_config(experiment: Experiment, label: str, data) -> TrainConfig:
    """The TrainConfig a row trains with on ``data``: its weights resolved for the data's image size
    (:meth:`jaxrae.config.TrainConfig.for_images`), as its record and header hold them."""
    return experiment.method_config(label).for_images(data.image_shape)


def row_weights(experiment: Experiment, label: str, data) -> dict:
    """A row's regularizer weights as trained, the pixels per image they were resolved for, and per
    weight the pixels it is stated for (None: taken as given), for results.json and the table."""
    config = row_config(experiment, label, data)
    return {
        "pixels": int(np.prod(data.image_shape)),
        "beta": config.beta,
        "lam": config.lam,
        "stated_pixels": experiment.method_config(label).weight_sizes(),
    }


def _differences(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


#: The images a finished row keeps in ``methods/<label>.npz`` (written by :func:`run_method`, drawn by :func:`write_figures`).
FIGURE_IMAGES = ("originals", "reconstructions", "prior", "ex_post", "interpolations")


def _redo_hint(record_path: Path) -> str:
    return f"delete {record_path} to redo {record_path.stem}, or rerun with --overwrite"


def _load_finished(path: Path, header: dict) -> dict | None:
    """A finished row's record (``methods/<label>.json``) if it exists and matches ``header``, else None.

    The record and the images beside it (``methods/<label>.npz``) are both read and checked
    here, before any row trains or any output is rewritten: a record that is truncated, not
    JSON, or lacks the fields the tables and figures read, an image file that is missing,
    truncated or lacks an image, and a record of other settings each raise a one-line
    CheckpointError that says which file to delete.
    """
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{path} is unreadable or truncated ({type(e).__name__}); {_redo_hint(path)}") from None
    try:
        n_runs = len(record["seeds"])
        complete = (
            isinstance(record["header"], dict)
            and isinstance(record["metrics"], dict)
            and isinstance(record["times"], dict)
            and len(record["ok"]) == n_runs
            and all(len(v) == n_runs for v in record["metrics"].values())
            and len(record["loss_curve"]["loss"]) == n_runs
            and isinstance(record["loss_curve"]["steps"], list)
        )
    except (KeyError, TypeError):  # not a dict, a field missing, a number where a list belongs
        complete = False
    if not complete:
        raise CheckpointError(
            f"{path} lacks part of a finished row's record (header, per-seed metrics, ok flags, loss curve "
            f"or times); {_redo_hint(path)}"
        )
    saved = record["header"]
    if saved != json_roundtrip(header):
        diff = ", ".join(_differences(saved, json_roundtrip(header))[:6])
        raise CheckpointError(
            f"{path} was computed with other settings (differs in: {diff}); "
            "rerun with --overwrite or choose another --out"
        )
    _load_images(path.with_suffix(".npz"), path)
    _check_model(path.parent.parent / ROW_MODELS_DIR / path.stem / MODEL_FILE, path)
    return record


def _check_model(path: Path, record_path: Path) -> None:
    """A finished row's model (``models/<label>/model.msgpack``) exists, is a jaxrae model and passes its SHA-256 checks.

    Otherwise a one-line CheckpointError naming the record to delete, so that a resumed
    comparison never reports a row whose model :func:`jaxrae.load_runs` could not give back.
    """
    if not path.exists():
        raise CheckpointError(f"{path} is missing: a finished row keeps its model there; {_redo_hint(record_path)}")
    _, header = load_checkpoint(path, redo=_redo_hint(record_path))
    if header.get("model_format") != MODEL_FORMAT:
        raise CheckpointError(f"{path} is not a {MODEL_FORMAT} model; {_redo_hint(record_path)}")


def _load_images(path: Path, record_path: Path) -> dict[str, np.ndarray]:
    """The :data:`FIGURE_IMAGES` of one finished row from ``path`` (its ``.npz``), each read in full.

    Reading every member checks the zip's CRC-32 of each, so a truncated or altered file is
    refused here, as a CheckpointError naming the record to delete, not as a zipfile error.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            images = {name: z[name] for name in FIGURE_IMAGES}
    except KeyError as e:
        raise CheckpointError(f"{path} lacks the image array {e}; {_redo_hint(record_path)}") from None
    except Exception as e:  # zipfile, zlib and np.load raise many unrelated types on damaged input (BadZipFile,
        # zlib.error, EOFError, NotImplementedError for a flipped compression field, ...)
        raise CheckpointError(
            f"{path} is missing, truncated or not an .npz file ({type(e).__name__}); {_redo_hint(record_path)}"
        ) from None
    return images


def _row_description(experiment: Experiment, label: str) -> dict:
    """What a reader of results.json needs to know what a row was, next to its full config:
    the preset it starts from and the fields its own table (variant or overrides) set."""
    row = experiment.rows[label]
    return {"preset": row["method"], "overrides": {k: v for k, v in row.items() if k != "method"}}


def run_method(
    label: str,
    experiment: Experiment,
    data,
    fnet,
    out: Path,
    *,
    progress: bool = True,
    progress_desc: str | None = None,
    stop_after_chunks: int | None = None,
    tensorboard: bool = True,
    wandb: bool = False,
) -> dict:
    """Train all seeds of one row (a method or a variant; resuming its checkpoint), evaluate them,
    save the record ``out/methods/<label>.json``. Live logs (:mod:`jaxrae.runlog`): the training
    curves per chunk and every evaluation metric (``eval/<name>``, at the last step) per seed, as
    TensorBoard files in ``out/tensorboard/<label>/seed<s>/`` and, with ``wandb``, W&B runs."""
    config = row_config(experiment, label, data)
    n_eval = min(experiment.n_eval, data.n_test)
    header = _row_header(experiment, label, data, fnet, n_eval)
    record_path = out / "methods" / f"{label}.json"
    with RunLogger(
        out / "tensorboard" / label if tensorboard else None, wandb=wandb, group=label, config=config.to_dict()
    ) as logger:
        runs = train(
            config,
            data,
            experiment.seeds,
            checkpoint_path=out / "checkpoints" / f"{label}.msgpack",
            progress=progress,
            progress_desc=progress_desc or label,
            stop_after_chunks=stop_after_chunks,
            logger=logger,
        )
        if int(np.asarray(runs.state.step).min()) < config.steps:
            raise CompareInterrupted(
                f"{label} stopped at step {int(np.asarray(runs.state.step).min())} of {config.steps}"
            )
        if distributed.is_primary():  # before the evaluation: a crash there keeps the trained model
            save_runs(runs, out / ROW_MODELS_DIR / label)
        t0 = time.perf_counter()
        values, images, notes = evaluate(
            runs,
            data,
            fnet,
            n_eval=experiment.n_eval,
            n_components=experiment.n_components,
            likelihood_k=experiment.likelihood_k,
        )
        eval_s = time.perf_counter() - t0
        if logger.names is not None:  # the process that logs (the primary)
            logger.log(config.steps, {f"eval/{name}": per_seed for name, per_seed in values.items()})
    record = {
        "header": header,
        "method": label,
        **_row_description(experiment, label),
        "discrete": bool(runs.codec.discrete),
        "config": config.to_dict(),
        "weights": row_weights(experiment, label, data),
        "seeds": list(runs.seeds),
        "runs": runs.runs,
        "ok": runs.ok.tolist(),
        "diverged_at": runs.diverged_at.tolist(),
        "final_loss": [None if not np.isfinite(v) else float(v) for v in runs.summary()["final_loss"]],
        "metrics": values,
        "times": {"train_s": runs.wall_time_s, "compile_s": runs.compile_time_s, "eval_s": eval_s},
        "notes": notes,
        "loss_curve": loss_curve(runs.losses),
        "convergence": row_convergence(runs.losses, runs.ok, experiment.convergence, "per-step losses"),
    }
    record = nonfinite_to_null(record)  # the same values a later resume reads back
    if distributed.is_primary():
        atomic_write_npz(out / "methods" / f"{label}.npz", {k: np.asarray(v, np.float32) for k, v in images.items()})
        atomic_write_json(record_path, record)  # last: its presence marks the row as done
    return record


def run_compare(
    experiment: Experiment,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    feature_cache_dir: str | Path | None = None,
    stop_after_chunks: int | None = None,
    log: Callable = print,
    figures: bool = True,
    command: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    tensorboard: bool = True,
    wandb: bool = False,
) -> dict:
    """Run (or resume) a comparison into ``out``; returns the ``results.json`` structure.

    Rows are ``experiment.rows`` (methods, then variants), each keyed by its label: finished
    rows (``out/methods/<label>.json`` of the same settings) are loaded, not rerun; an
    interrupted row continues from ``out/checkpoints/<label>.msgpack``. ``out`` must be empty
    unless ``resume`` or ``overwrite``. ``stop_after_chunks`` stops the first row that still
    trains after that many chunks and raises :class:`CompareInterrupted` (for resume tests);
    ``figures=False`` writes the tables and results but no PNGs. ``command`` (the shell line
    that ran this, e.g. ``jaxrae compare --config ...``) heads table.md and is kept in results.json.
    ``should_stop`` is asked before each row; when it answers True the comparison stops with
    KeyboardInterrupt (the CLI passes whether Ctrl-C was pressed), leaving a resumable directory.

    Everything is validated before ``out`` is touched (the experiment when it was built; here the
    data and every row against it), then ``out`` is claimed for the whole run
    (:func:`jaxrae.io.prepare_out_dir`: locked, and emptied only now when ``overwrite``).
    ``tensorboard`` and ``wandb`` choose the live logs of :func:`run_method`.
    """
    if wandb:
        require_wandb()  # before anything is written or trained
    t_start = time.perf_counter()
    out = Path(out)
    data = load_data(experiment.data, n_train=experiment.n_train, n_test=experiment.n_test)
    check_runnable(experiment, data)
    # With several processes (jaxrae --distributed) the primary claims --out (shared storage) and
    # writes every file; the others train and evaluate their share of the runs and write nothing.
    primary = distributed.is_primary()
    with prepare_out_dir(out, resume, overwrite) if primary else contextlib.nullcontext():
        distributed.barrier("compare-out-ready")
        return _run_claimed(
            experiment,
            data,
            out,
            t_start,
            progress=progress,
            feature_cache_dir=feature_cache_dir,
            stop_after_chunks=stop_after_chunks,
            log=log,
            figures=figures,
            command=command,
            should_stop=should_stop,
            tensorboard=tensorboard,
            wandb=wandb,
        )


def check_runnable(experiment: Experiment, data) -> None:
    """ConfigError unless every row of ``experiment`` can train and be evaluated on ``data``.

    What the experiment alone cannot know: each row's batch size and network against the
    images (:func:`jaxrae.train.make_train`), at least ``k + 2`` test images for
    precision/recall, and at least as many training images as ex-post mixture components.
    Run before the first row trains, so no such mistake surfaces after an hour of training.
    """
    for label in experiment.rows:
        try:
            make_train(experiment.method_config(label), data)
        except ConfigError as e:
            raise ConfigError(f"row {label}: {e}") from None
    n_eval = min(experiment.n_eval, data.n_test)
    require(
        n_eval >= PR_NEIGHBOURS + 2,
        "n_test",
        data.n_test,
        f"the evaluation needs at least {PR_NEIGHBOURS + 2} test images (k={PR_NEIGHBOURS} nearest neighbours + 2); "
        f"{experiment.data} has {data.n_test}",
    )
    check_mixture_size(data.n_train, experiment.n_components)


def _run_claimed(
    experiment: Experiment,
    data,
    out: Path,
    t_start: float,
    *,
    progress,
    feature_cache_dir,
    stop_after_chunks,
    log,
    figures,
    command,
    should_stop,
    tensorboard,
    wandb,
) -> dict:
    """:func:`run_compare` once ``out`` is claimed: feature network, rows, outputs."""
    if not distributed.is_primary():  # one process reports; the others would repeat every line
        log, progress = (lambda msg: None), False
    t0 = time.perf_counter()
    fnet = feature_network(data, cache_dir=feature_cache_dir, steps=experiment.feature_steps)
    feature_s = time.perf_counter() - t0
    n_eval = min(experiment.n_eval, data.n_test)
    labels = list(experiment.rows)
    # Every finished row's files are read and checked before any row trains: a damaged one stops
    # the run here, before new training is spent or an output is rewritten.
    finished = {
        label: _load_finished(out / "methods" / f"{label}.json", _row_header(experiment, label, data, fnet, n_eval))
        for label in labels
    }

    bar = None
    if progress:
        bar = tqdm(total=len(labels), desc="compare", unit="row", position=0, dynamic_ncols=True)
    say = (lambda msg: bar.write(msg)) if bar is not None else log
    records: dict[str, dict] = {}
    try:
        for index, label in enumerate(labels):
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt
            record = finished[label]
            if record is not None:
                say(f"{label}: finished earlier, loaded from {out / 'methods' / (label + '.json')}")
            else:
                if bar is not None:
                    bar.set_postfix_str(f"{label}: training + evaluation")
                record = run_method(
                    label,
                    experiment,
                    data,
                    fnet,
                    out,
                    progress=progress,
                    progress_desc=f"{label} [{index + 1}/{len(labels)}]",
                    stop_after_chunks=stop_after_chunks,
                    tensorboard=tensorboard,
                    wandb=wandb,
                )
                t = record["times"]
                say(
                    f"{label}: {sum(record['ok'])}/{len(record['ok'])} ok, "
                    f"{report.convergence_text(record['convergence'])}, train {t['train_s']:.1f}s "
                    f"+ compile {t['compile_s']:.1f}s + eval {t['eval_s']:.1f}s"
                )
            records[label] = record
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if should_stop is not None and should_stop():
        raise KeyboardInterrupt

    results = assemble_results(experiment, data, fnet, records, n_eval)
    results["times"] = {"this_invocation_s": time.perf_counter() - t_start, "feature_network_s": feature_s}
    results["command"] = command
    if distributed.is_primary():
        write_outputs(results, records, out, figures=figures)
        atomic_write_json(out / "experiment.json", experiment.to_dict())
    return results


def row_convergence(losses, ok, settings: Mapping[str, float], source: str) -> dict:
    """A row's ``convergence`` entry: :func:`jaxrae.evaluate.loss_convergence` of every seed's
    training losses under the experiment's ``settings``, with those settings and where the losses
    came from (``source``)."""
    return {**loss_convergence(losses, ok, **settings), "settings": dict(settings), "source": source}


def _recorded_convergence(record: Mapping, settings: Mapping[str, float]) -> dict:
    """A finished row's convergence under ``settings``: its own entry when it was judged by them,
    else judged now from its loss curve (a record of an older jaxrae, or another criterion);
    that curve is block-averaged over at most MAX_LOSS_POINTS points, so the window is counted in points."""
    saved = record.get("convergence")
    if saved is not None and saved.get("settings") == dict(settings):
        return saved
    curve = np.array([[np.nan if v is None else v for v in row] for row in record["loss_curve"]["loss"]], np.float64)
    return row_convergence(curve, record["ok"], settings, f"loss curve of {curve.shape[1]} block means")


def assemble_results(experiment: Experiment, data, fnet, records: Mapping[str, dict], n_eval: int) -> dict:
    """The results.json structure from the per-row records (no loss curves: see methods/*.json).

    ``methods`` maps each row label to its record: per-seed numbers, ``preset``, ``overrides``
    (the fields the row's own table set), the full ``config`` it trained with and ``convergence``
    (:func:`row_convergence` under the experiment's criterion).
    """
    methods = {}
    for label, r in records.items():
        # preset/overrides come from the experiment, not the record: the record's header matched
        # this row's, so both describe the same row, and a record saved without them gets them.
        methods[label] = {
            **{k: v for k, v in r.items() if k not in ("header", "loss_curve")},
            **_row_description(experiment, label),
            "weights": row_weights(experiment, label, data),
            "convergence": _recorded_convergence(r, experiment.convergence),
        }
    return {
        "format": FORMAT,
        "data": experiment.data,
        "data_name": data.name,
        "fingerprint": data.fingerprint,
        "n_train": data.n_train,
        "n_test": data.n_test,
        "image_shape": list(data.image_shape),
        "experiment": experiment.to_dict(),
        "baseline": experiment.baseline_label if len(records) > 1 else None,
        "feature_network": {
            "metric": FD_METRIC_NAME,
            "label": fnet.metric_label,
            "test_accuracy": fnet.test_accuracy,
            "target": fnet.target,
            "accuracy_name": fnet.accuracy_name,
            "majority_accuracy": fnet.majority_accuracy,
            "steps": fnet.steps,
            "version": fnet.version,
            "fingerprint": fnet.fingerprint,
        },
        "eval": {
            "n_eval": n_eval,
            "n_components": experiment.n_components,
            "k": PR_NEIGHBOURS,
            "eval_seed": EVAL_SEED,
            "likelihood": likelihood_settings(experiment, records),
        },
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
        rows[label] = {
            "likelihood": r["config"].get("likelihood", "gaussian"),
            "kind": notes.get("kind"),
            "observation_variance": notes.get("observation_variance"),
            "proposal": notes.get("proposal"),
            "proposal_width": notes.get("proposal_width"),
        }
    return {
        "k": experiment.likelihood_k,
        "elbo_samples": min(ELBO_SAMPLES, experiment.likelihood_k),
        "chunk_size": min(LIKELIHOOD_CHUNK, experiment.likelihood_k),
        "rows": rows,
    }


def write_outputs(results: dict, records: Mapping[str, dict], out: Path, figures: bool = True) -> None:
    """results.json, table.md, table.csv and the five figures, each written atomically."""
    rows = report.summary_table(results)
    results["table"] = rows
    results["warnings"] = report.result_warnings(results)
    atomic_write_json(out / "results.json", nonfinite_to_null(results))
    atomic_write_text(out / "table.md", report.render_markdown(results, rows) + "\n")
    atomic_write_text(out / "table.csv", report.render_csv(rows))
    if figures:
        write_figures(results, records, out, rows)


def write_figures(results: Mapping, records: Mapping[str, dict], out: Path, rows: list[dict]) -> None:
    """The five PNGs, from the per-row image files and records (so a resume can redraw them)."""
    images = {name: _load_images(out / "methods" / f"{name}.npz", out / "methods" / f"{name}.json") for name in records}
    names = list(records)
    originals = images[names[0]]["originals"]
    report.plot_reconstructions(
        out / "reconstructions.png", originals, {n: images[n]["reconstructions"] for n in names}
    )
    report.plot_samples(
        out / "samples.png", {n: images[n]["prior"] for n in names}, {n: images[n]["ex_post"] for n in names}
    )
    report.plot_interpolations(out / "interpolations.png", {n: images[n]["interpolations"] for n in names})
    report.plot_metrics(out / "metrics.png", results, rows)
    curves = {
        n: (
            np.asarray(r["loss_curve"]["steps"]),
            np.array([[np.nan if v is None else v for v in row] for row in r["loss_curve"]["loss"]], np.float64),
            np.asarray(r["ok"], bool),
        )
        for n, r in records.items()
    }
    report.plot_losses(out / "losses.png", curves)
