"""The ``jaxrae`` command: ``methods``, ``train``, ``compare`` and ``report``; every argparse line of jaxrae.

Errors a user can cause (a config value, a data file, a checkpoint, an output directory) are
printed as one line, ``jaxrae: error: ...``, with exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxrae import compare, distributed, methods, report
from jaxrae.config import TrainConfig, field_names
from jaxrae.data import load_data
from jaxrae.errors import CheckpointError, ConfigError, JaxraeError, invalid, require
from jaxrae.evaluate import finite_or_nan
from jaxrae.experiment import (
    DEFAULT_DATA,
    DEFAULT_JOB_CONFIG,
    DEFAULT_METHODS,
    DEFAULT_N_COMPONENTS,
    DEFAULT_N_EVAL,
    DEFAULT_SEEDS,
    Experiment,
    load_experiment,
    seed_count,
)
from jaxrae.io import atomic_write_json, atomic_write_text, json_roundtrip, prepare_out_dir
from jaxrae.metrics import code_usage, reconstruction_error
from jaxrae.provenance import environment
from jaxrae.runlog import RunLogger
from jaxrae.train import TRAIN_MODEL_DIR, check_seeds, make_train, run_grid, save_runs, train

#: The feature-network cache directory (read by :func:`jaxrae.features.default_cache_dir`).
FEATURE_CACHE_ENV = "JAXRAE_CACHE"


def parse_seeds(text: str) -> list[int]:
    """``"4"`` -> [0, 1, 2, 3]; ``"0,5,7"`` -> [0, 5, 7].

    ``train`` and ``compare`` accept the same seeds (:func:`jaxrae.train.check_seeds`): each in
    ``[0, 2**32)``, none repeated, at most ``MAX_SEEDS``; a count is at most ``MAX_SEEDS``.
    """
    try:
        values = [int(s) for s in text.split(",") if s.strip()] if "," in text else int(text)
    except ValueError:
        raise invalid("--seeds", text, "give a count (4) or a comma-separated list (0,5,7)") from None
    return list(check_seeds(values, "--seeds") if isinstance(values, list) else seed_count(values, "--seeds"))


def parse_sweep(items: list[str] | None) -> dict[str, list[float]]:
    """``["beta=1e-4,1e-3", "lr=1e-3"]`` -> {"beta": [1e-4, 1e-3], "lr": [1e-3]}."""
    sweep: dict[str, list[float]] = {}
    for item in items or []:
        name, sep, values = item.partition("=")
        require(sep and values, "--sweep", item, "write NAME=V1,V2,... (e.g. beta=1e-4,1e-3)")
        try:
            sweep[name.strip().replace("-", "_")] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise invalid("--sweep", item, "values must be numbers") from None
    return sweep


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--latent-dim``, ``--beta``, ...), default: the config's."""
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.name == "fsq_levels":
            parser.add_argument(
                flag,
                type=lambda s: tuple(int(v) for v in s.split(",")),
                default=None,
                help="comma-separated, e.g. 8,5,5,5",
            )
            continue
        # Annotations are strings ("int", "float | None", "str | None"): the first type parses.
        kind = {"int": int, "float": float}.get(str(field.type).split(" |")[0], str)
        parser.add_argument(flag, type=kind, default=None, help=f"TrainConfig.{field.name}")


def add_log_flags(parser: argparse.ArgumentParser) -> None:
    """``--no-tensorboard`` and ``--wandb``: where the per-run live logs go (jaxrae.runlog)."""
    parser.add_argument(
        "--no-tensorboard",
        dest="tensorboard",
        action="store_false",
        help="write no TensorBoard event files (default: <out>/tensorboard/<row>/<run>/)",
    )
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log every run to Weights & Biases (needs `pip install wandb`; "
        "project from WANDB_PROJECT, default jaxrae)",
    )


def config_from_args(args, **overrides):
    """A TrainConfig from the flags that were given (others keep their defaults)."""
    values = {name: getattr(args, name) for name in field_names() if getattr(args, name, None) is not None}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


