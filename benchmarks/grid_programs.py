"""One program per sweepable grid: a comparison with its rows grouped against one program per row.

``jaxrae compare`` trains rows that differ only in swept hyperparameters (lr, beta, lam, tau) as one
vmapped program (:func:`jaxrae.compare.training_groups`); ``group_sweepable = false`` (``--no-group``)
trains every row as its own program, as before. This runs one experiment both ways, each in a
process of its own (so neither reuses the other's compiled programs) into its own directory, with
the FD feature network trained once beforehand into a shared cache, and prints per mode the number
of training programs, the wall time of the whole comparison and its training, compilation and
evaluation seconds (sums over rows; a group's times counted once), and the ratios separate / grouped.

The estimator grid (experiments/estimators.toml: st, and three estimators at three temperatures
each) is 10 rows: 10 programs one per row, 4 grouped (st alone, one per estimator over tau).

    python benchmarks/grid_programs.py                         # the TOML's own size (1000 steps, 5 seeds)
    python benchmarks/grid_programs.py --steps 4 --seeds 2 --n-train 300 --n-test 120 --n-eval 40 \\
        --feature-steps 30 --likelihood-k 0 --n-init 1 --ex-post-refits 1   # a smoke run

The evaluation is the same work in both modes (every row is evaluated on its own); the last three
flags shrink it so that a quick run shows the training side.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jaxrae.compare import run_compare, trained_together, training_groups
from jaxrae.data import load_data
from jaxrae.experiment import Experiment, load_experiment, seed_count
from jaxrae.features import feature_network

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

MODES = {"grouped": True, "separate": False}
SIZE_FLAGS = (
    "steps",
    "seeds",
    "n_train",
    "n_test",
    "n_eval",
    "feature_steps",
    "likelihood_k",
    "n_init",
    "ex_post_refits",
)


def experiment_of(args) -> Experiment:
    """The TOML with the size flags applied (``--steps`` to every row, through ``[config]``)."""
    exp = load_experiment(args.config)
    changes = {}
    if args.steps is not None:
        changes["config"] = {**exp.config, "steps": args.steps}
    if args.seeds is not None:
        changes["seeds"] = seed_count(args.seeds)
    for name in ("n_train", "n_test", "n_eval", "feature_steps", "n_init", "ex_post_refits"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.likelihood_k is not None:
        changes["likelihood_k"] = args.likelihood_k or None  # 0: no test likelihoods
    return dataclasses.replace(exp, **changes) if changes else exp


def run_mode(args) -> dict:
    """One comparison in this process (``--mode``): its programs and times, as a JSON-ready dict."""
    exp = dataclasses.replace(experiment_of(args), group_sweepable=MODES[args.mode])
    out = Path(args.out) / args.mode
    t0 = time.perf_counter()
    results = run_compare(
        exp,
        out,
        overwrite=True,
        progress=False,
        feature_cache_dir=args.cache,
        log=lambda *_: None,
        figures=False,
        tensorboard=False,
    )
    wall = time.perf_counter() - t0
    methods = results["methods"]
    groups = trained_together(methods)
    train_s = compile_s = 0.0
    for rows in groups:
        record = methods[rows[0]]
        group = record.get("group")  # a group's totals, once; a row alone: its own times
        train_s += group["train_s"] if group else record["times"]["train_s"]
        compile_s += group["compile_s"] if group else record["times"]["compile_s"]
    return {
        "mode": args.mode,
        "programs": len(groups),
        "rows": len(methods),
        "wall_s": wall,
        "train_s": train_s,
        "compile_s": compile_s,
        "eval_s": sum(m["times"]["eval_s"] for m in methods.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/estimators.toml", help="the experiment TOML")
    parser.add_argument("--steps", type=int, default=None, help="training steps of every row (default: the TOML's)")
    parser.add_argument("--seeds", type=int, default=None, help="a seed count (default: the TOML's)")
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--n-eval", type=int, default=None)
    parser.add_argument("--feature-steps", type=int, default=None)
    # the evaluation is the same work in both modes; these shrink it for a quick run
    parser.add_argument("--likelihood-k", type=int, default=None, help="importance samples; 0: no test likelihoods")
    parser.add_argument("--n-init", type=int, default=None)
    parser.add_argument("--ex-post-refits", type=int, default=None)
    parser.add_argument("--out", default=None, help="where the two comparisons go (default: a temporary directory)")
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)  # the feature network's cache
    parser.add_argument("--mode", choices=list(MODES), default=None, help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args()
    if args.mode is not None:
        print("RESULT " + json.dumps(run_mode(args)), flush=True)
        return

    with tempfile.TemporaryDirectory(prefix="jaxrae-grid-programs-") as tmp:
        args.out = args.out or tmp
        args.cache = str(Path(args.out) / "feature-cache")
        exp = experiment_of(args)
        data = load_data(exp.data, n_train=exp.n_train, n_test=exp.n_test)
        feature_network(data, cache_dir=args.cache, steps=exp.feature_steps)  # once, outside both timings
        planned = {
            mode: len(training_groups(dataclasses.replace(exp, group_sweepable=on), list(exp.rows), data))
            for mode, on in MODES.items()
        }
        print(_common.machine_header(sys.argv))
        print(
            f"# {args.config}: {len(exp.rows)} rows x {len(exp.seeds)} seeds, "
            f"{exp.config.get('steps')} steps; training programs: {planned['separate']} one per row, "
            f"{planned['grouped']} grouped"
        )
        measured = {}
        for mode in ("separate", "grouped"):
            sizes = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in SIZE_FLAGS]
            sizes = [flag for flag, name in zip(sizes, SIZE_FLAGS) if getattr(args, name) is not None]
            command = [sys.executable, __file__, "--config", args.config, *sizes]
            command += ["--out", args.out, "--cache", args.cache, "--mode", mode]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
            measured[mode] = json.loads(lines[-1].removeprefix("RESULT "))

    print()
    print("| mode | programs | wall s | train s | compile s | eval s |")
    print("|---|---|---|---|---|---|")
    for mode, m in measured.items():
        print(
            f"| {mode} | {m['programs']} | {m['wall_s']:.1f} | {m['train_s']:.1f} | {m['compile_s']:.1f} "
            f"| {m['eval_s']:.1f} |"
        )
    s, g = measured["separate"], measured["grouped"]
    ratio = lambda key: s[key] / g[key] if g[key] > 0 else float("nan")
    print()
    print(
        f"separate / grouped: wall {ratio('wall_s'):.2f}x, train {ratio('train_s'):.2f}x, "
        f"compile {ratio('compile_s'):.2f}x, train + compile "
        f"{(s['train_s'] + s['compile_s']) / max(g['train_s'] + g['compile_s'], 1e-9):.2f}x "
        f"({s['programs']} programs against {g['programs']})"
    )


if __name__ == "__main__":
    main()
