"""Training throughput: 1 seed, S seeds in one vmapped program, S sequential runs; MLP FLOP/s.

For each data set (``digits`` 8x8 and ``fashion_mnist`` 28x28) and the ``rae`` preset with the
MLP network (in-512-256-16, batch 100), prints images/s of

- one seed (``jaxrae.train(config, data, [s])``),
- S seeds vmapped in one program (``train(config, data, range(S))``),
- the same S seeds trained one after the other (the 1-seed program, compiled once),

and the ratio vmapped / sequential. Times are ``Runs.wall_time_s``: training only, compilation
reported apart by train(). Each round measures vmapped and sequential back to back; the table
holds the median over rounds of each rate and of the per-round ratio.

Then the achieved FLOP/s of the MLP preset (784-512-256-16, batch 100, 8 seeds, Fashion-MNIST)
next to the FLOP/s of a 2048x2048 float32 matmul measured in the same rounds. FLOPs per step are
counted both analytically (matmuls only, :func:`_common.mlp_train_flops_per_image`) and by XLA's
cost analysis of the compiled vmapped step (all ops); the fraction uses the analytic count, the
conservative one (it credits only the dense math a matmul-bound program must do).

Then the chunk runners (``TrainConfig.chunk_runner``, :func:`jaxrae.train.resolve_chunk_runner`):
for ``mlp``, ``conv-small`` and ``conv-paper`` (``--runner-seeds`` seeds, batch 100, on
``--runner-data``), the time per step of

- the scanned chunk: train()'s compiled ``lax.scan`` of ``--runner-steps`` steps, called once,
- the loop: train()'s compiled one-step program (state donated) called once per step from Python,
- ``train()`` itself with ``chunk_runner="auto"`` (one chunk of ``--runner-steps`` steps; its
  ``wall_time_s``, compilation excluded), and which runner auto chose,

with the ratios scan / loop and train() / loop. Each round measures the three back to back; the
table holds medians over rounds.

Targets on a 2-core CPU: vmapped never slower than sequential (ratio >= 1.0); MLP preset at
>= 60 % of the matmul rate; train() on the convolutional networks at most the loop's step time
(train() / loop <= 1.0 within run-to-run spread), and on the MLP at most the scan's.

    python benchmarks/train_throughput.py [--seeds 8] [--steps 200] [--rounds 3] [--out FILE]
        [--runner-archs mlp,conv-small,conv-paper] [--runner-data fashion_mnist] [--runner-steps 20]
        [--sections throughput,runners]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

import jaxrae
from jaxrae.train import (
    _one_step_program,
    _vmapped_programs,
    default_hparams,
    make_train,
    resolve_chunk_runner,
    train,
)


def step_cost_flops(config, data, n_seeds: int) -> float:
    """XLA's FLOP count of one vmapped training step for ``n_seeds`` runs (all ops)."""
    trainer = make_train(config, data)
    keys = jax.random.split(jax.random.PRNGKey(0), n_seeds)
    hp = jax.tree_util.tree_map(lambda v: np.full((n_seeds,), v, np.float32), default_hparams(trainer.config))
    state = jax.vmap(trainer.init)(keys, hp)
    batch = np.zeros((n_seeds, config.batch_size, *data.train_images_u8.shape[1:]), np.uint8)
    compiled = jax.jit(jax.vmap(trainer.step)).lower(state, keys, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def measure(config, data, n_seeds: int, rounds: int, matmul_n: int | None):
    """Per round: (matmul FLOP/s or None, vmapped seconds, list of sequential seconds)."""
    seeds = list(range(n_seeds))
    # Warm-up: compile both programs and touch their buffers once.
    train(config, data, seeds, progress=False)
    train(config, data, [0], progress=False)
    out = []
    for _ in range(rounds):
        mm = _common.matmul_flops_per_s(matmul_n) if matmul_n else None
        t_vmap = train(config, data, seeds, progress=False).wall_time_s
        t_seq = [train(config, data, [s], progress=False).wall_time_s for s in seeds]
        out.append((mm, t_vmap, t_seq))
    return out


def throughput_tables(args, emit) -> None:
    """The MLP tables: 1 seed, S seeds vmapped and S sequential per data set; the preset's FLOP/s."""
    S = args.seeds
    emit(
        f"# {args.method}, arch=mlp, batch 100, {args.steps} steps per run (one chunk), {args.rounds} rounds, medians\n"
    )
    emit(
        f"| data | image | 1 seed img/s | {S} seeds vmapped img/s | {S} sequential img/s | vmapped / sequential | compile s (1 / {S}) |"
    )
    emit("|---|---|---:|---:|---:|---:|---:|")
    flop_rows = []
    for spec in args.data.split(","):
        data = jaxrae.load_data(spec)
        config = jaxrae.TrainConfig(
            method=args.method, arch="mlp", batch_size=100, steps=args.steps, chunk_size=args.steps
        )
        img = config.steps * config.batch_size
        c1 = train(config, data, [0], progress=False).compile_time_s
        cS = train(config, data, list(range(S)), progress=False).compile_time_s
        is_preset = data.train_images_u8.shape[1:] == (28, 28, 1)
        rounds = measure(config, data, S, args.rounds, args.matmul_n if is_preset else None)
        one = _common.median([img / np.mean(seq) for _, _, seq in rounds])
        vm = _common.median([S * img / tv for _, tv, _ in rounds])
        sq = _common.median([S * img / sum(seq) for _, _, seq in rounds])
        ratio = _common.median([sum(seq) / tv for _, tv, seq in rounds])
        shape = "x".join(map(str, data.train_images_u8.shape[1:3]))
        emit(f"| {data.name} | {shape} | {one:,.0f} | {vm:,.0f} | {sq:,.0f} | **{ratio:.2f}** | {c1:.1f} / {cS:.1f} |")
        if is_preset:
            flop_rows.append((config, data, rounds))

    for config, data, rounds in flop_rows:
        n_in = int(np.prod(data.train_images_u8.shape[1:]))
        analytic = _common.mlp_train_flops_per_image(n_in) * config.batch_size * S
        xla = step_cost_flops(config, data, S)
        achieved = [analytic * config.steps / tv for _, tv, _ in rounds]
        fractions = [a / mm for a, (mm, _, _) in zip(achieved, rounds)]
        emit()
        emit(f"## MLP preset FLOP/s ({n_in}-512-256-16, batch 100, {S} seeds vmapped, {data.name})\n")
        emit(
            f"- FLOPs per step: analytic (matmuls) {analytic / 1e9:.3f} G; XLA cost analysis (all ops) {xla / 1e9:.3f} G"
        )
        emit(f"- achieved (analytic FLOPs / training time): {_common.fmt_rate(_common.median(achieved))}FLOP/s")
        emit(
            f"- {args.matmul_n}x{args.matmul_n} f32 matmul, same rounds: {_common.fmt_rate(_common.median([mm for mm, _, _ in rounds]))}FLOP/s"
        )
        emit(
            f"- **MLP preset / matmul = {_common.median(fractions):.0%}** (per round: {', '.join(f'{f:.0%}' for f in fractions)}; target >= 60%)"
        )


def runner_step_seconds(config, data, n_seeds: int, rounds: int) -> dict:
    """Median seconds per step of the scanned chunk, the loop of donated steps and train() (auto).

    The scan and the loop run train()'s own compiled programs (``_vmapped_programs``: the chunk
    scan; ``_one_step_program``: the unrolled step, no while loop); each is compiled and called
    once before timing, so the rounds time execution only."""
    image_shape = tuple(data.train_images_u8.shape[1:])
    init, run_chunk, _ = _vmapped_programs(config, image_shape, False)
    images = jax.numpy.asarray(data.train_images_u8)
    keys = jax.random.split(jax.random.PRNGKey(0), n_seeds)
    hp = jax.tree_util.tree_map(lambda v: np.full((n_seeds,), v, np.float32), default_hparams(config))
    n = config.steps
    scan = run_chunk.lower(init(keys, hp), images, n).compile()
    step = _one_step_program(config, image_shape, False).lower(init(keys, hp), images).compile()

    def time_scan():
        state = init(keys, hp)
        jax.block_until_ready(state)
        t = time.perf_counter()
        jax.block_until_ready(scan(state, images))
        return (time.perf_counter() - t) / n

    def time_loop():
        state = init(keys, hp)
        jax.block_until_ready(state)
        t = time.perf_counter()
        for _ in range(n):
            state, metrics = step(state, images)  # the state is donated: updated in place
        jax.block_until_ready((state, metrics))
        return (time.perf_counter() - t) / n

    seeds = list(range(n_seeds))
    time_train = lambda: train(config, data, seeds, progress=False).wall_time_s / n
    for measure_once in (time_scan, time_loop, time_train):  # warm-up: compile, touch buffers
        measure_once()
    per_round = [(time_scan(), time_loop(), time_train()) for _ in range(rounds)]
    return dict(
        scan=_common.median([r[0] for r in per_round]),
        loop=_common.median([r[1] for r in per_round]),
        train=_common.median([r[2] for r in per_round]),
        scan_over_loop=_common.median([r[0] / r[1] for r in per_round]),
        train_over_loop=_common.median([r[2] / r[1] for r in per_round]),
        auto=resolve_chunk_runner(config, image_shape),
    )


def runner_table(args, emit) -> None:
    """The chunk runners' table: ms per step of scan, loop and train() per architecture."""
    data = jaxrae.load_data(args.runner_data)
    S = args.runner_seeds
    shape = "x".join(map(str, data.train_images_u8.shape[1:3]))
    emit(
        f"\n## Chunk runners: {args.method}, {S} seed(s), batch {args.runner_batch}, {data.name} {shape}, "
        f"{args.runner_steps} steps per chunk, {args.rounds} rounds, medians (backend {jax.default_backend()})\n"
    )
    emit("| arch | scan ms/step | loop ms/step | train() ms/step | auto chose | scan / loop | train() / loop |")
    emit("|---|---:|---:|---:|---|---:|---:|")
    for arch in args.runner_archs.split(","):
        config = jaxrae.TrainConfig(
            method=args.method,
            arch=arch,
            batch_size=args.runner_batch,
            steps=args.runner_steps,
            chunk_size=args.runner_steps,
        )
        r = runner_step_seconds(config, data, S, args.rounds)
        emit(
            f"| {arch} | {1e3 * r['scan']:,.2f} | {1e3 * r['loop']:,.2f} | {1e3 * r['train']:,.2f} | {r['auto']} "
            f"| **{r['scan_over_loop']:.2f}** | **{r['train_over_loop']:.2f}** |"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--method", default="rae")
    parser.add_argument("--data", default="digits,fashion_mnist")
    parser.add_argument("--matmul-n", type=int, default=2048)
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--sections", default="throughput,runners", help="which tables: throughput, runners")
    parser.add_argument("--runner-archs", default="mlp,conv-small,conv-paper")
    parser.add_argument("--runner-data", default="fashion_mnist")
    parser.add_argument("--runner-steps", type=int, default=20)
    parser.add_argument("--runner-seeds", type=int, default=1)
    parser.add_argument("--runner-batch", type=int, default=100)
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))

    lines = [_common.machine_header(["benchmarks/train_throughput.py", *(argv if argv is not None else sys.argv[1:])])]
    print(lines[0], flush=True)
    emit = lambda s="": (print(s, flush=True), lines.append(s))
    if "throughput" in sections:
        throughput_tables(args, emit)
    if "runners" in sections:
        runner_table(args, emit)
    _common.write_table(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