def cmd_methods(args) -> int:
    """``jaxrae methods``: one line per preset, its four choices of the grid and its weights, with
    the pixel count the weights are stated at (``Method.weight_pixels``; ``-``: used as written)."""
    print(
        f"{'name':<11} {'encoder':<13} {'code':<15} {'latent_reg':<11} {'decoder_reg':<11} "
        f"{'beta':>9} {'lambda':>9} {'at px':>5}"
    )
    for name in methods.names():
        m = methods.get(name)
        px = "-" if m.weight_pixels is None else str(m.weight_pixels)
        print(
            f"{name:<11} {m.encoder:<13} {m.code:<15} {m.latent_reg:<11} {m.decoder_reg:<11} "
            f"{m.beta:>9.3g} {m.lam:>9.3g} {px:>5}  {m.summary}"
        )
    print(
        "beta and lambda stated 'at px' P0 pixels are used as w * P / P0 on images of P pixels "
        "(64/784 of them on 8x8 digits); '-': as written on every image size."
    )
    return 0


def cmd_train(args) -> int:
    """``jaxrae train``: one method, several seeds (and swept hyperparameters) in one program."""
    config = config_from_args(args)
    seeds = parse_seeds(args.seeds)
    sweep = parse_sweep(args.sweep)
    data = load_data(args.data)
    config = config.for_images(data.image_shape)  # the presets' weights for this image size
    run_grid(config, seeds, sweep)  # every sweep name and value, before --out is touched
    make_train(config, data)  # the config against the data (batch size, image shape)
    out = Path(args.out)
    logger = RunLogger(
        out / "tensorboard" / config.method_name if getattr(args, "tensorboard", True) else None,
        wandb=getattr(args, "wandb", False),
        group=config.method_name,
        config=config.to_dict(),
    )
    # With several processes (--distributed) one of them owns the output directory; the others
    # wait for it, train their share, and write nothing. --out must be on shared storage.
    primary = distributed.is_primary()
    with contextlib.ExitStack() as claim:
        if primary:
            claim.enter_context(prepare_out_dir(out, args.resume, args.overwrite))
            _write_train_config(
                out / "config.json", {"config": config.to_dict(), "data": args.data, "seeds": seeds, "sweep": sweep}
            )
        distributed.barrier("out-ready")
        with logger:
            runs = train(
                config,
                data,
                seeds,
                sweep=sweep,
                checkpoint_path=out / "checkpoint.msgpack",
                progress=not args.quiet,
                logger=logger,
                should_stop=getattr(args, "interrupt_requested", None),
            )
            if primary:  # the final model, for jaxrae.load_runs(out)
                save_runs(runs, out / TRAIN_MODEL_DIR)
            return _finish_train(args, config, data, runs, seeds, sweep, out, primary, logger)


def _write_train_config(path: Path, saved: dict) -> None:
    """Write ``config.json``, unless it exists: then it must hold the same settings (a resume of
    another configuration is refused before anything is written, so the directory stays consistent)."""
    if not path.exists():
        atomic_write_json(path, saved)
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable ({type(e).__name__}); rerun with --overwrite") from None
    now = json_roundtrip(saved)
    if before != now:
        old = before if isinstance(before, dict) else {}
        fields = [
            k
            for k in sorted(set(old.get("config") or {}) | set(now["config"]))
            if (old.get("config") or {}).get(k) != now["config"].get(k)
        ]
        fields += [k for k in sorted(set(old) | set(now)) if k != "config" and old.get(k) != now.get(k)]
        raise CheckpointError(
            f"{path} holds a run with other settings (differs in: {', '.join(fields) or 'its layout'}); "
            "rerun with the same flags to resume it, or with --overwrite to replace it"
        )


