"""The ``jaxrae`` command: ``methods``, ``train`` and ``compare``.

Errors a user can cause (a config value, a data file, a checkpoint, an output directory) are
printed as one line, ``jaxrae: error: ...``, with exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

from jaxrae.errors import ConfigError, JaxraeError


def parse_seeds(text: str) -> list[int]:
    """``"4"`` -> [0, 1, 2, 3]; ``"0,5,7"`` -> [0, 5, 7]."""
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        n = int(text)
    except ValueError:
        raise ConfigError(f"--seeds={text!r} is invalid: give a count (4) or a comma-separated list (0,5,7)") from None
    if n < 1:
        raise ConfigError(f"--seeds={text!r} is invalid: at least one seed")
    return list(range(n))


def parse_sweep(items: list[str] | None) -> dict[str, list[float]]:
    """``["beta=1e-4,1e-3", "lr=1e-3"]`` -> {"beta": [1e-4, 1e-3], "lr": [1e-3]}."""
    sweep: dict[str, list[float]] = {}
    for item in items or []:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--sweep {item!r} is invalid: write NAME=V1,V2,... (e.g. beta=1e-4,1e-3)")
        try:
            sweep[name.strip().replace("-", "_")] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--sweep {item!r} is invalid: values must be numbers") from None
    return sweep


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--latent-dim``, ``--beta``, ...), default: the config's."""
    from jaxrae.config import TrainConfig

    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.name == "fsq_levels":
            parser.add_argument(flag, type=lambda s: tuple(int(v) for v in s.split(",")), default=None, help="comma-separated, e.g. 8,5,5,5")
            continue
        # Annotations are strings ("int", "float | None", "str | None"): the first type parses.
        kind = {"int": int, "float": float}.get(str(field.type).split(" |")[0], str)
        parser.add_argument(flag, type=kind, default=None, help=f"TrainConfig.{field.name}")


def config_from_args(args, **overrides):
    """A TrainConfig from the flags that were given (others keep their defaults)."""
    from jaxrae.config import TrainConfig, field_names

    values = {name: getattr(args, name) for name in field_names() if getattr(args, name, None) is not None}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


def prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to write into a directory holding results unless --resume or --overwrite."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; choose one")
    if out.exists() and any(out.iterdir()):
        if overwrite:
            import shutil

            shutil.rmtree(out)
        elif not resume:
            raise ConfigError(f"output directory {out} already holds results; pass --resume to continue it or --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)


def cmd_methods(args) -> int:
    from jaxrae import methods

    print(f"{'name':<11} {'encoder':<13} {'code':<15} {'latent_reg':<11} {'decoder_reg':<11} {'beta':>9} {'lambda':>9}")
    for name in methods.names():
        m = methods.get(name)
        print(f"{name:<11} {m.encoder:<13} {m.code:<15} {m.latent_reg:<11} {m.decoder_reg:<11} {m.beta:>9.3g} {m.lam:>9.3g}  {m.summary}")
    return 0


def cmd_train(args) -> int:
    import numpy as np

    from jaxrae import checkpoint as ckpt
    from jaxrae.data import load_data
    from jaxrae.provenance import environment
    from jaxrae.train import train

    config = config_from_args(args)
    seeds = parse_seeds(args.seeds)
    sweep = parse_sweep(args.sweep)
    data = load_data(args.data)
    out = Path(args.out)
    from jaxrae import distributed

    # With several processes (--distributed) one of them owns the output directory; the others
    # wait for it, train their share, and write nothing. --out must be on shared storage.
    primary = distributed.is_primary()
    if primary:
        prepare_out_dir(out, args.resume, args.overwrite)
        ckpt.atomic_write_json(out / "config.json", {"config": config.to_dict(), "data": args.data, "seeds": seeds, "sweep": sweep})
    distributed.barrier("out-ready")
    runs = train(config, data, seeds, sweep=sweep, checkpoint_path=out / "checkpoint.msgpack", progress=not args.quiet)
    from jaxrae.metrics import code_usage, reconstruction_error

    test = data.test_images
    codes = runs.encode(test)
    recs = runs.decode(codes)
    rec_err = np.array([reconstruction_error(test, r) for r in recs])
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
    ckpt.atomic_write_json(out / "history.json", history)
    print(f"{config.method_name} on {data.name}: {len(runs.runs)} run(s), {config.steps} steps, "
          f"{runs.wall_time_s:.1f}s training + {runs.compile_time_s:.1f}s compilation")
    usage_head = f" {'perplexity':>10} {'distinct':>8}" if usage else ""
    print(f"{'run':>4} {'seed':>5} " + " ".join(f"{k:>8}" for k in sweep) + f" {'final loss':>11} {'test rec. err':>14}{usage_head}  status")
    final = runs.summary()["final_loss"]
    for i, r in enumerate(runs.runs):
        status = "ok" if runs.diverged_at[i] < 0 else f"diverged at step {runs.diverged_at[i]}"
        usage_cols = f" {usage[i].mean_perplexity:>10.3g} {usage[i].n_distinct_codes:>8d}" if usage else ""
        print(f"{i:>4} {r['seed']:>5} " + " ".join(f"{r[k]:>8.3g}" for k in sweep) + f" {final[i]:>11.4g} {rec_err[i]:>14.4g}{usage_cols}  {status}")
    if usage:
        print(f"code usage on the {len(test)} test images: mean perplexity per variable (of K={runs.codec.n_classes}) and distinct codes")
    ok = runs.ok
    if ok.any():
        print(f"test reconstruction error (sum of squares per image): {rec_err[ok].mean():.4g} +- {rec_err[ok].std(ddof=1) if ok.sum() > 1 else 0.0:.2g} over {int(ok.sum())}/{len(ok)} runs")
    print(f"written to {out}/ (config.json, history.json, checkpoint.msgpack)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxrae", description="Regularized autoencoders in JAX, many seeds at once.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("methods", help="list the method presets (rows of the grid)").set_defaults(func=cmd_methods)

    p = sub.add_parser("train", help="train one method for several seeds in one program")
    p.add_argument("--data", default="digits", help="digits | fashion_mnist | mnist | idx:<dir> | tfds:<name>, optionally with a "
                   "preprocessing suffix such as tfds:celeb_a@crop=140,image_size=64")
    p.add_argument("--seeds", default="4", help="a count (4 -> 0..3) or a list (0,5,7)")
    p.add_argument("--sweep", action="append", help="NAME=V1,V2: a vmapped hyperparameter axis (lr, beta, lam, tau)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)

    from jaxrae import compare

    p = sub.add_parser("compare", help="methods x seeds with the full evaluation (the main job)")
    compare.add_arguments(p)
    p.set_defaults(func=compare.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.add_argument(
        "--distributed", action="store_true",
        help="join a multi-process JAX job before anything runs (JAXRAE_COORDINATOR=host:port, "
        "JAXRAE_NUM_PROCESSES, JAXRAE_PROCESS_ID, or SLURM / Open MPI); the runs are spread over every process's devices",
    )
    args = parser.parse_args(argv)
    # The invocation as a shell line, so that result files can say exactly what produced them.
    args.command_line = shlex.join(["jaxrae", *(sys.argv[1:] if argv is None else argv)])
    try:
        from jaxrae import distributed

        if os.environ.get(distributed.ENV_COMPILATION_CACHE):
            # Through jaxrae.distributed so the small CPU programs (< 1 s, JAX's default threshold) are cached too.
            distributed.enable_compilation_cache(os.environ[distributed.ENV_COMPILATION_CACHE])
        if args.distributed:
            distributed.initialize()  # must precede any JAX computation
        return int(args.func(args) or 0)
    except JaxraeError as e:
        print(f"jaxrae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxrae: interrupted; rerun the same command with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
