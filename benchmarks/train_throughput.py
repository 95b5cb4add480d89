"""Training throughput and peak memory of an H-Net against an isotropic byte Transformer of equal FLOPs per byte.

For each length (default 1K, 4K, 16K bytes; batch 1; packed documents of real text, as the trainer sees them) one
forward + backward of the trainer's objective, for the H-Net of ``benchmarks/configs/hnet_2stage_bench.json`` (the
released 2-stage layout shrunk to 41M parameters: widths 256/384/512, main network T8, d_state 64) with its routers
calibrated to the ratio-loss targets (``evaluation.calibration``; a random router compresses far less), and for
the LlamaByte-style Transformer whose FLOPs per byte match it at ``--match-length`` (``evaluation.baselines``).

Each (model, length) runs in a fresh process: after building the model it resets the kernel's peak-RSS counter,
then runs warm-up and timed iterations; peak memory = peak RSS - RSS before them. bytes/s comes from the fastest
timed iteration (other processes only ever add time; ``--threads 1`` is steadier on shared cores); no iteration
starts that would overrun ``--budget`` seconds (* = only the cold warm-up fitted). Writes
``benchmarks/results/train_throughput_cpu.md``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks import common
from dynamic_chunker import HNetConfig
from dynamic_chunker.evaluation.baselines import isotropic_config
from dynamic_chunker.evaluation.calibration import calibrate_routing
from dynamic_chunker.evaluation.compression import positions_per_chunk
from dynamic_chunker.evaluation.flops import default_compression, forward_flops_per_byte, training_flops_per_byte


def measure(spec: dict) -> dict:
    """One (model, length) measurement; runs in its own process."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    model = common.build(HNetConfig.from_dict(spec["config"]))
    if spec["routing"]:
        model.load_state_dict({**model.state_dict(), **torch.load(spec["routing"], weights_only=True)})
    ids = common.text_rows(Path(spec["text"]), 1, spec["length"] + 1)
    targets = spec["targets"] if spec["routing"] else []
    exact = common.reset_peak_rss()
    baseline = common.peak_rss_bytes()
    warm, times, counts = [], [], []
    for _ in range(spec["warmup"]):
        start = time.perf_counter()
        counts = common.chunk_counts(common.training_step(model, None, ids, targets))
        warm.append(time.perf_counter() - start)
    left = spec["budget"] - sum(warm)
    while len(times) < spec["max_iters"] and not (len(times) >= spec["min_iters"] and sum(times) >= spec["min_time"]):
        if (times or warm) and (times or warm)[-1] > left:
            break  # the next iteration would not fit
        start = time.perf_counter()
        counts = common.chunk_counts(common.training_step(model, None, ids, targets))
        times.append(time.perf_counter() - start)
        left -= times[-1]
    return {
        "seconds": times or warm,
        "cold": not times,
        "bytes_per_s": spec["length"] / min(times or warm),
        "peak_bytes": common.peak_rss_bytes() - baseline,
        "exact": exact,
        "compression": positions_per_chunk(spec["length"], counts),
        "params": common.params(model),
    }


def layout(config: HNetConfig) -> str:
    def flat(node) -> str:
        return node[0] if len(node) == 1 else f"{node[0]} / {flat(node[1])} / {node[2]}"

    return f"{flat(config.arch_layout)}, widths {config.d_model}, d_intermediate {config.d_intermediate}"