def _finish_train(args, config, data, runs, seeds, sweep, out: Path, primary: bool, logger: RunLogger) -> int:
    """Evaluate the trained runs on the test set, write history.json, print the table."""
    test = data.test_images
    codes = runs.encode(test)
    recs = runs.decode(codes)
    # A diverged run's reconstructions may be non-finite: its error is nan, not an exception.
    rec_err = np.array([finite_or_nan(reconstruction_error, test, r) for r in recs])
    if logger.names is not None:  # the process that logs (the primary)
        logger.log(config.steps, {"eval/test_reconstruction_error": rec_err})
    usage = [code_usage(c, runs.codec.n_classes) for c in codes] if runs.codec.discrete else None
    history = {
        "runs": runs.runs,
        "diverged_at": runs.diverged_at.tolist(),
        "test_reconstruction_error": rec_err.tolist(),
        "code_perplexity": None if usage is None else [u.mean_perplexity for u in usage],
        "distinct_codes": None if usage is None else [u.n_distinct_codes for u in usage],
        "metrics": {k: v.tolist() for k, v in runs.metrics.items()},
        "wall_time_s": runs.wall_time_s,
        "compile_time_s": runs.compile_time_s,
        "environment": environment(),
    }
    if not primary:
        return 0
    atomic_write_json(out / "history.json", history)
    print(
        f"{config.method_name} on {data.name}: {len(runs.runs)} run(s), {config.steps} steps, "
        f"{runs.wall_time_s:.1f}s training + {runs.compile_time_s:.1f}s compilation"
    )
    usage_head = f" {'perplexity':>10} {'distinct':>8}" if usage else ""
    print(
        f"{'run':>4} {'seed':>5} "
        + " ".join(f"{k:>8}" for k in sweep)
        + f" {'final loss':>11} {'test rec. err':>14}{usage_head}  status"
    )
    final = runs.summary()["final_loss"]
    for i, r in enumerate(runs.runs):
        status = "ok" if runs.diverged_at[i] < 0 else f"diverged at step {runs.diverged_at[i]}"
        usage_cols = f" {usage[i].mean_perplexity:>10.3g} {usage[i].n_distinct_codes:>8d}" if usage else ""
        print(
            f"{i:>4} {r['seed']:>5} "
            + " ".join(f"{r[k]:>8.3g}" for k in sweep)
            + f" {final[i]:>11.4g} {rec_err[i]:>14.4g}{usage_cols}  {status}"
        )
    if usage:
        print(
            f"code usage on the {len(test)} test images: mean perplexity per variable (of K={runs.codec.n_classes}) and distinct codes"
        )
    ok = runs.ok
    if ok.any():
        print(
            f"test reconstruction error (sum of squares per image): {rec_err[ok].mean():.4g} +- {rec_err[ok].std(ddof=1) if ok.sum() > 1 else 0.0:.2g} over {int(ok.sum())}/{len(ok)} runs"
        )
    logs = f", tensorboard/{config.method_name}/" if getattr(args, "tensorboard", True) else ""
    print(
        f"written to {out}/ (config.json, history.json, checkpoint.msgpack{logs}, {TRAIN_MODEL_DIR}/: jaxrae.load_runs)"
    )
    return 0


