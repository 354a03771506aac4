"""Orchestration of a comparison: rows -> train -> evaluate -> ``results.json``, tables, figures.

The main job of the project (Ghosh et al. 2020, Table 1, carried to discrete codes). An
:class:`~jaxrae.experiment.Experiment` names the rows (methods and labelled variants); for every
row, all seeds train in one vmapped program (:func:`jaxrae.train.train`), then each seed is
evaluated on the same draws (:func:`jaxrae.evaluate.evaluate`, whose docstring lists the
metrics), and :mod:`jaxrae.report` turns the per-seed numbers into tables and figures. A row that
finished is not rerun, and an interrupted one continues from its checkpoint. A finished row whose
evaluation settings alone changed (``n_eval``, ``n_components``, the feature network,
``likelihood_k``, ...) is evaluated again from its saved model, not retrained.

Output directory (all files written atomically: temp file + rename):

  results.json            every per-seed number, feature network, versions, device, times; per row
                          (keyed by its label) its preset, its own fields and its full config
  table.md, table.csv     mean, std, 95% t-interval, n_ok/n_total, paired difference vs baseline
  reconstructions.png, samples.png, interpolations.png, metrics.png, losses.png
  experiment.json         the resolved experiment of the last invocation
  methods/<label>.json    a finished row's numbers (its presence means "done": resume skips it)
  methods/<label>.npz     the images its figures show
  checkpoints/<label>.msgpack  the training checkpoint (an interrupted row resumes from it); rows
                          trained together (below) share checkpoints/<label>,<label>,....msgpack
  models/<label>/model.msgpack  every seed's final model (jaxrae.load_runs(out, row=label))
  models/<label>/group.json     for a row trained together with others: the group and its times
  tensorboard/<label>/seed<s>/ live logs: training curves per chunk, evaluation metrics (jaxrae.runlog)
  tuning/<label>.json     tuned mode ([tune]): the row's candidates, validation scores and choice
                          (reused on --resume); tuning/<label>.msgpack the tuning runs' checkpoint

Tuned mode (an experiment with a ``[tune]`` block, :class:`jaxrae.experiment.Tune`): the data
is loaded with a validation split carved from the training split (every row trains on the rest),
and before any row trains, :func:`tune_rows` chooses each row's weights on the validation images
(never the test images); the rows then train and are evaluated on test as usual at the chosen
weights. results.json keeps the choice per row (``methods.<label>.tuning``) and the block
(``tuning``); table.md's header says which mode ran.

A row's label is the method's name for a plain method, the table key for a variant.

Rows trained together (``group_sweepable``, on by default): rows whose configs differ only in
the swept hyperparameters (:data:`jaxrae.train.SWEEPABLE`: lr, beta, lam, tau), e.g. one
estimator at three temperatures, train as one vmapped program (:func:`training_groups`,
:func:`run_group`: :func:`jaxrae.train.train` with ``sweep``), then each row is saved, evaluated
and recorded as if it had trained alone; its numbers equal those of training it alone up to
float rounding (a batched matmul may sum in another order). results.json lists the groups
(``training_groups``) and each grouped row's record says with which rows it trained and that its
``train_s``/``compile_s`` are its share of the group's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxrae import distributed, report
from jaxrae.config import TrainConfig
from jaxrae.data import load_data, validation_view
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
from jaxrae.experiment import TUNE_CRITERIA, Experiment
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
from jaxrae.runlog import RunLogger, require_wandb, run_names
from jaxrae.train import (
    MODEL_FILE,
    MODEL_FORMAT,
    ROW_MODELS_DIR,
    SWEEPABLE,
    Runs,
    load_runs,
    make_train,
    run_grid,
    save_runs,
    stop_agreed,
    train,
)

FORMAT = "jaxrae-compare-v1"


class CompareInterrupted(Exception):
    """Training stopped early on request (``stop_after_chunks``); rerun to resume."""


#: The part of a row's header that only the evaluation reads: a finished row that differs from
#: the current settings only there is evaluated again from its saved model instead of retrained.
EVAL_HEADER_KEY = "eval"


def _row_header(experiment: Experiment, label: str, data, fnet, n_eval: int) -> dict:
    """What a finished row's numbers depend on; a saved row is reused only if it matches.

    The header holds the row's full config (its preset and every field its table sets), not its
    label or the table that spelled it: ``[overrides.m]`` and a variant of ``m`` with the same
    fields compute, and resume, the same numbers. Everything the training depends on lies
    outside :data:`EVAL_HEADER_KEY`; everything under it changes the evaluation alone.
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
            "n_init": experiment.n_init,
            "ex_post_refits": experiment.ex_post_refits,
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