def main(argv: list[str] | None = None) -> None:
    if common.worker_entry(argv, measure):
        return
    parser = common.parser(__doc__, "train_throughput_cpu.md", common.HERE / "configs" / "hnet_2stage_bench.json")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--compression", type=float, nargs="+", help="bytes per chunk per stage (default: targets)")
    parser.add_argument("--match-length", type=int, default=4096, help="length at which FLOPs per byte are matched")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--min-iters", type=int, default=2)
    parser.add_argument("--max-iters", type=int, default=10)
    parser.add_argument("--min-time", type=float, default=5.0, help="seconds of timed iterations per measurement")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per (model, length) measurement")
    args = common.parse(parser, argv)
    run = common.Run("train_throughput", argv)
    hnet = HNetConfig.from_json(args.config)
    args.compression = args.compression or default_compression(hnet)
    target = forward_flops_per_byte(hnet, args.match_length, args.compression)
    iso = isotropic_config(hnet, target, args.match_length)
    spec = {"text": str(args.text), "targets": args.compression, "threads": args.threads}
    spec.update({k: getattr(args, k) for k in ("warmup", "min_iters", "max_iters", "min_time", "budget")})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for length in args.lengths:
            routing = Path(tmp) / f"routing_{length}.pt"
            torch.save(
                calibrate_routing(common.build(hnet), common.text_rows(args.text, 1, length), args.compression), routing
            )
            row = {"length": length}
            for name, config in (("hnet", hnet), ("iso", iso)):
                job = {**spec, "config": config.to_dict(), "length": length, "routing": str(routing) * (name == "hnet")}
                row[name] = common.run_worker("benchmarks.train_throughput", job, f"{name} at {length} bytes")
                print(f"{length} bytes {name}: {row[name]['bytes_per_s']:,.0f} bytes/s", flush=True)
            rows.append(row)
    lines = run.header(
        "Training throughput: H-Net vs isotropic byte Transformer of equal FLOPs per byte (CPU)",
        f"Text: `{common.shown(args.text)}`, packed documents (ids change at BOS); batch 1; forward + backward "
        f"of the {common.LOSS} "
        f"(no optimizer step); {args.warmup} warm-up, then >= {args.min_iters} timed iterations and "
        f"{args.min_time:g} s within {args.budget:g} s per measurement; bytes/s from the fastest (* = cold warm-up).",
        f"H-Net: `{common.shown(args.config)}`: {layout(hnet)}, d_state {hnet.ssm_cfg.d_state}; "
        f"{rows[0]['hnet']['params'] / 1e6:.1f}M parameters; routers calibrated to {args.compression} bytes per chunk.",
        f"Isotropic: {layout(iso)}, window {iso.attn_cfg.window_size[0] + 1} keys; "
        f"{rows[0]['iso']['params'] / 1e6:.1f}M parameters; FLOPs per byte matched at {args.match_length} bytes.",
    )
    lines += [
        "| bytes | H-Net bytes/s | isotropic bytes/s | ratio H/I | H-Net peak mem | isotropic peak mem | ratio H/I "
        "| H-Net bytes/chunk per stage | fwd MFLOPs/byte H / I | training GFLOP/s H / I |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        n, h, i = row["length"], row["hnet"], row["iso"]
        speeds = [f"{r['bytes_per_s']:,.0f}" + "*" * r["cold"] for r in (h, i)]
        flops = [forward_flops_per_byte(hnet, n, h["compression"]), forward_flops_per_byte(iso, n, [])]
        train = [training_flops_per_byte(hnet, n, h["compression"]) * h["bytes_per_s"] / 1e9]
        train.append(training_flops_per_byte(iso, n, []) * i["bytes_per_s"] / 1e9)
        lines.append(
            f"| {n} | {speeds[0]} | {speeds[1]} | {h['bytes_per_s'] / i['bytes_per_s']:.2f} | "
            f"{h['peak_bytes'] / 2**20:,.0f} MiB | {i['peak_bytes'] / 2**20:,.0f} MiB | "
            f"{h['peak_bytes'] / i['peak_bytes']:.2f} | {common.fmt(h['compression'])} | {flops[0] / 1e6:.1f} / "
            f"{flops[1] / 1e6:.1f} | {train[0]:.1f} / {train[1]:.1f} |"
        )
    exact = all(r[m]["exact"] for r in rows for m in ("hnet", "iso"))
    lines += [
        "",
        "Peak memory: peak RSS during the iterations minus the RSS before them, a fresh process per (model, length)"
        + ("." if exact else " (the counter could not be reset: may under-report)."),
        "FLOPs: paper App. B counting at the realised compression; training = 3 x forward. Iteration times (s): "
        + "; ".join(
            f"{r['length']}: H {common.fmt(r['hnet']['seconds'])} | I {common.fmt(r['iso']['seconds'])}" for r in rows
        ),
    ]
    common.write_report(lines, args.output)


if __name__ == "__main__":
    main()
