"""Accelerator benchmark: jaxrae's many-seed claims on one GPU, measured in one run, printed as one table.

Run through ``benchmarks/gpu.sh``, which finds (or installs) a JAX that sees the accelerator, runs
each part below in its own process under its own time limit, and then runs ``--part table``.
Every part appends its measurements to a JSON-lines records file as soon as it has them, so a
part stopped by its limit keeps what it finished. The targets are an accelerator's; on a CPU the
parts run with small sizes, and the table says the verdicts are not judged.

- ``--part gmm``: the ex-post density fit (``jaxrae.density.fit_gmm``) on the workload of
  benchmarks/density.py (60,000 planted codes of dimension 16, 10 full-covariance components,
  n_init=1, max_iter 100, tol 1e-3), for 1, 8 and 32 seeds in one vmapped call on the same codes.
  Wall time after a compiling call, median of ``--repeats``. Target: 8 seeds <= 1.5x one fit.
  Under vmap every seed runs until the slowest has converged, so the table also gives each
  fit's largest iteration count (k-means init and EM).
- ``--part mlp``: the ``rae`` preset (MLP in-512-256-16, batch 100, 2000 steps in chunks of 250,
  the TrainConfig defaults) on synthetic 28x28 uint8 images (a dense net's speed does not depend
  on what the pixels show), trained by ``jaxrae.train`` for 1 seed and for 32 seeds in one
  program. Time: ``Runs.wall_time_s`` (compilation excluded) of a second call, median of
  ``--repeats``. Target: 32 seeds in <= 2x the time of one.
- ``--part conv``: ``rae`` with ``arch="conv-paper"`` (Ghosh et al. 2020: 4 stride-2 convs
  128-256-512-1024 with batch norm, dense to z, dense to 8x8x1024 and transposed convs back) on
  synthetic 32x32x1 images, S = 1, 8, 32 runs in one program. Prints steps/s and the achieved
  FLOP/s: XLA's FLOP count of one run's training step (cost analysis of the lowered step; vmap
  does not change the arithmetic) x S x steps / training time, as a fraction of a large float32
  matmul measured in the same process at the same (default) precision, which on NVIDIA GPUs
  since Ampere lets XLA use TF32 tensor cores for float32 matmuls and convolutions alike; bf16
  and "highest" fp32 matmul rates are shown next to it. Target: >= 40% at the best S.
- ``--part table``: reads the records and prints the one markdown table (and writes ``--out``).

Before each new size a part checks that at least the previous size's cost (compile + runs) is
left of ``--limit-s`` and skips the size, saying so, when it is not; a size that starts and then
overruns is stopped by gpu.sh's limit for the part, and the rows finished before it stay.

    python benchmarks/gpu_bench.py --part gmm|mlp|conv --records FILE [--limit-s S] [sizes...]
    python benchmarks/gpu_bench.py --part table --records FILE [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

GMM_TARGET = 1.5  # 8 seeds / one fit
MLP_TARGET = 2.0  # 32 seeds / one seed
CONV_TARGET = 0.40  # achieved FLOP/s / fp32 matmul FLOP/s
MARGIN_S = 10.0  # left unused at the end of a part's limit: process exit, the record's write


class Records:
    """Appends one JSON object per line to the records file (written at once: a killed part keeps its rows)."""

    def __init__(self, path: str, part: str):
        self.path, self.part = Path(path), part

    def add(self, **record) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"part": self.part, **record}) + "\n")
        if "measurement" in record:
            print(
                f"[{self.part}] {record['measurement']}: {record.get('value', '')}  {record.get('details', '')}",
                flush=True,
            )

    def row(
        self, measurement: str, value: str, target: str = "", verdict: bool | None = None, details: str = ""
    ) -> None:
        self.add(measurement=measurement, value=value, target=target, verdict=verdict, details=details)


class Deadline:
    """Whether the next size can fit in what is left of the part's time limit.

    The estimate is a lower bound, the last size's cost (compile + timed runs): a larger S costs
    at least as much, and how much more depends on how far the device is from full (about S
    times on a busy CPU, far less on a GPU), so a size is skipped only when it cannot fit.
    """

    def __init__(self, limit_s: float):
        self.start, self.limit_s, self.last = time.perf_counter(), limit_s, None

    def left(self) -> float:
        return self.limit_s - MARGIN_S - (time.perf_counter() - self.start)

    def predict(self) -> float:
        """Seconds the next size takes at least: the last one's compile + runs (0 for the first)."""
        return 0.0 if self.last is None else self.last

    def allows(self) -> bool:
        return self.predict() <= self.left()

    def done(self, compile_s: float, runs_s: float) -> None:
        self.last = compile_s + runs_s


