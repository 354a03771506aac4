"""Scaling with the number of runs: S runs in one vmapped program vs S runs one after another.

For S = 1, 2, 4, 8, 16, 32 seeds of the ``rae`` preset (MLP in-512-256-16, batch 100) on
Fashion-MNIST, prints

- images/s of the S-run program (``jaxrae.train(config, data, range(S))``, training time only),
- images/s of S sequential runs: the 1-run program timed right before it, in the same round, S
  runs take S times as long (each run is the same compiled program on its own key),
- their ratio (>= 1.0 means one program is never slower than sequential runs),
- memory per S: XLA's own account of the compiled chunk program (``memory_analysis()``:
  arguments + outputs + temporaries - donated/aliased buffers), which is what the device must
  hold, and the process's peak RSS measured in a fresh subprocess per S (which also counts the
  JAX runtime, the host copy of the data and the compiler);
- the per-run increment (memory(S) - memory(1)) / (S - 1), next to the budget a run may need
  at most: one model's parameters, its Adam state (2x parameters) and its activations for a
  batch (every layer's output, forward and its gradient backward). A gradient step also needs
  the parameters' gradient (1x parameters; the divergence test reads all of it before any
  parameter changes), so the script prints the budget with and without it. The images are an
  argument shared by all runs, so a per-run copy of the data would show as +47 MB per run.

The S = 1 row times the same 1-run program on both sides, so its ratio is the noise floor of
the run; the target (program never slower than sequential) is checked on S >= 2.

    python benchmarks/scaling.py [--data fashion_mnist] [--steps 50] [--rounds 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

import jaxrae
from jaxrae.train import default_hparams, make_train, train

SIZES = (1, 2, 4, 8, 16, 32)


def program_memory(config, data, n_runs: int) -> dict:
    """XLA's memory account (bytes) of the compiled chunk program train() runs for ``n_runs`` runs."""
    from jaxrae.train import _vmapped_programs  # the programs train() itself runs (state donated)

    trainer = make_train(config, data)
    init, run_chunk, _ = _vmapped_programs(trainer.config, tuple(data.train_images_u8.shape[1:]))
    keys = jax.random.split(jax.random.PRNGKey(0), n_runs)
    hp = jax.tree_util.tree_map(lambda v: np.full((n_runs,), v, np.float32), default_hparams(trainer.config))
    state = init(keys, hp)
    m = run_chunk.lower(state, jax.numpy.asarray(trainer.images_u8), config.chunk_size).compile().memory_analysis()
    if m is None:  # a backend without the analysis
        return dict(arguments=np.nan, outputs=np.nan, temps=np.nan, aliased=np.nan, total=np.nan)
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return dict(
        arguments=m.argument_size_in_bytes,
        outputs=m.output_size_in_bytes,
        temps=m.temp_size_in_bytes,
        aliased=m.alias_size_in_bytes,
        total=total,
    )


def per_run_budget(config, data) -> dict:
    """Bytes one extra run may add: parameters + Adam (2x parameters) + one batch's activations,
    and the same plus the parameters' gradient (``total_with_grads``)."""
    trainer = make_train(config, data)
    state = trainer.init(jax.random.PRNGKey(0), default_hparams(trainer.config))
    params = _common.tree_bytes(state.params)
    adam = 2 * params
    n_in = int(np.prod(data.train_images_u8.shape[1:]))
    widths = [n_in, 512, 256, config.latent_dim, 256, 512, n_in]  # the MLP's layer outputs (and input)
    activations = 2 * config.batch_size * sum(widths) * 4  # forward outputs + their gradients, float32
    total = params + adam + activations
    return dict(params=params, adam=adam, activations=activations, total=total, total_with_grads=total + params)


_RSS_CHILD = """
import json, resource, sys
import jaxrae
from jaxrae.train import train
cfg = jaxrae.TrainConfig(**json.loads(sys.argv[1]))
train(cfg, jaxrae.load_data(sys.argv[2]), list(range(int(sys.argv[3]))), progress=False)
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
"""