def _load_finished(path: Path, header: dict, *, reevaluate: bool = False) -> dict | None:
    """A finished row's record (``methods/<label>.json``) if it exists and matches ``header``, else None.

    The record and the images beside it (``methods/<label>.npz``) are both read and checked
    here, before any row trains or any output is rewritten: a record that is truncated, not
    JSON, or lacks the fields the tables and figures read, an image file that is missing,
    truncated or lacks an image, and a record of other settings each raise a one-line
    CheckpointError that says which file to delete.

    With ``reevaluate``, a record that differs from ``header`` only in its evaluation settings
    (:data:`EVAL_HEADER_KEY`) is returned too, with its old header (the caller tells it apart by
    :func:`_eval_changes`), once its model passes :func:`_check_model` and was trained with this
    header's config, data and seeds; its images are not read, since re-evaluating rewrites them.
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
    current = json_roundtrip(header)
    model_path = path.parent.parent / ROW_MODELS_DIR / path.stem / MODEL_FILE
    if reevaluate and saved != current and _eval_changes(saved, current) is not None:
        model_header = _check_model(model_path, path)
        trained = {"config": model_header.get("config"), "fingerprint": model_header.get("fingerprint")}
        trained["seeds"] = [r.get("seed") for r in model_header.get("runs") or [] if isinstance(r, dict)]
        if json_roundtrip(trained) != {k: current[k] for k in trained}:
            raise CheckpointError(
                f"{model_path} was not trained with the settings of {path} (its config, data or seeds differ); "
                f"{_redo_hint(path)}"
            )
        return record
    if saved != current:
        diff = ", ".join(_differences(saved, current)[:6])
        raise CheckpointError(
            f"{path} was computed with other settings (differs in: {diff}); "
            "rerun with --overwrite or choose another --out"
        )
    _load_images(path.with_suffix(".npz"), path)
    _check_model(model_path, path)
    return record


def _eval_changes(saved: dict, current: dict) -> list[str] | None:
    """The evaluation settings (names under :data:`EVAL_HEADER_KEY`) in which two row headers differ,
    or None when they differ anywhere else too (training: data, config, seeds, format).

    An empty list means equal headers."""
    rest = lambda h: {k: v for k, v in h.items() if k != EVAL_HEADER_KEY}
    if rest(saved) != rest(current):
        return None
    return [
        name.removeprefix(EVAL_HEADER_KEY + ".")
        for name in _differences(saved.get(EVAL_HEADER_KEY), current.get(EVAL_HEADER_KEY), EVAL_HEADER_KEY + ".")
    ]


def _check_model(path: Path, record_path: Path) -> dict:
    """A finished row's model (``models/<label>/model.msgpack``) exists, is a jaxrae model and passes its
    SHA-256 checks; returns its header.

    Otherwise a one-line CheckpointError naming the record to delete, so that a resumed
    comparison never reports a row whose model :func:`jaxrae.load_runs` could not give back.
    """
    if not path.exists():
        raise CheckpointError(f"{path} is missing: a finished row keeps its model there; {_redo_hint(record_path)}")
    _, header = load_checkpoint(path, redo=_redo_hint(record_path))
    if not isinstance(header, dict) or header.get("model_format") != MODEL_FORMAT:
        raise CheckpointError(f"{path} is not a {MODEL_FORMAT} model; {_redo_hint(record_path)}")
    return header


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
    should_stop: Callable[[], bool] | None = None,
    tensorboard: bool = True,
    wandb: bool = False,
) -> dict:
    """Train all seeds of one row (a method or a variant; resuming its checkpoint), evaluate them,
    save the record ``out/methods/<label>.json``. Live logs (:mod:`jaxrae.runlog`): the training
    curves per chunk and every evaluation metric (``eval/<name>``, at the last step) per seed, as
    TensorBoard files in ``out/tensorboard/<label>/seed<s>/`` and, with ``wandb``, W&B runs.

    ``should_stop`` is asked after every training chunk (:func:`jaxrae.train.train`): when it
    answers True, training raises KeyboardInterrupt once that chunk's checkpoint is written, and
    rerunning resumes from it. An evaluation under way is not cut short: it is asked again after
    the row (between rows in :func:`run_compare`)."""
    config = row_config(experiment, label, data)
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
            should_stop=should_stop,
        )
        if int(np.asarray(runs.state.step).min()) < config.steps:
            raise CompareInterrupted(
                f"{label} stopped at step {int(np.asarray(runs.state.step).min())} of {config.steps}"
            )
        if distributed.is_primary():  # before the evaluation: a crash there keeps the trained model
            save_runs(runs, out / ROW_MODELS_DIR / label)
        return _evaluate_row(label, experiment, data, fnet, out, runs, logger)


def reevaluate_method(
    label: str,
    experiment: Experiment,
    data,
    fnet,
    out: Path,
    record: dict,
    *,
    tensorboard: bool = True,
    wandb: bool = False,
) -> dict:
    """Evaluate a finished row again from its saved model (``out/models/<label>/``), without training.

    For a row whose record (``record``, read from ``out/methods/<label>.json``) was computed with
    other evaluation settings only (:func:`_eval_changes`): the model is read with
    :func:`jaxrae.train.load_runs`, evaluated under the current settings, and the record and
    images rewritten with the current header. The record keeps the training's times
    (``train_s``, ``compile_s``) and loss curve from ``record``, with the new ``eval_s``; its
    per-seed ok flags, divergence steps and final losses come from the model, which must agree
    with ``record`` (otherwise a CheckpointError: the model is not the one the record describes).
    """
    record_path = out / "methods" / f"{label}.json"
    runs = load_runs(out, row=label)
    if runs.runs != record["runs"] or runs.diverged_at.tolist() != record["diverged_at"]:
        raise CheckpointError(
            f"{out / ROW_MODELS_DIR / label / MODEL_FILE} holds other runs than {record_path} describes "
            f"(their seeds, swept values or divergence steps differ); {_redo_hint(record_path)}"
        )
    with RunLogger(
        out / "tensorboard" / label if tensorboard else None, wandb=wandb, group=label, config=runs.config.to_dict()
    ) as logger:
        if distributed.is_primary():  # train() opens the logger of a row it trains; here nothing did
            logger.open(run_names(runs.runs))
        trained = {k: record["times"].get(k) for k in ("train_s", "compile_s")}
        return _evaluate_row(
            label,
            experiment,
            data,
            fnet,
            out,
            runs,
            logger,
            trained=(trained, record["loss_curve"]),
            group=record.get("group"),
        )


def _evaluate_row(
    label: str, experiment: Experiment, data, fnet, out: Path, runs, logger: RunLogger, *, trained=None, group=None
) -> dict:
    """Evaluate one row's trained ``runs``, log the metrics, write its images and (last) its record; returns the record.

    ``trained``: ``(times, loss_curve)`` of the training when ``runs`` were read from the row's
    saved model rather than trained now (:func:`reevaluate_method`); None takes both from ``runs``.
    ``group``: for a row trained together with others (:func:`run_group`), the record's ``group``
    entry (the rows, the group's times); a row trained alone has none, as before groups existed.
    """
    config = runs.config
    n_eval = min(experiment.n_eval, data.n_test)
    header = _row_header(experiment, label, data, fnet, n_eval)
    record_path = out / "methods" / f"{label}.json"
    t0 = time.perf_counter()
    values, images, notes = evaluate(
        runs,
        data,
        fnet,
        n_eval=experiment.n_eval,
        n_components=experiment.n_components,
        likelihood_k=experiment.likelihood_k,
        n_init=experiment.n_init,
        ex_post_refits=experiment.ex_post_refits,
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
    if trained is not None:
        times, curve = trained
        record["times"] = {**times, "eval_s": eval_s}
        record["loss_curve"] = curve
    if group is not None:
        record["group"] = dict(group)
    record = nonfinite_to_null(record)  # the same values a later resume reads back
    if distributed.is_primary():
        atomic_write_npz(out / "methods" / f"{label}.npz", {k: np.asarray(v, np.float32) for k, v in images.items()})
        atomic_write_json(record_path, record)  # last: its presence marks the row as done
    return record


# --------------------------------------------------------------------------------------------
# Rows that differ only in swept hyperparameters: one program per group

#: ``models/<label>/GROUP_FILE``: with which rows a row trained, and the group's times (read when the
#: row is evaluated from its saved model after an interruption).
GROUP_FILE = "group.json"


def _sweep_point(config: TrainConfig) -> tuple[float, ...]:
    """The config's values of the swept hyperparameters, in :data:`jaxrae.train.SWEEPABLE` order,
    as :func:`jaxrae.train.run_grid` writes them into a run."""
    return tuple(float(getattr(config, name)) for name in SWEEPABLE)


def training_groups(experiment: Experiment, labels, data) -> list[list[str]]:
    """``labels`` partitioned into the rows that train as one program each, in the order of ``labels``.

    Rows whose :func:`row_config` on ``data`` are equal but for the fields of
    :data:`jaxrae.train.SWEEPABLE` (lr, beta, lam, tau; beta and lam as resolved for the images)
    can train in one :func:`jaxrae.train.train` call with ``sweep``: the weights are per-run
    values in the state (:class:`jaxrae.grid.HParams`), so the program is the same. A sweep is
    the product of its axes' values, so a set of rows goes together only when their points are
    exactly such a product (the estimator grid's three temperatures are; rows at (beta, lam) =
    (1, 1) and (2, 2) are not, and split along one axis into groups that each vary in one field).
    Two rows with the same point (the same config under two labels) never share a group: each
    keeps its own runs. With ``experiment.group_sweepable`` false every row is its own group.
    """
    labels = list(labels)
    if not experiment.group_sweepable:
        return [[label] for label in labels]
    configs = {label: row_config(experiment, label, data) for label in labels}
    classes: dict[str, list[str]] = {}
    for label in labels:
        rest = {k: v for k, v in configs[label].to_dict().items() if k not in SWEEPABLE}
        classes.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(label)
    groups = []
    for members in classes.values():
        layers: list[list[str]] = []  # the k-th row at a point goes to layer k: each layer's points are distinct
        seen: dict[tuple, int] = {}
        for label in members:
            point = _sweep_point(configs[label])
            k = seen.get(point, 0)
            seen[point] = k + 1
            if k == len(layers):
                layers.append([])
            layers[k].append(label)
        for layer in layers:
            groups += _product_groups(layer, {label: _sweep_point(configs[label]) for label in layer})
    return sorted(groups, key=lambda g: labels.index(g[0]))


def _product_groups(labels: list[str], points: Mapping[str, tuple]) -> list[list[str]]:
    """Distinct sweep points split into sets that are each a product of per-axis values (one sweep each).

    n distinct points lie in the product of their axes' value sets, so they fill it exactly when
    n equals its size. Otherwise they split along the axis with the most values: the rows that
    agree on every other axis vary in that one alone, a one-axis product."""
    axes = [i for i in range(len(SWEEPABLE)) if len({points[label][i] for label in labels}) > 1]
    sizes = [len({points[label][i] for label in labels}) for i in axes]
    if math.prod(sizes) == len(labels):
        return [list(labels)]
    along = axes[max(range(len(axes)), key=lambda j: (sizes[j], -j))]
    parts: dict[tuple, list[str]] = {}
    for label in labels:
        parts.setdefault(tuple(v for i, v in enumerate(points[label]) if i != along), []).append(label)
    return list(parts.values())


def group_sweep(configs) -> dict[str, list[float]]:
    """The ``sweep`` of :func:`jaxrae.train.train` that trains every config of a group: per swept
    field that differs between them, its values in order of first appearance."""
    sweep = {}
    for i, name in enumerate(SWEEPABLE):
        values = list(dict.fromkeys(_sweep_point(config)[i] for config in configs))
        if len(values) > 1:
            sweep[name] = values
    return sweep


def group_checkpoint(out: Path, group) -> Path:
    """Where a group of rows keeps its training checkpoint: ``checkpoints/<a>,<b>,....msgpack``.

    A comma is no label character (:data:`jaxrae.experiment.ROW_LABEL`), so a group's file never
    takes a row's name, and another set of rows gets another file (a long list is cut to its first
    label, the count and a digest of all). A row alone keeps ``checkpoints/<label>.msgpack``."""
    name = ",".join(group)
    if len(name) > 160:  # file names are limited to 255 bytes
        name = f"{group[0]},+{len(group) - 1},{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return out / "checkpoints" / f"{name}.msgpack"


class _GroupLogger(RunLogger):
    """The live logs of a group's training: :func:`jaxrae.train.train` logs every run of the group
    here, and each row's own logger (``tensorboard/<label>/seed<s>/``, named as when the row trains
    alone) receives that row's runs."""

    def __init__(self, loggers: Mapping[str, RunLogger], runs: Mapping[str, list[dict]], indices):
        super().__init__(None)
        self.rows, self.row_runs, self.indices = dict(loggers), dict(runs), dict(indices)

    def open(self, names) -> None:
        self.names = list(names)
        for label, logger in self.rows.items():
            logger.open(run_names(self.row_runs[label]))

    def log(self, step: int, scalars) -> None:
        for label, logger in self.rows.items():
            logger.log(step, {tag: np.asarray(v)[self.indices[label]] for tag, v in scalars.items()})

    def close(self) -> None:  # the rows' loggers stay open for their evaluation; their owner closes them
        self.names = None