def synthetic_data(n: int, side: int, seed: int = 0):
    from jaxrae.data import make_dataset

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, side, side, 1), dtype=np.uint8)
    y = rng.integers(0, 10, size=n)
    return make_dataset(f"synthetic-{side}x{side}", x, y, x[:256], y[:256])


def _count(x: float) -> str:
    """A rate for the table: thousands separators from 100 up, three significant digits below."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def is_oom(e: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower()


def failure(e: Exception) -> str:
    return ("OOM: " if is_oom(e) else f"{type(e).__name__}: ") + (str(e).splitlines() or [""])[0][:120]


# --------------------------------------------------------------------------------------------
# Parts


def part_gmm(args, rec: Records) -> None:
    import jax

    from jaxrae.density import fit_gmm

    codes = _common.planted_codes(np.random.default_rng(0), args.gmm_n, 16, 10)
    settings = dict(max_iter=100, tol=1e-3, reg_covar=1e-6, n_init=1)
    rec.add(
        setup=f"GMM: {codes.shape} float32 planted codes, 10 components, full covariance, {settings}, "
        f"same codes for every seed; medians of {args.repeats} fits after a compiling call"
    )
    deadline, key, one = Deadline(args.limit_s), jax.random.key(0), None
    for seeds in [int(s) for s in args.gmm_seeds.split(",")]:
        name = "GMM fit, one seed" if seeds == 1 else f"GMM fit, {seeds} seeds vmapped / one fit"
        if not deadline.allows():
            rec.row(
                name, "skipped", details=f"needs at least ~{deadline.predict():.0f} s, {deadline.left():.0f} s left"
            )
            continue
        x = codes if seeds == 1 else np.broadcast_to(codes, (seeds, *codes.shape))
        try:
            first, wall, _, mixture = _common.time_calls(
                lambda x=x: fit_gmm(key, x, 10, "full", **settings), args.repeats
            )
        except Exception as e:
            traceback.print_exc()
            rec.row(name, "failed", details=failure(e))
            continue
        deadline.done(first - wall, (1 + args.repeats) * wall)
        n_iter = int(np.max(mixture.n_iter))
        if seeds == 1:
            one = (wall, n_iter)
            rec.row(name, f"{1e3 * wall:.1f} ms", details=f"n_iter {n_iter}; compile ~ {first - wall:.1f} s")
            continue
        if one is None:
            rec.row(name, f"{1e3 * wall:.1f} ms", details="no one-seed fit to compare with")
            continue
        ratio = wall / one[0]
        per_iteration = ratio * one[1] / n_iter
        rec.row(
            name,
            f"{ratio:.2f}x",
            f"<= {GMM_TARGET}x" if seeds == 8 else "",
            (ratio <= GMM_TARGET) if seeds == 8 else None,
            f"{1e3 * wall:.1f} ms; EM iterations: max {n_iter} over the seeds vs {one[1]} for the one fit, "
            f"so {per_iteration:.2f}x per iteration; compile ~ {first - wall:.1f} s",
        )


def _time_train(config, data, seeds: int, repeats: int):
    """(compile s, median training s over ``repeats`` calls after the compiling one, last Runs)."""
    from jaxrae.train import train

    first = train(config, data, list(range(seeds)), progress=False)
    walls, runs = [], first
    for _ in range(repeats):
        runs = train(config, data, list(range(seeds)), progress=False)
        walls.append(runs.wall_time_s)
    return first.compile_time_s, _common.median(walls), runs


def part_mlp(args, rec: Records) -> None:
    import jaxrae

    data = synthetic_data(args.mlp_n, 28)
    config = jaxrae.TrainConfig(method="rae", steps=args.mlp_steps, chunk_size=min(250, args.mlp_steps))
    rec.add(
        setup=f"MLP: rae, arch mlp, batch {config.batch_size}, {config.steps} steps in chunks of {config.chunk_size}, "
        f"{data.train_images_u8.shape[0]} synthetic 28x28 uint8 images; medians of {args.repeats} train() calls "
        "after a compiling one (Runs.wall_time_s: compilation excluded)"
    )
    deadline, times = Deadline(args.limit_s), {}
    for seeds in (1, args.mlp_seeds):
        if not deadline.allows():
            rec.row(
                f"MLP rae, {seeds} seeds",
                "skipped",
                details=f"needs at least ~{deadline.predict():.0f} s, {deadline.left():.0f} s left",
            )
            continue
        try:
            compile_s, wall, runs = _time_train(config, data, seeds, args.repeats)
        except Exception as e:
            traceback.print_exc()
            rec.row(f"MLP rae, {seeds} seeds", "failed", details=failure(e))
            continue
        deadline.done(compile_s, (1 + args.repeats) * wall)
        times[seeds] = wall
        rec.row(
            f"MLP rae, {seeds} seed{'s' if seeds > 1 else ''} in one program",
            f"{wall:.3f} s",
            details=f"{_count(config.steps / wall)} steps/s, {_count(seeds * config.steps / wall)} run-steps/s; compile {compile_s:.1f} s"
            + ("" if bool(runs.ok.all()) else "; some runs diverged"),
        )
    if 1 in times and args.mlp_seeds in times:
        ratio = times[args.mlp_seeds] / times[1]
        rec.row(
            f"MLP rae, {args.mlp_seeds} seeds in one program / 1 seed",
            f"{ratio:.2f}x",
            f"<= {MLP_TARGET}x",
            ratio <= MLP_TARGET,
            "training time of the two rows above",
        )


def matmul_rates(n: int) -> dict:
    """FLOP/s of an n x n matmul: bf16, fp32 at JAX's default precision, fp32 at "highest"."""
    import jax
    import jax.numpy as jnp

    rates = {}
    for name, dtype, precision in (
        ("fp32", jnp.float32, None),
        ("bf16", jnp.bfloat16, None),
        ("fp32-highest", jnp.float32, "highest"),
    ):
        try:
            with jax.default_matmul_precision(precision) if precision else _nullcontext():
                rates[name] = _common.matmul_flops_per_s(n, dtype, repeats=10)
        except Exception as e:
            print(f"matmul {name} failed: {e}", file=sys.stderr)
            rates[name] = float("nan")
    return rates


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def step_flops(config, data) -> float:
    """XLA's FLOP count of one training step of one run (cost analysis, lowered; compiled as fallback)."""
    import jax
    import jax.numpy as jnp

    from jaxrae.train import default_hparams, make_train

    trainer = make_train(config, data)
    state = trainer.init(jax.random.key(0), default_hparams(trainer.config))
    batch = jnp.zeros((config.batch_size, *data.train_images_u8.shape[1:]), jnp.uint8)
    lowered = jax.jit(trainer.step).lower(state, jax.random.key(1), batch)
    for analyse in (lowered.cost_analysis, lambda: lowered.compile().cost_analysis()):
        try:
            cost = analyse()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            if cost and cost.get("flops", 0) > 0:
                return float(cost["flops"])
        except Exception:
            continue
    return float("nan")