def peak_rss_mib(config, spec: str, n_runs: int) -> float:
    """Peak RSS (MiB) of a fresh process that trains ``n_runs`` runs."""
    cfg = dict(
        method=config.method,
        arch=config.arch,
        batch_size=config.batch_size,
        steps=config.steps,
        chunk_size=config.chunk_size,
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, json.dumps(cfg), spec, str(n_runs)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RSS ")]
    if out.returncode != 0 or not lines:
        print(out.stderr[-2000:], file=sys.stderr)
        return float("nan")
    return float(lines[-1].split()[1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--method", default="rae")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--no-rss", action="store_true", help="skip the per-S subprocesses that measure peak RSS")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    lines = [_common.machine_header(["benchmarks/scaling.py", *(argv if argv is not None else sys.argv[1:])])]
    print(lines[0], flush=True)
    emit = lambda s="": (print(s, flush=True), lines.append(s))
    data = jaxrae.load_data(args.data)
    config = jaxrae.TrainConfig(method=args.method, arch="mlp", batch_size=100, steps=args.steps, chunk_size=args.steps)
    img = config.steps * config.batch_size
    budget = per_run_budget(config, data)
    emit(
        f"# {args.method}, arch=mlp, batch 100, {data.name} {data.train_images_u8.shape}, {args.steps} steps per run, "
        f"{args.rounds} rounds (medians)"
    )
    emit(
        f"# per-run budget: params {budget['params'] / 2**20:.2f} MiB + Adam {budget['adam'] / 2**20:.2f} MiB + activations "
        f"{budget['activations'] / 2**20:.2f} MiB = {budget['total'] / 2**20:.2f} MiB "
        f"({budget['total_with_grads'] / 2**20:.2f} MiB with the parameters' gradient); "
        f"data (shared, uint8) {data.train_images_u8.nbytes / 2**20:.1f} MiB\n"
    )

    train(config, data, [0], progress=False)  # compile and warm the 1-run program
    rows = {}
    for S in sizes:
        seeds = list(range(S))
        compile_s = train(config, data, seeds, progress=False).compile_time_s  # compile + warm-up
        one, many = [], []
        for _ in range(args.rounds):
            one.append(train(config, data, [0], progress=False).wall_time_s)
            many.append(train(config, data, seeds, progress=False).wall_time_s)
        mem = program_memory(config, data, S)
        rows[S] = dict(
            program=_common.median([S * img / t for t in many]),
            sequential=_common.median([img / t for t in one]),
            ratio=_common.median([S * a / b for a, b in zip(one, many)]),
            compile_s=compile_s,
            mem=mem,
        )
        print(f"  S={S}: {rows[S]['ratio']:.2f}x", file=sys.stderr, flush=True)
    if not args.no_rss:
        for S in sizes:
            rows[S]["rss"] = peak_rss_mib(config, args.data, S)

    emit(
        "| S | program img/s | sequential img/s | program / sequential | compile s | XLA memory MiB | "
        "per-run increment MiB | peak RSS MiB | RSS per-run increment MiB |"
    )
    emit("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = rows[sizes[0]]
    for S in sizes:
        r = rows[S]
        mem = r["mem"]["total"] / 2**20
        inc = "" if S == sizes[0] else f"{(r['mem']['total'] - base['mem']['total']) / (S - sizes[0]) / 2**20:.2f}"
        rss = r.get("rss", float("nan"))
        rss_inc = "" if S == sizes[0] or "rss" not in r else f"{(rss - base['rss']) / (S - sizes[0]):.2f}"
        emit(
            f"| {S} | {r['program']:,.0f} | {r['sequential']:,.0f} | **{r['ratio']:.2f}** | {r['compile_s']:.1f} | "
            f"{mem:.1f} | {inc} | {rss:.0f} | {rss_inc} |"
        )
    worst = min((rows[S]["ratio"] for S in sizes if S > 1), default=float("nan"))
    inc_max = max(
        ((rows[S]["mem"]["total"] - base["mem"]["total"]) / (S - sizes[0]) for S in sizes if S != sizes[0]), default=0
    )
    emit()
    emit(
        f"- slowest program / sequential ratio over S >= 2: {worst:.2f} (target >= 1.0: {'met' if worst >= 1.0 else 'MISSED'})"
        + (f"; S=1 (same program both sides, the noise floor): {rows[1]['ratio']:.2f}" if 1 in rows else "")
    )
    verdict = lambda limit: "within" if inc_max <= limit else "OVER"
    emit(
        f"- largest per-run memory increment (XLA): {inc_max / 2**20:.2f} MiB; budget params + Adam + activations "
        f"{budget['total'] / 2**20:.2f} MiB ({verdict(budget['total'])}), with the parameters' gradient "
        f"{budget['total_with_grads'] / 2**20:.2f} MiB ({verdict(budget['total_with_grads'])})"
    )
    m = base["mem"]
    emit(
        f"- S={sizes[0]} program memory: arguments {m['arguments'] / 2**20:.1f} MiB (of which data "
        f"{data.train_images_u8.nbytes / 2**20:.1f}), outputs {m['outputs'] / 2**20:.1f}, temporaries {m['temps'] / 2**20:.1f}, "
        f"aliased {m['aliased'] / 2**20:.1f}"
    )
    _common.write_table(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