def _row_of_group(runs: Runs, config: TrainConfig, data, indices: list[int], share: float) -> Runs:
    """One row's runs out of a group's: its runs, state and metrics, its own config, model and codec
    (what training it alone builds), and ``share`` of the group's times."""
    trainer = make_train(config, data)
    take = lambda a: np.asarray(a)[indices]
    return dataclasses.replace(
        runs,
        config=trainer.config,
        runs=[runs.runs[i] for i in indices],
        state=jax.tree.map(take, runs.state),
        metrics={k: take(v) for k, v in runs.metrics.items()},
        model=trainer.model,
        codec=trainer.codec,
        wall_time_s=runs.wall_time_s * share,
        compile_time_s=runs.compile_time_s * share,
    )


def run_group(
    group: list[str],
    experiment: Experiment,
    data,
    fnet,
    out: Path,
    *,
    progress: bool = True,
    progress_desc: str | None = None,
    stop_after_chunks: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    tensorboard: bool = True,
    wandb: bool = False,
    on_record: Callable[[str, dict], None] | None = None,
) -> dict[str, dict]:
    """Train the rows of ``group`` (one of :func:`training_groups`, two or more) as one program,
    then save, evaluate and record each as :func:`run_method` does; returns the records by label.

    One :func:`jaxrae.train.train` call with :func:`group_sweep` trains every row's seeds (its
    checkpoint: :func:`group_checkpoint`, resumed after an interruption). Each row's runs are then
    cut out (:func:`_row_of_group`) and every row's model saved before any is evaluated, so an
    interruption during the evaluations loses no training: the rows left are evaluated from their
    models on resume. Each row logs to ``tensorboard/<label>/`` as alone; its record holds
    ``group`` (the rows, the group's ``train_s`` and ``compile_s``) and, as ``times``, its share
    (1/n) of them. ``should_stop`` is asked after every chunk and between the rows' evaluations;
    ``on_record(label, record)`` is called as each row's record is written.
    """
    configs = {label: row_config(experiment, label, data) for label in group}
    base = configs[group[0]]
    sweep = group_sweep(list(configs.values()))
    grid = run_grid(base, experiment.seeds, sweep)
    indices = {
        label: [i for i, r in enumerate(grid) if tuple(r[n] for n in SWEEPABLE) == _sweep_point(config)]
        for label, config in configs.items()
    }
    assert all(len(ix) == len(experiment.seeds) for ix in indices.values()), (group, sweep)
    with contextlib.ExitStack() as stack:
        loggers = {
            label: stack.enter_context(
                RunLogger(
                    out / "tensorboard" / label if tensorboard else None,
                    wandb=wandb,
                    group=label,
                    config=configs[label].to_dict(),
                )
            )
            for label in group
        }
        runs = train(
            base,
            data,
            experiment.seeds,
            sweep=sweep,
            checkpoint_path=group_checkpoint(out, group),
            progress=progress,
            progress_desc=progress_desc or " + ".join(group),
            stop_after_chunks=stop_after_chunks,
            logger=_GroupLogger(loggers, {label: [grid[i] for i in ix] for label, ix in indices.items()}, indices),
            should_stop=should_stop,
        )
        reached = int(np.asarray(runs.state.step).min())
        if reached < base.steps:
            raise CompareInterrupted(f"{', '.join(group)} (trained together) stopped at step {reached} of {base.steps}")
        together = {
            "rows": list(group),
            "train_s": runs.wall_time_s,
            "compile_s": runs.compile_time_s,
            "times": f"this row's times.train_s and times.compile_s are its share, 1/{len(group)}, of the group's",
        }
        rows = {label: _row_of_group(runs, configs[label], data, indices[label], 1 / len(group)) for label in group}
        del runs
        if distributed.is_primary():  # every model before any evaluation: a crash there keeps them all
            for label in group:
                atomic_write_json(out / ROW_MODELS_DIR / label / GROUP_FILE, together)
                save_runs(rows[label], out / ROW_MODELS_DIR / label)
        records = {}
        for k, label in enumerate(group):
            if k and should_stop is not None and stop_agreed(should_stop):
                raise KeyboardInterrupt
            record = _evaluate_row(label, experiment, data, fnet, out, rows.pop(label), loggers[label], group=together)
            records[label] = record
            if on_record is not None:
                on_record(label, record)
    return records