def part_conv(args, rec: Records) -> None:
    import jaxrae

    data = synthetic_data(4096, 32)
    config = jaxrae.TrainConfig(
        method="rae", arch="conv-paper", batch_size=args.conv_batch, steps=args.conv_steps, chunk_size=args.conv_steps
    )
    rates = matmul_rates(args.matmul_n)
    flops1 = step_flops(config, data)
    fmt = _common.fmt_rate
    rec.add(
        setup=f"conv-paper: rae, 32x32x1 synthetic uint8, batch {config.batch_size}, {config.steps} steps (one chunk), "
        f"float32 training; XLA FLOPs per step and run {flops1 / 1e9:.1f} G; {args.matmul_n}^2 matmul in the same "
        f"process: fp32 (default precision) {fmt(rates['fp32'])}FLOP/s, bf16 {fmt(rates['bf16'])}FLOP/s, "
        f"fp32 highest {fmt(rates['fp32-highest'])}FLOP/s; one train() call per S after a compiling one"
    )
    deadline, best = Deadline(args.limit_s), None
    for seeds in [int(s) for s in args.conv_sizes.split(",")]:
        name = f"conv-paper, S={seeds} in one program"
        if not deadline.allows():
            rec.row(
                name, "skipped", details=f"needs at least ~{deadline.predict():.0f} s, {deadline.left():.0f} s left"
            )
            continue
        try:
            compile_s, wall, runs = _time_train(config, data, seeds, 1)
        except Exception as e:
            traceback.print_exc()
            rec.row(name, "failed", details=failure(e))
            if is_oom(e):
                break
            continue
        deadline.done(compile_s, 2 * wall)
        achieved = flops1 * seeds * config.steps / wall
        fraction = achieved / rates["fp32"]
        rec.row(
            name,
            f"{_count(config.steps / wall)} steps/s",
            details=f"{_count(seeds * config.steps * config.batch_size / wall)} img/s; "
            f"{fmt(achieved)}FLOP/s = {fraction:.0%} of fp32 matmul, {achieved / rates['bf16']:.0%} of bf16; "
            f"compile {compile_s:.1f} s" + ("" if bool(runs.ok.all()) else "; some runs diverged"),
        )
        if best is None or fraction > best[1]:
            best = (seeds, fraction, achieved)
        # Written after every size (the table keeps the last), so a larger S stopped by the limit leaves the verdict.
        rec.row(
            "conv-paper achieved FLOP/s / fp32 matmul (best S)",
            f"{best[1]:.0%}",
            f">= {CONV_TARGET:.0%}",
            best[1] >= CONV_TARGET,
            f"S={best[0]}: {fmt(best[2])}FLOP/s against {fmt(rates['fp32'])}FLOP/s",
        )