def default_out_dir(data: str) -> Path:
    """``runs/compare-<data>`` (characters other than letters, digits, ``-_.`` become ``_``)."""
    return Path("runs") / f"compare-{re.sub(r'[^A-Za-z0-9_.-]+', '_', data)}"


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``jaxrae compare`` flags (every TrainConfig field too, applied to every row)."""
    parser.description = (
        "Train every row (a method, or a labelled variant of one: see experiments/README.md) for every "
        "seed (one vmapped program per row), evaluate each seed "
        "(reconstruction error; FD in classifier features of reconstructions, prior samples, "
        "ex-post samples and interpolations; precision/recall; code log-likelihood; code usage), "
        "and write results.json, table.md/.csv and PNG figures. With no arguments: the main job, "
        f"{DEFAULT_DATA} x {','.join(DEFAULT_METHODS)} x {DEFAULT_SEEDS} seeds, "
        f"{DEFAULT_JOB_CONFIG['steps']} steps of batch {DEFAULT_JOB_CONFIG['batch_size']}, into "
        f"{default_out_dir(DEFAULT_DATA)}."
    )
    g = parser.add_argument_group("comparison")
    g.add_argument(
        "--config",
        dest="experiment_file",
        default=None,
        help="experiment TOML (experiments/<name>.toml); flags given here override its top-level keys "
        "and [config]; a TrainConfig flag for a field that a [variants.*] or [overrides.*] table "
        "sets is an error",
    )
    g.add_argument(
        "--data",
        default=None,
        help="digits | fashion_mnist | mnist | idx:<dir> | tfds:<name>, optionally with a "
        f"preprocessing suffix such as tfds:celeb_a@crop=140,image_size=64 (default {DEFAULT_DATA})",
    )
    g.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated presets (default {','.join(DEFAULT_METHODS)}; see `jaxrae methods`); "
        "they replace the file's methods, its [variants.*] rows stay",
    )
    g.add_argument("--seeds", default=None, help=f"a count (5 -> 0..4) or a list (0,5,7) (default {DEFAULT_SEEDS})")
    g.add_argument(
        "--baseline",
        default=None,
        help="method or variant label the others are compared to, paired over seeds (default: the first row)",
    )
    g.add_argument(
        "--n-eval",
        type=int,
        default=None,
        help=f"test images and generated samples per FD (default {DEFAULT_N_EVAL}, capped at the test set)",
    )
    g.add_argument("--n-train", type=int, default=None, help="use only the first N training images")
    g.add_argument("--n-test", type=int, default=None, help="use only the first N test images")
    g.add_argument(
        "--n-components",
        type=int,
        default=None,
        help=f"components of the ex-post mixture (default {DEFAULT_N_COMPONENTS}, as Ghosh et al.)",
    )
    g.add_argument(
        "--n-init",
        type=int,
        default=None,
        help="k-means++ starts of every ex-post fit, the best kept (default 4)",
    )
    g.add_argument(
        "--ex-post-refits",
        type=int,
        default=None,
        help="independent ex-post fits and sample draws per trained model; per-seed numbers are their mean, "
        "table.md's 'eval SD' their spread (default 3)",
    )
    g.add_argument(
        "--feature-steps",
        type=int,
        default=None,
        help="training steps of the FD feature classifier (cached per data set)",
    )
    g.add_argument(
        "--likelihood-k",
        type=int,
        default=None,
        help="importance samples per test image of the test likelihoods (-ELBO, IWAE-k, ex-post IS-k; default 1000)",
    )
    g.add_argument(
        "--out",
        default=None,
        help="output directory (default runs/compare-<data>). An explicit --out that holds results needs "
        "--resume or --overwrite; the default directory is resumed automatically, so rerunning a plain "
        "`jaxrae compare` skips finished rows and continues an interrupted one",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="skip finished rows in --out (re-evaluate their saved models when only evaluation settings "
        "changed), continue an interrupted one from its checkpoint",
    )
    g.add_argument("--overwrite", action="store_true", help="delete what --out holds and start afresh")
    g.add_argument(
        "--no-group",
        dest="group_sweepable",
        action="store_const",
        const=False,
        default=None,
        help="train every row as its own program (default: rows that differ only in lr, beta, lam or tau train "
        "together as one vmapped program; the TOML's group_sweepable = false does the same)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars (the summary table is still printed)")
    shared = ", ".join(f"{k}={v}" for k, v in DEFAULT_JOB_CONFIG.items())
    t = parser.add_argument_group(
        f"training (TrainConfig fields, applied to every row; they override the TOML's [config], "
        "and may not set a field that a row's [variants.*]/[overrides.*] table sets; "
        f"compare's defaults: {shared}, the rest TrainConfig's)"
    )
    add_config_flags(t)
    for action in t._group_actions:
        if action.dest == "method":  # a comparison names its methods with --methods
            action.help = argparse.SUPPRESS


def experiment_from_args(args) -> Experiment:
    """Defaults < ``--config`` TOML < flags given on the command line.

    TrainConfig flags replace ``[config]`` values; a flag for a field that a row's own table
    (``[variants.<label>]`` or ``[overrides.<method>]``) sets is a ConfigError
    (:func:`_reject_flags_that_rows_set` says why).
    """
    base = load_experiment(args.experiment_file) if args.experiment_file else Experiment()
    values = base.to_dict()
    method = getattr(args, "method", None)
    require(method is None, "--method", method, "not a compare flag; list the methods with --methods a,b,c")
    if args.data is not None:
        values["data"] = args.data
    if args.methods is not None:
        values["methods"] = args.methods  # "a,b,c": Experiment.from_dict splits it
    if args.seeds is not None:
        values["seeds"] = parse_seeds(args.seeds)
    for flag in (
        "baseline",
        "n_eval",
        "n_train",
        "n_test",
        "feature_steps",
        "n_components",
        "likelihood_k",
        "n_init",
        "ex_post_refits",
    ):
        if getattr(args, flag) is not None:
            values[flag] = getattr(args, flag)
    if getattr(args, "group_sweepable", None) is False:  # --no-group (absent from namespaces built by hand)
        values["group_sweepable"] = False
    given = {
        name: getattr(args, name)
        for name in field_names()
        if name != "method" and getattr(args, name, None) is not None
    }
    source = f"{args.experiment_file} with the command-line flags" if args.experiment_file else "command line"
    try:
        _reject_flags_that_rows_set(given, base)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    values["config"] = {**values["config"], **given}
    return Experiment.from_dict(values, source=source)


def _reject_flags_that_rows_set(flags: Mapping[str, Any], experiment: Experiment) -> None:
    """ConfigError if a TrainConfig flag sets a field that some row's own table also sets.

    A flag applies to every row, like ``[config]``, and wins over ``[config]``. A row's own
    table (``[variants.<label>]``, or ``[overrides.<method>]``, which is the same thing for a
    plain method) says how that row differs from the others. If a flag won there too, ``--tau 1``
    would silently train every ``*-tau0.5``/``*-tau2`` variant at tau 1 under labels that say
    otherwise, i.e. flatten the grid; if the row won, the flag would be silently ignored for it.
    Neither is safe, so the collision is an error naming the flag and the tables.
    """
    for field, value in flags.items():
        tables = [experiment.row_table(label) for label, row in experiment.rows.items() if field in row]
        flag = "--" + field.replace("_", "-")
        listed = ", ".join(tables[:4]) + (f" and {len(tables) - 4} more" if len(tables) > 4 else "")
        require(
            not tables,
            flag,
            value,
            f"it sets {field} for every row, but {listed} also set {field}, and a flag "
            f"would erase that difference between rows; drop {flag}, or change {field} in those tables",
        )


def cmd_compare(args) -> int:
    """``jaxrae compare``: run (or resume) the comparison, write its outputs, print the summary table."""
    experiment = experiment_from_args(args)
    out = Path(args.out) if args.out else default_out_dir(experiment.data)
    resume = args.resume or (args.out is None and not args.overwrite)
    t0 = time.perf_counter()
    try:
        results = compare.run_compare(
            experiment,
            out,
            resume=resume,
            overwrite=args.overwrite,
            progress=not args.quiet,
            command=getattr(args, "command_line", None),
            should_stop=getattr(args, "interrupt_requested", None),
            tensorboard=getattr(args, "tensorboard", True),
            wandb=getattr(args, "wandb", False),
        )
    except compare.CompareInterrupted as e:  # only reachable from the Python API, kept for symmetry
        raise CheckpointError(f"{e}; rerun with --resume") from None
    if not distributed.is_primary():  # the primary writes and prints the tables
        return 0
    print()
    print(report.render_summary(results, results["table"]))
    print()
    n_runs = sum(len(m["ok"]) for m in results["methods"].values())
    print(
        f"{len(results['methods'])} rows (methods and variants) x {len(experiment.seeds)} seeds ({n_runs} runs) in "
        f"{time.perf_counter() - t0:.1f}s; written to {out}/ "
        "(results.json, table.md, table.csv, reconstructions/samples/interpolations/metrics/losses.png)"
    )
    return 0


def cmd_report(args) -> int:
    """``jaxrae report``: table.md and table.csv again from results.json alone (figures too when the
    per-row files methods/<label>.json and .npz are there), keeping table.md's title and notes."""
    path = Path(args.path)
    results_path = path / "results.json" if path.is_dir() else path
    try:
        results = json.loads(results_path.read_text())
    except OSError as e:
        raise invalid(
            "path",
            str(path),
            f"a comparison's directory or its results.json; cannot read {results_path}: {e.strerror or e}",
        ) from None
    except ValueError as e:
        raise invalid("path", str(path), f"{results_path} is not valid JSON ({e})") from None
    require(
        isinstance(results, dict) and isinstance(results.get("methods"), dict),
        "path",
        str(path),
        f"{results_path} is not the results.json of `jaxrae compare` (it has no methods)",
    )
    out = results_path.parent
    existing = (out / "table.md").read_text() if (out / "table.md").exists() else None
    markdown, table_csv = report.rerender(results, existing, rendered_by=args.command_line)
    atomic_write_text(out / "table.md", markdown)
    atomic_write_text(out / "table.csv", table_csv)
    written = "table.md, table.csv"
    files = [out / "methods" / f"{label}{ext}" for label in results["methods"] for ext in (".json", ".npz")]
    if args.figures and all(f.exists() for f in files):
        records = {label: json.loads((out / "methods" / f"{label}.json").read_text()) for label in results["methods"]}
        compare.write_figures(results, records, out, report.summary_table(results))
        written += " and the figures"
    elif args.figures:
        written += " (no figures: they need the per-row files methods/<label>.json and .npz)"
    print(f"re-rendered {written} in {out}/ from {results_path}")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors (unknown flag, bad value) are the same one line as every other
    jaxrae error, ``jaxrae: error: ...`` with exit status 2, instead of a usage block; subparsers
    inherit the class."""

    def error(self, message: str):
        message = " ".join(str(message).split())
        self.exit(2, f"jaxrae: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxrae`` parser with its subcommands ``methods``, ``train``, ``compare`` and ``report``."""
    parser = OneLineParser(prog="jaxrae", description="Regularized autoencoders in JAX, many seeds at once.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("methods", help="list the method presets (rows of the grid)").set_defaults(func=cmd_methods)

    p = sub.add_parser("train", help="train one method for several seeds in one program")
    p.add_argument(
        "--data",
        default="digits",
        help="digits | fashion_mnist | mnist | idx:<dir> | tfds:<name>, optionally with a "
        "preprocessing suffix such as tfds:celeb_a@crop=140,image_size=64",
    )
    p.add_argument("--seeds", default="4", help="a count (4 -> 0..3) or a list (0,5,7)")
    p.add_argument("--sweep", action="append", help="NAME=V1,V2: a vmapped hyperparameter axis (lr, beta, lam, tau)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p)
    add_log_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="methods x seeds with the full evaluation (the main job)")
    add_compare_arguments(p)
    add_log_flags(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "report", help="re-render table.md/table.csv (and figures) of a comparison from its results.json"
    )
    p.add_argument("path", help="a comparison's output directory, or its results.json")
    p.add_argument(
        "--no-figures", dest="figures", action="store_false", help="tables only, even when the per-row files are there"
    )
    p.set_defaults(func=cmd_report)
    add_compile_cache_flag(parser, sub.choices.values())
    return parser


def add_compile_cache_flag(parser: argparse.ArgumentParser, subcommands) -> None:
    """``--no-compile-cache`` on ``parser`` and on each parser of ``subcommands``, so it may stand before or
    after the subcommand. The subcommands' copies default to SUPPRESS: absent there, they leave
    the top-level value alone instead of resetting it."""
    help_text = (
        "do not use the persistent compilation cache (default: compiled programs are kept in "
        f"{distributed.ENV_COMPILATION_CACHE} if set, else $XDG_CACHE_HOME/jaxrae/xla or ~/.cache/jaxrae/xla)"
    )
    parser.add_argument("--no-compile-cache", dest="compile_cache", action="store_false", help=help_text)
    for subparser in subcommands:
        subparser.add_argument(
            "--no-compile-cache", dest="compile_cache", action="store_false", default=argparse.SUPPRESS, help=help_text
        )


def _use_compilation_cache() -> None:
    """Turn on JAX's persistent compilation cache for this command.

    In ``$JAXRAE_COMPILATION_CACHE`` when set: the user chose that place, so a file or unwritable
    path there is a ConfigError. Otherwise in :func:`distributed.default_compilation_cache_dir`,
    where a file or unwritable path is only a one-line warning: the cache saves compile time and
    changes no result, so the command runs on without it.
    """
    chosen = distributed.check_cache_dir(distributed.ENV_COMPILATION_CACHE)
    if chosen is not None:
        distributed.enable_compilation_cache(chosen)
        return
    default = distributed.default_compilation_cache_dir()
    try:
        distributed.enable_compilation_cache(default)
    except ConfigError as e:
        print(
            f"jaxrae: warning: {' '.join(str(e).splitlines())}; running without the compilation cache "
            f"(set {distributed.ENV_COMPILATION_CACHE} to another directory, or pass --no-compile-cache)",
            file=sys.stderr,
        )


#: What the first Ctrl-C prints (one line, on stderr).
STOPPING_MESSAGE = (
    "jaxrae: stopping after this chunk (an evaluation under way finishes first); Ctrl-C again to abort now\n"
)


class _InterruptRequest:
    """The SIGINT handler of a command: the first Ctrl-C asks the command to stop at its next safe
    point; a second one raises KeyboardInterrupt at once.

    The first only sets a flag and says so: training asks it after every chunk, once that chunk's
    checkpoint is written (``train(should_stop=...)``), and a comparison between rows and before
    its outputs, so the command stops with every file complete and a ``--resume`` ends bitwise
    where an uninterrupted run ends. An exception raised wherever the main thread happens to be
    (inside a JAX call, a finalizer, a callback that drops exceptions) could instead lose the
    chunk under way or be swallowed. A second Ctrl-C is for a user who will not wait: it raises
    as before, and :func:`_interrupted` ends the process without finalization.
    """

    def __init__(self):
        self.requested = False

    def __call__(self, signum=None, frame=None):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # os.write, not print: the handler may run while the main thread is inside a write to
        # sys.stderr, and a buffered stream entered again raises RuntimeError (reentrant call).
        try:
            os.write(sys.stderr.fileno(), STOPPING_MESSAGE.encode())
        except (OSError, ValueError, AttributeError):  # no file descriptor (a replaced sys.stderr)
            sys.stderr.write(STOPPING_MESSAGE)

    def __bool__(self) -> bool:
        return self.requested


@contextlib.contextmanager
def _sigint_handler(handler: _InterruptRequest):
    """Install ``handler`` for SIGINT while the command runs (main thread only), then restore the old one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupted(as_program: bool) -> int:
    """Print the one-line message; as the program, end the process at once with status 130.

    Exiting through ``os._exit`` (after flushing) skips interpreter finalization, where XLA's
    threads could still be running and crash the process (SIGSEGV) after the message. Every file
    the run wrote is already complete (atomic writes), and the lock on --out goes with the process.
    """
    print("jaxrae: interrupted; rerun the same command with --resume to continue", file=sys.stderr)
    if as_program:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(130)
    return 130


def main(argv: list[str] | None = None) -> int:
    """Run the ``jaxrae`` command (``argv``: the arguments, default ``sys.argv[1:]``); returns the exit status.

    0 on success, 2 for an error a user can cause (printed as one line, argument errors
    included), 130 when interrupted (Ctrl-C: the first stops at the next chunk boundary, a second
    at once; :class:`_InterruptRequest`). Called as the program (``argv=None``), an interrupt
    ends the process at once with status 130 (:func:`_interrupted` says why).
    """
    as_program = argv is None
    interrupt = _InterruptRequest()
    try:
        with _sigint_handler(interrupt):
            status = _main(argv, interrupt)
        if interrupt:  # asked to stop, but nothing checked the flag after: the run did not finish as asked
            return _interrupted(as_program)
        return status
    except KeyboardInterrupt:
        return _interrupted(as_program)


def _main(argv: list[str] | None, interrupt: _InterruptRequest) -> int:
    parser = build_parser()
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process JAX job before anything runs (JAXRAE_COORDINATOR=host:port, "
        "JAXRAE_NUM_PROCESSES, JAXRAE_PROCESS_ID, or SLURM / Open MPI); the runs are spread over every process's devices",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or an argument error, already printed as one line (2)
        return e.code if isinstance(e.code, int) else 2
    # The invocation as a shell line, so that result files can say exactly what produced them.
    args.command_line = shlex.join(["jaxrae", *(sys.argv[1:] if argv is None else argv)])
    args.interrupt_requested = lambda: bool(interrupt)
    try:
        distributed.check_cache_dir(FEATURE_CACHE_ENV)
        if args.compile_cache:
            _use_compilation_cache()
        if args.distributed:
            distributed.initialize()  # must precede any JAX computation
        return int(args.func(args) or 0)
    except JaxraeError as e:
        print(f"jaxrae: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