def _trained_model(out: Path, label: str, experiment: Experiment, data) -> tuple[Runs, dict | None] | None:
    """A row's saved model and group entry when the row trained with others and was not evaluated:
    the model of its current settings, every run at its last step, and no checkpoint of its own
    (a row with one continues from it, as it trained alone); else None (it trains)."""
    path = out / ROW_MODELS_DIR / label / MODEL_FILE
    if not path.exists() or (out / "checkpoints" / f"{label}.msgpack").exists():
        return None
    try:
        runs = load_runs(out, row=label)
    except CheckpointError:
        return None  # damaged: trained again, which rewrites it
    config = row_config(experiment, label, data)
    same = (
        json_roundtrip(runs.config.to_dict()) == json_roundtrip(config.to_dict())
        and runs.data_fingerprint == data.fingerprint
        and runs.runs == json_roundtrip(run_grid(config, experiment.seeds))
        and int(np.asarray(runs.state.step).min()) == config.steps
    )
    if not same:
        return None
    try:
        group = json.loads((path.parent / GROUP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        group = None
    return runs, group


def _evaluate_trained(
    label: str, experiment: Experiment, data, fnet, out: Path, runs: Runs, group, *, tensorboard=True, wandb=False
) -> dict:
    """Evaluate and record a row from the model it trained with its group (:func:`_trained_model`)."""
    with RunLogger(
        out / "tensorboard" / label if tensorboard else None, wandb=wandb, group=label, config=runs.config.to_dict()
    ) as logger:
        if distributed.is_primary():
            logger.open(run_names(runs.runs))
        return _evaluate_row(label, experiment, data, fnet, out, runs, logger, group=group)


def trained_together(records: Mapping[str, dict]) -> list[list[str]]:
    """Which rows trained as one program, from their records: each grouped row's ``group.rows``, and
    every other row alone (rows finished before groups existed trained alone)."""
    groups: list[list[str]] = []
    for label, record in records.items():
        rows = list((record.get("group") or {}).get("rows") or [label])
        if rows not in groups:
            groups.append(rows)
    return groups


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
    interrupted row continues from ``out/checkpoints/<label>.msgpack``. The rows left to train
    go in :func:`training_groups` (unless ``experiment.group_sweepable`` is false): a group of
    several trains as one program (:func:`run_group`, resumed from its own checkpoint); a row of
    a group that trained but was not evaluated is evaluated from its saved model; a row alone,
    and a row with a checkpoint of its own, trains as :func:`run_method`. ``out`` must be empty
    unless ``resume`` or ``overwrite``. ``stop_after_chunks`` stops the first row (or group) that still
    trains after that many chunks and raises :class:`CompareInterrupted` (for resume tests);
    ``figures=False`` writes the tables and results but no PNGs. ``command`` (the shell line
    that ran this, e.g. ``jaxrae compare --config ...``) heads table.md and is kept in results.json.
    ``should_stop`` is asked after every training chunk (:func:`jaxrae.train.train`), between
    rows and before the outputs are written; when it answers True the comparison stops with
    KeyboardInterrupt (the CLI passes whether Ctrl-C was pressed), leaving a resumable directory:
    the chunk's checkpoint, or the record of a row whose evaluation was under way, is written first.
    A finished row whose evaluation settings alone changed is re-evaluated from its saved model
    (:func:`reevaluate_method`) and says so in one line; any other change is a CheckpointError.

    Everything is validated before ``out`` is touched (the experiment when it was built; here the
    data and every row against it), then ``out`` is claimed for the whole run
    (:func:`jaxrae.io.prepare_out_dir`: locked, and emptied only now when ``overwrite``).
    ``tensorboard`` and ``wandb`` choose the live logs of :func:`run_method`.
    """
    if wandb:
        require_wandb()  # before anything is written or trained
    t_start = time.perf_counter()
    out = Path(out)
    data = load_data(
        experiment.data, n_train=experiment.n_train, n_test=experiment.n_test, validation=experiment.validation_fraction
    )
    check_runnable(experiment, data)
    check_tunable(experiment, data)
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
    planned = experiment  # as written; with [tune], `experiment` becomes the same rows at their chosen weights
    experiment, tuning = tune_rows(planned, data, fnet, out, progress=progress, log=log, should_stop=should_stop)
    n_eval = min(experiment.n_eval, data.n_test)
    labels = list(experiment.rows)
    headers = {label: json_roundtrip(_row_header(experiment, label, data, fnet, n_eval)) for label in labels}
    # Every finished row's files are read and checked before any row trains: a damaged one stops
    # the run here, before new training is spent or an output is rewritten.
    finished = {
        label: _load_finished(out / "methods" / f"{label}.json", headers[label], reevaluate=True) for label in labels
    }
    # Rows whose group trained but which were not evaluated yet are evaluated from their models;
    # the others left to train go in groups (a row with a checkpoint of its own continues alone).
    todo = [label for label in labels if finished[label] is None]
    saved = {label: m for label in todo if (m := _trained_model(out, label, experiment, data)) is not None}
    alone = [label for label in todo if label not in saved and (out / "checkpoints" / f"{label}.msgpack").exists()]
    groups = training_groups(experiment, [label for label in todo if label not in saved and label not in alone], data)
    group_of = {label: group for group in groups + [[label] for label in alone] for label in group}

    bar = None
    if progress:
        bar = tqdm(total=len(labels), desc="compare", unit="row", position=0, dynamic_ncols=True)
    say = (lambda msg: bar.write(msg)) if bar is not None else log
    records: dict[str, dict] = {}

    def trained_line(label, record):
        t, group = record["times"], record.get("group")
        share = "" if group is None else f" (1/{len(group['rows'])} of the group {', '.join(group['rows'])})"
        return (
            f"{label}: {sum(record['ok'])}/{len(record['ok'])} ok, "
            f"{report.convergence_text(record['convergence'])}, train {t['train_s']:.1f}s "
            f"+ compile {t['compile_s']:.1f}s{share} + eval {t['eval_s']:.1f}s"
        )

    def grouped_record(label, record):
        records[label] = record
        say(trained_line(label, record))
        if bar is not None:
            bar.update(1)

    try:
        for index, label in enumerate(labels):
            if label in records:  # evaluated with its group
                continue
            if should_stop is not None and stop_agreed(should_stop):
                raise KeyboardInterrupt
            record = finished[label]
            changed = None if record is None else _eval_changes(record["header"], headers[label])
            if changed:
                say(f"{label}: evaluation settings changed ({', '.join(changed)}); re-evaluating the saved model")
                if bar is not None:
                    bar.set_postfix_str(f"{label}: evaluation")
                record = reevaluate_method(
                    label, experiment, data, fnet, out, record, tensorboard=tensorboard, wandb=wandb
                )
                say(f"{label}: re-evaluated in {record['times']['eval_s']:.1f}s")
            elif record is not None:
                say(f"{label}: finished earlier, loaded from {out / 'methods' / (label + '.json')}")
            elif label in saved:
                say(f"{label}: trained earlier with its group; evaluating the saved model")
                if bar is not None:
                    bar.set_postfix_str(f"{label}: evaluation")
                record = _evaluate_trained(
                    label, experiment, data, fnet, out, *saved.pop(label), tensorboard=tensorboard, wandb=wandb
                )
                say(trained_line(label, record))
            elif len(group_of[label]) > 1:
                group = group_of[label]
                if bar is not None:
                    bar.set_postfix_str(f"{', '.join(group)}: training together + evaluation")
                run_group(
                    group,
                    experiment,
                    data,
                    fnet,
                    out,
                    progress=progress,
                    progress_desc=f"{' + '.join(group)} [{len(group)} rows, {index + 1}/{len(labels)}]",
                    stop_after_chunks=stop_after_chunks,
                    should_stop=should_stop,
                    tensorboard=tensorboard,
                    wandb=wandb,
                    on_record=grouped_record,
                )
                continue
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
                    should_stop=should_stop,
                    tensorboard=tensorboard,
                    wandb=wandb,
                )
                say(trained_line(label, record))
            records[label] = record
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if should_stop is not None and stop_agreed(should_stop):
        raise KeyboardInterrupt

    records = {label: records[label] for label in labels}  # a group's rows were recorded at its first row
    results = assemble_results(experiment, data, fnet, records, n_eval)
    results["times"] = {"this_invocation_s": time.perf_counter() - t_start, "feature_network_s": feature_s}
    results["command"] = command
    record_tuning(results, planned, tuning, data)
    if distributed.is_primary():
        write_outputs(results, records, out, figures=figures)
        atomic_write_json(out / "experiment.json", planned.to_dict())
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
    (:func:`row_convergence` under the experiment's criterion). ``training_groups`` lists which
    rows trained as one program (:func:`trained_together`).
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
            "n_init": experiment.n_init,
            "ex_post_refits": experiment.ex_post_refits,
            "likelihood": likelihood_settings(experiment, records),
        },
        "metric_names": {k: v[1] for k, v in report.METRICS.items()},
        "methods": methods,
        "training_groups": trained_together(records),
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


# --------------------------------------------------------------------------------------------
# Tuned mode: each row's weights chosen on the validation split

TUNING_FORMAT = "jaxrae-tuning-v1"


def check_tunable(experiment: Experiment, data) -> None:
    """ConfigError unless the ``[tune]`` block can run on ``data`` (nothing to check without one).

    The validation split must hold at least ``k + 2`` images (precision/recall of the criterion's
    evaluation), and every row's candidates must be valid configs that train on ``data`` at the
    tuning budget. Run before anything trains, like :func:`check_runnable`.
    """
    tune = experiment.tune
    if tune is None:
        return
    require(
        data.n_val >= PR_NEIGHBOURS + 2,
        "tune.validation",
        data.validation,
        f"the validation split of {data.name} holds {data.n_val} images; the evaluation of a candidate needs at "
        f"least {PR_NEIGHBOURS + 2} (k={PR_NEIGHBOURS} nearest neighbours + 2): raise the fraction or n_train",
    )
    for label in experiment.rows:
        config = row_config(experiment, label, data)
        try:
            run_grid(_tuning_config(experiment, config), tune.seeds, tune.candidates(config))
            make_train(_tuning_config(experiment, config), data)
        except ConfigError as e:
            raise ConfigError(f"row {label}: [tune]: {e}") from None


def _tuning_config(experiment: Experiment, config):
    """The row's config at the tuning budget: ``tune.steps``, capped at the row's own steps."""
    steps = config.steps if experiment.tune.steps is None else min(experiment.tune.steps, config.steps)
    return config.replace(steps=steps)


def _tuning_header(experiment: Experiment, label: str, data, fnet) -> dict:
    """What a row's tuning record depends on; a saved one is reused only if it matches.

    Only what reaches this row: its candidates (a grid of a weight its method does not read
    changes nothing here), the criterion, the tuning seeds and config, the data and the evaluation.
    """
    tune, config = experiment.tune, row_config(experiment, label, data)
    return {
        "format": TUNING_FORMAT,
        "data": experiment.data,
        "fingerprint": data.fingerprint,
        "config": config.to_dict(),
        "tune": {
            "candidates": tune.candidates(config),
            "multipliers": {w: list(getattr(tune, w)) for w in tune.weights(config)},
            "criterion": tune.criterion,
            "seeds": list(tune.seeds),
        },
        "tuning_config": _tuning_config(experiment, config).to_dict(),
        "eval": {
            "n_val": data.n_val,
            "n_components": experiment.n_components,
            "k": PR_NEIGHBOURS,
            "eval_seed": EVAL_SEED,
            "feature_steps": fnet.steps,
            "feature_version": fnet.version,
            "n_init": experiment.n_init,
            "ex_post_refits": experiment.ex_post_refits,
        },
    }


def choose_candidate(scores: list[float | None], distances: list[float], better: str) -> int:
    """Index of the best candidate: the best finite score (lowest, or highest when ``better`` is
    ``"higher"``); ties (equal scores) go to the candidate nearest the row's own weights
    (``distances``: sum over weights of ``|log multiplier|``), then to the first in grid order. A
    candidate without a finite score (a diverged run) ranks last, so when none has one the choice
    falls back to the candidate nearest the row's own weights."""
    sign = -1.0 if better == "higher" else 1.0

    def rank(i):
        score = scores[i]
        finite = score is not None and math.isfinite(score)
        return (sign * score if finite else math.inf, distances[i], i)

    return min(range(len(scores)), key=rank)


def tune_row(
    label: str,
    experiment: Experiment,
    data,
    fnet,
    out: Path,
    *,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Choose one row's weights on the validation split; returns (and saves) its tuning record.

    Every candidate (the product of :meth:`jaxrae.experiment.Tune.candidates`) and tuning seed
    trains in one vmapped program (:func:`jaxrae.train.train` with ``sweep``) on ``data``'s
    training split, at the tuning budget; :func:`jaxrae.evaluate.evaluate` then scores every run on
    :func:`jaxrae.data.validation_view` (the validation images in the place of the test images, so
    the test split is never read), and a candidate's score is the mean of ``tune.criterion`` over
    its seeds (None if a seed has none: diverged). :func:`choose_candidate` picks. The record
    (``out/tuning/<label>.json``, written atomically) holds every candidate's values, multipliers,
    per-seed values and score, and the choice; a record of the same settings is reused, one of
    other settings is a CheckpointError. A row whose method reads none of the grids' weights
    trains nothing here and keeps its own weights. ``should_stop`` reaches the sweep's training
    (:func:`jaxrae.train.train`): a stop request ends it at a chunk boundary, resumable.
    """
    tune = experiment.tune
    config = row_config(experiment, label, data)
    header = _tuning_header(experiment, label, data, fnet)
    path = out / "tuning" / f"{label}.json"
    saved = _load_tuning(path, header)
    if saved is not None:
        return saved
    grid = tune.candidates(config)
    weights = list(grid)
    record = {
        "header": header,
        "method": label,
        "criterion": tune.criterion,
        "better": TUNE_CRITERIA[tune.criterion],
        "weights": weights,
        "own": {w: getattr(config, w) for w in weights},
        "seeds": list(tune.seeds),
        "steps": _tuning_config(experiment, config).steps,
        "candidates": [],
        "chosen": {},
        "chosen_multipliers": {},
        "chosen_index": None,
    }
    if weights:
        runs = train(
            _tuning_config(experiment, config),
            data,
            tune.seeds,
            sweep=grid,
            checkpoint_path=out / "tuning" / f"{label}.msgpack",
            progress=progress,
            progress_desc=f"{label} tuning",
            should_stop=should_stop,
        )
        values, _, _ = evaluate(
            runs,
            validation_view(data),
            fnet,
            n_eval=data.n_val,
            n_components=experiment.n_components,
            n_init=experiment.n_init,
            ex_post_refits=experiment.ex_post_refits,
        )
        per_run = values[tune.criterion]
        n_seeds = len(tune.seeds)
        candidates = []
        # run_grid's order: the product of the swept values (first weight slowest), seeds fastest
        for c, index in enumerate(itertools.product(*(range(len(grid[w])) for w in weights))):
            first = runs.runs[c * n_seeds]
            assert all(first[w] == grid[w][i] for w, i in zip(weights, index)), (first, index)
            per_seed = [None if not math.isfinite(v) else float(v) for v in per_run[c * n_seeds : (c + 1) * n_seeds]]
            candidates.append(
                {
                    **{w: grid[w][i] for w, i in zip(weights, index)},
                    "multipliers": {w: getattr(tune, w)[i] for w, i in zip(weights, index)},
                    "per_seed": per_seed,
                    "score": None if None in per_seed else float(np.mean(per_seed)),
                }
            )
        distances = [sum(abs(math.log(m)) for m in cand["multipliers"].values()) for cand in candidates]
        best = choose_candidate([cand["score"] for cand in candidates], distances, record["better"])
        record["chosen"] = {w: candidates[best][w] for w in weights}
        record["chosen_multipliers"] = dict(candidates[best]["multipliers"])
        record["chosen_index"] = best
        record["candidates"] = candidates
        record["fallback"] = candidates[best]["score"] is None
    record = nonfinite_to_null(record)
    if distributed.is_primary():
        atomic_write_json(path, record)
    return record


def _load_tuning(path: Path, header: dict) -> dict | None:
    """A row's tuning record if it exists and matches ``header``, else None; a damaged record, or one
    of other settings, is a one-line CheckpointError saying what to delete."""
    if not path.exists():
        return None
    hint = f"delete {path} to tune {path.stem} again, or rerun with --overwrite"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        complete = isinstance(record["header"], dict) and isinstance(record["chosen"], dict)
        complete = complete and isinstance(record["candidates"], list)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable or truncated ({type(e).__name__}); {hint}") from None
    except (KeyError, TypeError):
        complete = False
    if not complete:
        raise CheckpointError(f"{path} lacks part of a tuning record (header, candidates or choice); {hint}")
    if record["header"] != json_roundtrip(header):
        diff = ", ".join(_differences(record["header"], json_roundtrip(header))[:6])
        raise CheckpointError(f"{path} was computed with other settings (differs in: {diff}); {hint}")
    return record


def tune_rows(
    experiment: Experiment,
    data,
    fnet,
    out: Path,
    *,
    progress: bool = True,
    log: Callable = print,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[Experiment, dict | None]:
    """The tuning stage: every row's weights chosen on validation (:func:`tune_row`), before any row trains.

    Returns the experiment with each row's chosen weights set in its own table
    (:meth:`jaxrae.experiment.Experiment.with_row_fields`, so the comparison then runs, resumes
    and reports the rows as usual) and the tuning records by row; without ``[tune]``,
    ``(experiment, None)``. ``should_stop`` is asked before each row, as in the comparison.
    """
    if experiment.tune is None:
        return experiment, None
    rows = {}
    for label in experiment.rows:
        if should_stop is not None and stop_agreed(should_stop):
            raise KeyboardInterrupt
        record = tune_row(label, experiment, data, fnet, out, progress=progress, should_stop=should_stop)
        rows[label] = record
        if record["weights"]:
            chosen = ", ".join(
                f"{w}={record['chosen'][w]:.4g} (x{record['chosen_multipliers'][w]:g})" for w in record["weights"]
            )
            score = record["candidates"][record["chosen_index"]]["score"]
            shown = "not finite for any candidate: nearest the row's own weights" if score is None else f"{score:.4g}"
            log(f"{label}: tuned on validation, {chosen}; validation {record['criterion']} {shown}")
        else:
            log(
                f"{label}: nothing to tune (its method reads no weight that [tune] grids, or has it at 0); own weights kept"
            )
    tuned = experiment.with_row_fields({label: r["chosen"] for label, r in rows.items()})
    return tuned, rows


def record_tuning(results: dict, planned: Experiment, tuning: Mapping[str, dict] | None, data) -> None:
    """Put the tuned mode into ``results``: the block and validation split (``tuning``), each row's
    record without its header (``methods.<label>.tuning``), and the experiment as written (with
    ``[tune]``, rows at their own weights). Without tuning, ``results`` is left as it is."""
    if tuning is None:
        return
    results["experiment"] = planned.to_dict()
    results["tuning"] = {
        **planned.tune.to_dict(),
        "validation": data.validation,  # the fraction carved, by [tune] or by the data spec
        "better": TUNE_CRITERIA[planned.tune.criterion],
        "n_val": data.n_val,
        "n_train": data.n_train,
    }
    for label, record in tuning.items():
        if label in results["methods"]:
            results["methods"][label]["tuning"] = {k: v for k, v in record.items() if k != "header"}
