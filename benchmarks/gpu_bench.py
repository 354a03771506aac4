"""Accelerator benchmark: the paper's conv autoencoder, S = 1, 8, 32, 128 runs in one program.

Run through ``benchmarks/gpu.sh`` (which finds or installs a JAX with an accelerator and bounds
the time). On synthetic uint8 32x32x1 images (the throughput of a conv net does not depend on
what the pixels show), for each S trains ``rae`` with ``arch="conv-paper"`` (Ghosh et al. 2020:
4 stride-2 convs 128-256-512-1024 with batch norm, dense to z, dense to 8x8x1024 and transposed
convs back) for S seeds in one vmapped program via ``jaxrae.train`` and prints

- images/s (training time only; compilation reported apart),
- the achieved FLOP/s: XLA's FLOP count of one training step (cost analysis of the lowered
  single-run step, times S: vmap does not change the arithmetic) / time per step,
- that rate as a fraction of a large matmul measured in the same process, in bf16 and in fp32
  (fp32 at JAX's default precision, which may use TF32 tensor cores, and at "highest").

The model trains in float32, so the fp32 rates are its reference; bf16 shows the headroom of a
mixed-precision version. A size that does not fit in memory is reported as OOM and the larger
ones are skipped; sizes are also skipped when the time budget (``--budget-s``) runs out.

    python benchmarks/gpu_bench.py [--sizes 1,8,32,128] [--steps 20] [--batch 100] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import jaxrae  # noqa: E402
from jaxrae.data import make_dataset  # noqa: E402
from jaxrae.train import default_hparams, make_train, train  # noqa: E402


def synthetic_data(n: int = 4096, side: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, side, side, 1), dtype=np.uint8)
    y = rng.integers(0, 10, size=n)
    return make_dataset(f"synthetic-{side}x{side}", x, y, x[:256], y[:256])


def step_flops(config, data) -> float:
    """XLA's FLOP count of one training step of one run (cost analysis, lowered; compiled as fallback)."""
    trainer = make_train(config, data)
    state = trainer.init(jax.random.PRNGKey(0), default_hparams(config))
    batch = jnp.zeros((config.batch_size, *data.train_images_u8.shape[1:]), jnp.uint8)
    lowered = jax.jit(trainer.step).lower(state, jax.random.PRNGKey(1), batch)
    for analyse in (lowered.cost_analysis, lambda: lowered.compile().cost_analysis()):
        try:
            cost = analyse()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            if cost and cost.get("flops", 0) > 0:
                return float(cost["flops"])
        except Exception:  # noqa: BLE001 - an analysis a backend lacks is not fatal
            continue
    return float("nan")


def matmul_rates(n: int) -> dict:
    rates = {}
    for name, dtype, precision in (("bf16", jnp.bfloat16, None), ("fp32", jnp.float32, None), ("fp32-highest", jnp.float32, "highest")):
        try:
            with jax.default_matmul_precision(precision) if precision else _nullcontext():
                rates[name] = _common.matmul_flops_per_s(n, dtype, repeats=10)
        except Exception as e:  # noqa: BLE001
            print(f"matmul {name} failed: {e}", file=sys.stderr)
            rates[name] = float("nan")
    return rates


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,8,32,128")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--matmul-n", type=int, default=8192)
    parser.add_argument("--budget-s", type=float, default=260.0, help="skip sizes that would start after this")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()

    header = _common.machine_header(["benchmarks/gpu_bench.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [header]
    print(header, flush=True)
    emit = lambda s="": (print(s, flush=True), lines.append(s))  # noqa: E731

    def save():
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text("\n".join(lines) + "\n")

    if jax.default_backend() == "cpu":
        emit("# WARNING: no accelerator found; these are CPU numbers")
    data = synthetic_data()
    config = jaxrae.TrainConfig(method="rae", arch="conv-paper", batch_size=args.batch, steps=args.steps, chunk_size=args.steps)
    rates = matmul_rates(args.matmul_n)
    flops1 = step_flops(config, data)
    emit(f"# rae, conv-paper, 32x32x1 synthetic uint8, batch {args.batch}, {args.steps} steps (one chunk), float32 training")
    emit(f"# {args.matmul_n}^2 matmul: bf16 {_common.fmt_rate(rates['bf16'])}FLOP/s, fp32 (default precision) "
         f"{_common.fmt_rate(rates['fp32'])}FLOP/s, fp32 highest {_common.fmt_rate(rates['fp32-highest'])}FLOP/s")
    emit(f"# XLA FLOPs per training step and run: {flops1 / 1e9:.2f} G\n")
    emit("| S | img/s | img/s per run | step ms | achieved FLOP/s | / fp32 matmul | / bf16 matmul | compile s | status |")
    emit("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    save()
    base = None
    for S in [int(s) for s in args.sizes.split(",")]:
        if time.perf_counter() - t_start > args.budget_s:
            emit(f"| {S} | | | | | | | | skipped: time budget ({args.budget_s:.0f} s) spent |")
            continue
        try:
            first = train(config, data, list(range(S)), progress=False)  # compiles, warms up
            runs = train(config, data, list(range(S)), progress=False)  # timed: the compiled program
        except Exception as e:  # noqa: BLE001 - report and stop growing S
            oom = "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower()
            emit(f"| {S} | | | | | | | | {'OOM' if oom else type(e).__name__}: {str(e).splitlines()[0][:80]} |")
            traceback.print_exc()
            save()
            if oom:
                break
            continue
        t = runs.wall_time_s
        img_s = S * args.steps * args.batch / t
        achieved = flops1 * S * args.steps / t
        base = base or img_s
        emit(f"| {S} | {img_s:,.0f} | {img_s / S:,.0f} | {1e3 * t / args.steps:.1f} | {_common.fmt_rate(achieved)} | "
             f"{achieved / rates['fp32']:.0%} | {achieved / rates['bf16']:.0%} | {first.compile_time_s:.1f} | ok ({img_s / base:.1f}x S=1) |")
        save()
    emit(f"\n# total {time.perf_counter() - t_start:.0f} s")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
