"""bf16 autocast against float32 in real training: throughput and validation bits-per-byte after the same steps.

Issue 5, target 2: bf16 autocast should train at least 2x faster than float32 on this CPU, with validation BPB after
the same number of steps within 0.02 of the float32 run. The script trains the same config twice with the project's
trainer (same seed, same initial weights, same batches, same schedule by steps, no time budget), once with
``train.dtype=fp32`` and once with ``train.dtype=bf16``, and reports per run: training bytes/s (median over the
logged steps after the first 10, which include warm-up), the final validation BPB and stage-0 compression, and the
ratios. Usage: ``python benchmarks/bf16_training.py [--config configs/tiny_1stage.yaml] [--steps 120]``; writes
``benchmarks/results/bf16_training_cpu.md``. Needs the prepared corpus (``hnet data prepare english``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from decode_throughput import load_average, machine, write_report

from dynamic_chunker.training import load_config, train

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WARMUP_STEPS = 10  # logged steps left out of the throughput median (allocator and autocast caches warming up)


def run(config_path: Path, dtype: str, steps: int, out: Path) -> dict:
    overrides = [f"out={out}", f"train.dtype={dtype}", f"train.steps={steps}", "eval.every=0", "checkpoint.every=0"]
    config = load_config(config_path, overrides)
    start = time.perf_counter()
    result = train(config, progress=False)
    rates = [row["bytes_per_s"] for row in result.history[WARMUP_STEPS:]]
    final = result.evals[-1]
    return {
        "bytes_per_s": statistics.median(rates),
        "bpb": final["val_bpb"],
        "compression": final["val_compression_0"],
        "minutes": (time.perf_counter() - start) / 60,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny_1stage.yaml")
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps per run (default 120)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on shared cores)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "bf16_training_cpu.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = load_config(args.config).data.corpus
    if not Path(corpus, "manifest.json").is_file():
        print(f"no prepared corpus at {corpus}: run `hnet data prepare english` first", file=sys.stderr)
        return 2
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("fp32", "bf16"):
            print(f"training {args.config.name} for {args.steps} steps in {dtype} ...", flush=True)
            results[dtype] = run(args.config, dtype, args.steps, Path(tmp) / dtype)
    fp32, bf16 = results["fp32"], results["bf16"]
    lines = [
        f"# bf16 autocast vs float32 training ({args.config.name}, {args.steps} steps, CPU)",
        "",
        f"Machine: {machine('cpu')}; load average at the end {load_average()}.",
        f"Command: `python benchmarks/bf16_training.py --config {args.config.relative_to(ROOT)} --steps {args.steps}"
        f" --threads {args.threads}`",
        "",
        "| run | bytes/s (median) | validation BPB | stage-0 compression | minutes |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['bytes_per_s']:,.0f} | {r['bpb']:.4f} | {r['compression']:.2f} | {r['minutes']:.1f} |"
        )
    lines += [
        "",
        f"bf16 / fp32 throughput: **{bf16['bytes_per_s'] / fp32['bytes_per_s']:.2f}x** (target >= 2x); "
        f"BPB difference bf16 - fp32: **{bf16['bpb'] - fp32['bpb']:+.4f}** (target within 0.02).",
    ]
    write_report("\n".join(lines) + "\n", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