def part_table(args) -> list[str]:
    """The one markdown table of every part's records (and a row for each part that did not finish)."""
    records = [json.loads(line) for line in Path(args.records).read_text().splitlines() if line.strip()]
    machine = next((r["machine"] for r in records if "machine" in r), ["# machine: unknown (no part started JAX)"])
    cpu = next((r["backend"] == "cpu" for r in records if "backend" in r), True)
    lines = ["# command: bash benchmarks/gpu.sh", *machine]
    if cpu:
        lines.append(
            "# WARNING: no accelerator: a CPU smoke run with small sizes; the targets are a GPU's and are not judged"
        )
    lines += [f"# {r['part']}: {r['setup']}" for r in records if "setup" in r]
    lines.append("")
    rows, latest = [], {}
    for i, r in enumerate(records):  # a measurement written again (a running best) keeps its last value
        if "measurement" in r:
            latest[r["part"], r["measurement"]] = i
    for i, r in enumerate(records):
        if "measurement" in r and latest[r["part"], r["measurement"]] == i:
            verdict = "" if r["verdict"] is None else ("pass" if r["verdict"] else "FAIL")
            if verdict and cpu:
                verdict = f"({verdict}; CPU: not judged)"
            rows.append([r["part"], r["measurement"], r["value"], r["target"], verdict, r["details"]])
        elif "rc" in r and str(r["rc"]) == "skipped":
            rows.append([r["part"], "part not run", "", "", "not measured", "no time was left for it"])
        elif "rc" in r and str(r["rc"]) != "0":
            why = (
                f"stopped at its {r.get('limit_s')} s limit"
                if str(r["rc"]) in ("124", "137")
                else f"exit code {r['rc']}"
            )
            rows.append(
                [
                    r["part"],
                    "part did not finish",
                    "",
                    "",
                    "incomplete",
                    f"{why}; its rows above are what it finished (log on stderr)",
                ]
            )
    lines += _common.markdown_table(["part", "measurement", "value", "target", "result", "details"], rows, "llrlll")
    total = next((r["total_s"] for r in records if "total_s" in r), None)
    if total is not None:
        lines.append(f"\n# gpu.sh wall time until the table: {total} s")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("gmm", "mlp", "conv", "table"), required=True)
    parser.add_argument("--records", required=True, help="JSON-lines file the parts append to and the table reads")
    parser.add_argument(
        "--limit-s", type=float, default=120.0, help="this part's time limit: sizes that would not finish are skipped"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gmm-n", type=int, default=60_000)
    parser.add_argument("--gmm-seeds", default="1,8,32")
    parser.add_argument("--mlp-n", type=int, default=60_000)
    parser.add_argument("--mlp-steps", type=int, default=2000)
    parser.add_argument("--mlp-seeds", type=int, default=32)
    parser.add_argument("--conv-sizes", default="1,8,32")
    parser.add_argument("--conv-steps", type=int, default=20)
    parser.add_argument("--conv-batch", type=int, default=100)
    parser.add_argument("--matmul-n", type=int, default=8192)
    parser.add_argument("--out", help="--part table: also write the table to this file")
    args = parser.parse_args(argv)

    if args.part == "table":
        lines = part_table(args)
        print("\n".join(lines), flush=True)
        _common.write_table(args.out, lines)
        return 0
    import jax

    rec = Records(args.records, args.part)
    rec.add(machine=_common.machine_lines(), backend=jax.default_backend())
    {"gmm": part_gmm, "mlp": part_mlp, "conv": part_conv}[args.part](args, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
