"""Training MFU on CPU: float32 and bf16 autocast training throughput against the measured matmul rate.

Measures the float32 and bfloat16 ``torch.mm`` rates (``--mm-size`` squared, best of ``--mm-repeats``), then for
``tiny_2stage`` and ``small_2stage`` (random weights, routers calibrated to the ratio-loss targets) the training
throughput at ``--length`` bytes (batch 1, packed English documents; the trainer's objective, backward, AdamW) in
float32 and bf16 autocast: bytes/s of the fastest and the median step, training FLOPs per byte (paper App. B at the
realised compression, training = 3 x forward), and MFU = those FLOPs x bytes/s / the matmul rate. A profile of one
float32 step per model (``--no-profile`` to skip) closes the report. Writes ``benchmarks/results/mfu_cpu.md``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks import common
from dynamic_chunker import HNetConfig
from dynamic_chunker.evaluation.flops import default_compression


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__, "mfu_cpu.md")
    configs = [common.MODELS / "tiny_2stage.json", common.MODELS / "small_2stage.json"]
    parser.add_argument("--configs", type=Path, nargs="+", default=configs)
    parser.add_argument("--length", type=int, default=8192, help="bytes per training sequence")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per model and precision")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--mm-size", type=int, default=4096)
    parser.add_argument("--mm-repeats", type=int, default=5)
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    args = common.parse(parser, argv)
    run = common.Run("mfu", argv)
    rate32 = common.matmul_rate(torch.float32, args.mm_size, args.mm_repeats)
    rate16 = common.matmul_rate(torch.bfloat16, args.mm_size, args.mm_repeats)
    ids = common.text_rows(args.text, 1, args.length + 1)
    results, profiles = [], {}
    for path in args.configs:
        config = HNetConfig.from_json(path)
        targets = default_compression(config)
        for bf16 in (False, True):
            model = common.build(config, ids[:, :-1], targets)
            r = common.train_rate(model, ids, targets, args.warmup, args.steps, bf16, args.lr)
            results.append({"config": path.stem, "bf16": bf16, "params": common.params(model), **r})
            print(f"{path.stem} {'bf16' if bf16 else 'fp32'}: {r['bytes_per_s']:,.0f} bytes/s", flush=True)
        if args.profile:
            model = common.build(config, ids[:, :-1], targets)
            profiles[path.stem] = common.profile_table(
                lambda model=model, t=targets: common.training_step(model, None, ids, t)
            )
    lines = run.header(
        "Training MFU on CPU: float32 and bf16 autocast against the measured matmul rate",
        f"Matmul rate (`torch.mm`, {args.mm_size} x {args.mm_size}, best of {args.mm_repeats}): float32 "
        f"**{rate32 / 1e9:.0f} GFLOP/s**, bfloat16 {rate16 / 1e9:.0f} GFLOP/s ({rate16 / rate32:.1f}x)",
        f"Training step: batch 1 x {args.length} bytes of `{common.shown(args.text)}` (packed documents), "
        f"{common.LOSS}, backward, "
        f"AdamW (lr {args.lr}); {args.warmup} warm-up and {args.steps} timed steps; random weights (seed 0), routers "
        "calibrated to the ratio-loss targets; FLOPs: paper App. B, training = 3 x forward, realised compression",
    )
    lines += [
        "| model | params | precision | bytes/s (best) | bytes/s (median) | bytes/chunk | training MFLOPs/byte "
        "| model GFLOP/s | MFU vs fp32 mm | MFU vs bf16 mm | bf16 / fp32 speed |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    fp32 = {r["config"]: r["bytes_per_s"] for r in results if not r["bf16"]}
    for r in results:
        lines.append(
            f"| {r['config']} | {r['params'] / 1e6:.1f}M | {'bf16 autocast' if r['bf16'] else 'float32'} | "
            f"{r['bytes_per_s']:,.0f} | {r['median_bytes_per_s']:,.0f} | {common.fmt(r['compression'])} | "
            f"{r['flops_per_byte'] / 1e6:.1f} | {r['flops_per_s'] / 1e9:.1f} | {r['flops_per_s'] / rate32:.1%} | "
            + (f"{r['flops_per_s'] / rate16:.1%}" if r["bf16"] else "-")
            + f" | {r['bytes_per_s'] / fp32[r['config']]:.2f}x |"
        )
    times = [f"{r['config']} {'bf16' if r['bf16'] else 'fp32'}: {common.fmt(r['seconds'])}" for r in results]
    lines += ["", "Step times (s): " + "; ".join(times), ""]
    for name, table in profiles.items():
        lines += [f"## Profile: one float32 training step of {name}", "", "```", table, "```", ""]
    common.write_report(lines, args.output)


if __name__ == "__main__":
    main()
