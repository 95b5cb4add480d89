"""bf16 autocast against float32 in real training: throughput and validation bits-per-byte after the same steps.

Trains the same config twice with the project's trainer (same seed, weights, batches and schedule by steps, no time
budget), with ``train.dtype=fp32`` and ``train.dtype=bf16``, and reports per run: training bytes/s (median over the
logged steps after the first 10, which include warm-up), the final validation BPB and stage-0 compression, and the
ratios (targets: at least 2x faster, BPB within 0.02). Needs the prepared corpus (``hnet data prepare english``).
Writes ``benchmarks/results/bf16_training_cpu.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import common
from dynamic_chunker.training import load_config, train

WARMUP_STEPS = 10  # logged steps left out of the throughput median (allocator and autocast caches warming up)


def run(config_path: Path, dtype: str, steps: int, out: Path) -> dict:
    overrides = [f"out={out}", f"train.dtype={dtype}", f"train.steps={steps}", "eval.every=0", "checkpoint.every=0"]
    start = time.perf_counter()
    result = train(load_config(config_path, overrides), progress=False)
    final = result.evals[-1]
    return {
        "bytes_per_s": statistics.median(row["bytes_per_s"] for row in result.history[WARMUP_STEPS:]),
        "bpb": final["val_bpb"],
        "compression": final["val_compression_0"],
        "minutes": (time.perf_counter() - start) / 60,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=common.ROOT / "configs" / "tiny_1stage.yaml")
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps per run (default 120)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on shared cores)")
    parser.add_argument("--output", type=Path, default=common.RESULTS / "bf16_training_cpu.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    corpus = load_config(args.config).data.corpus
    if not Path(corpus, "manifest.json").is_file():
        print(f"no prepared corpus at {corpus}: run `hnet data prepare english` first", file=sys.stderr)
        return 2
    bench, results = common.Run("bf16_training", argv), {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("fp32", "bf16"):
            print(f"training {args.config.name} for {args.steps} steps in {dtype} ...", flush=True)
            results[dtype] = run(args.config, dtype, args.steps, Path(tmp) / dtype)
    lines = bench.header(f"bf16 autocast vs float32 training ({common.shown(args.config)}, {args.steps} steps, CPU)")
    lines += ["| run | bytes/s (median) | validation BPB | stage-0 compression | minutes |"]
    lines += ["|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        cells = f"{r['bytes_per_s']:,.0f} | {r['bpb']:.4f} | {r['compression']:.2f} | {r['minutes']:.1f}"
        lines.append(f"| {name} | {cells} |")
    fp32, bf16 = results["fp32"], results["bf16"]
    lines += [
        "",
        f"bf16 / fp32 throughput: **{bf16['bytes_per_s'] / fp32['bytes_per_s']:.2f}x** (target >= 2x); "
        f"BPB difference bf16 - fp32: **{bf16['bpb'] - fp32['bpb']:+.4f}** (target within 0.02).",
    ]
    common.write_report(lines, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
