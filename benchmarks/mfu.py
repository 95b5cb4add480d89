"""Model FLOPs utilisation of training on this machine: float32 and bf16 autocast, against the measured matmul rate.

In one run the script measures

* the matrix-multiply rate of a large ``torch.mm`` (``--mm-size`` squared, float32 and bfloat16), the best of
  several repeats;
* for each model config (default ``configs/models/tiny_2stage.json`` and ``small_2stage.json``), the training
  throughput at ``--length`` bytes (batch 1, English text): forward, backward (next-byte cross-entropy + 0.03 x the
  ratio losses) and an AdamW step, in float32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
* achieved model FLOP/s = training FLOPs per byte (paper App. B counting, ``dynamic_chunker.evaluation.flops``,
  training = 3 x forward, at the compression the routers realised in the timed steps) x bytes per second, and MFU =
  achieved / the float32 ``torch.mm`` rate (for bf16 also / the bf16 rate);
* a ``torch.profiler`` table of one float32 step of each model (``--profile``): where the time goes.

Routers: random-init routers compress much less than trained ones (about 2 and 1.3 bytes per chunk instead of the
paper's 3 and 3), which puts several times more positions through the inner stages. By default each model's routers
are first calibrated on the text to the paper's ratio-loss targets (W_q = W_k = I + g u u^T, as in
``decode_throughput.py``); the realised compression is measured on every timed step and reported either way.

bytes/s come from the fastest timed step (other processes on a shared machine only ever add time); the median is
shown too. Usage: ``python benchmarks/mfu.py``; writes ``benchmarks/results/mfu_cpu.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from decode_throughput import calibrate_routing, load_average, machine, sync, write_report

from dynamic_chunker import HNetConfig, HNetForCausalLM, parameter_groups
from dynamic_chunker.evaluation.flops import default_compression, training_flops_per_byte
from dynamic_chunker.reference import RATIO_LOSS_WEIGHT

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_CONFIGS = [ROOT / "configs" / "models" / "tiny_2stage.json", ROOT / "configs" / "models" / "small_2stage.json"]
DEFAULT_TEXTS = [ROOT / "data" / "english" / "val.bin", Path("/usr/share/common-licenses/GPL-3")]
DEFAULT_OUTPUT = HERE / "results" / "mfu_cpu.md"


def matmul_rate(dtype: torch.dtype, size: int, repeats: int, device: torch.device | str = "cpu") -> float:
    """FLOP/s of the best of ``repeats`` (size x size) @ (size x size) products on ``device``."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, generator=gen, device=device).to(dtype) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def text_ids(path: Path, length: int) -> torch.Tensor:
    """(1, length + 1) byte ids from the start of the file, repeated if it is shorter."""
    data = np.fromfile(path, dtype=np.uint8)
    if len(data) == 0:
        raise ValueError(f"text file {path} is empty")
    data = np.tile(data, -(-(length + 1) // len(data)))[: length + 1]
    return torch.from_numpy(data.astype(np.int64))[None]


def build(config: HNetConfig, ids: torch.Tensor, targets: list[float], calibrate: bool) -> HNetForCausalLM:
    torch.manual_seed(0)
    model = HNetForCausalLM(config)
    if calibrate and targets:
        calibrate_routing(model, ids[:, :-1], targets)
    return model


def training_step(model: HNetForCausalLM, optimizer, ids: torch.Tensor, targets: list[float], bf16: bool):
    """One forward + backward + AdamW step; returns the number of chunks of every stage."""
    optimizer.zero_grad(set_to_none=True)
    autocast = torch.autocast(ids.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        out = model(ids[:, :-1])
        loss = F.cross_entropy(out.logits.float().flatten(0, 1), ids[:, 1:].flatten())
        if out.routing:
            loss = loss + RATIO_LOSS_WEIGHT * sum(model.ratio_losses(out, targets))
    loss.backward()
    optimizer.step()
    return [int(r.boundary_mask.sum()) for r in out.routing]


def measure(config: HNetConfig, ids: torch.Tensor, bf16: bool, args, targets: list[float]) -> dict:
    model = build(config, ids, targets, args.calibrate)
    groups = parameter_groups(model, [1.0] * config.num_stages, weight_decay=0.1)
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    for _ in range(args.warmup):
        training_step(model, optimizer, ids, targets, bf16)
    times, counts = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        counts.append(training_step(model, optimizer, ids, targets, bf16))
        times.append(time.perf_counter() - start)
    length = ids.shape[1] - 1
    mean_counts = [sum(c[s] for c in counts) / len(counts) for s in range(len(counts[0]))]
    positions = [length, *mean_counts]
    compression = [positions[s] / positions[s + 1] for s in range(len(mean_counts))]
    flops = training_flops_per_byte(config, length, compression)
    return {
        "seconds": times,
        "bytes_per_s": length / min(times),
        "median_bytes_per_s": length / statistics.median(times),
        "compression": compression,
        "flops_per_byte": flops,
        "flops_per_s": flops * length / min(times),
        "params": sum(p.numel() for p in model.parameters()),
    }


def profile_table(config: HNetConfig, ids: torch.Tensor, args, targets: list[float], rows: int = 15) -> str:
    """Top operators (self CPU time) of one float32 training step after a warm-up step."""
    from torch.profiler import profile

    model = build(config, ids, targets, args.calibrate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    training_step(model, optimizer, ids, targets, False)
    with profile() as prof:
        training_step(model, optimizer, ids, targets, False)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=Path, nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--text", type=Path, default=next((p for p in DEFAULT_TEXTS if p.is_file()), None))
    parser.add_argument("--length", type=int, default=8192, help="bytes per training sequence")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per model and precision")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--mm-size", type=int, default=4096)
    parser.add_argument("--mm-repeats", type=int, default=5)
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false", help="keep random-init routers")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.text is None or not args.text.is_file():
        parser.error(f"text file not found: {args.text}; pass --text PATH to a local English text")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start, loads = time.perf_counter(), [load_average()]
    rate32 = matmul_rate(torch.float32, args.mm_size, args.mm_repeats)
    rate16 = matmul_rate(torch.bfloat16, args.mm_size, args.mm_repeats)
    print(f"torch.mm {args.mm_size}^2: float32 {rate32 / 1e9:.0f} GFLOP/s, bfloat16 {rate16 / 1e9:.0f} GFLOP/s")
    ids = text_ids(args.text, args.length)
    results, profiles = [], {}
    for path in args.configs:
        config = HNetConfig.from_json(path)
        targets = default_compression(config)
        for bf16 in (False, True):
            r = {"config": path.stem, "bf16": bf16, **measure(config, ids, bf16, args, targets)}
            results.append(r)
            print(
                f"{path.stem} {'bf16' if bf16 else 'fp32'}: {r['bytes_per_s']:,.0f} bytes/s, "
                f"{r['flops_per_s'] / 1e9:.1f} GFLOP/s, MFU {r['flops_per_s'] / rate32:.1%}, "
                f"bytes/chunk {' / '.join(f'{c:.2f}' for c in r['compression'])}",
                flush=True,
            )
        if args.profile:
            profiles[path.stem] = profile_table(config, ids, args, targets)
    loads.append(load_average())

    command = "python " + " ".join([str(Path(sys.argv[0])), *(sys.argv[1:] if argv is None else argv)])
    lines = [
        "# Training MFU on CPU: float32 and bf16 autocast against the measured matmul rate",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {machine('cpu')}; load average before / after: {loads[0]} / {loads[1]}; "
        f"run time {time.perf_counter() - start:.0f} s  ",
        f"Matmul rate (`torch.mm`, {args.mm_size} x {args.mm_size}, best of {args.mm_repeats}): float32 "
        f"**{rate32 / 1e9:.0f} GFLOP/s**, bfloat16 {rate16 / 1e9:.0f} GFLOP/s ({rate16 / rate32:.1f}x)  ",
        f"Training step: batch 1 x {args.length} bytes of `{args.text}`, forward + backward (CE + "
        f"{RATIO_LOSS_WEIGHT} x ratio losses) + AdamW (lr {args.lr}); {args.warmup} warm-up and {args.steps} timed "
        "steps; random weights (seed 0), routers "
        + ("calibrated to the paper's ratio-loss targets" if args.calibrate else "random-init")
        + "; FLOPs: paper App. B, training = 3 x forward, at the realised bytes per chunk",
        "",
        "| model | params | precision | bytes/s (best) | bytes/s (median) | bytes/chunk | training MFLOPs/byte "
        "| model GFLOP/s | MFU vs fp32 mm | MFU vs bf16 mm | bf16 / fp32 speed |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    fp32_speed = {r["config"]: r["bytes_per_s"] for r in results if not r["bf16"]}
    for r in results:
        lines.append(
            f"| {r['config']} | {r['params'] / 1e6:.1f}M | {'bf16 autocast' if r['bf16'] else 'float32'} | "
            f"{r['bytes_per_s']:,.0f} | {r['median_bytes_per_s']:,.0f} | "
            f"{' / '.join(f'{c:.2f}' for c in r['compression'])} | {r['flops_per_byte'] / 1e6:.1f} | "
            f"{r['flops_per_s'] / 1e9:.1f} | {r['flops_per_s'] / rate32:.1%} | "
            + (f"{r['flops_per_s'] / rate16:.1%}" if r["bf16"] else "-")
            + f" | {r['bytes_per_s'] / fp32_speed[r['config']]:.2f}x |"
        )
    lines += [
        "",
        "Step times (s): "
        + "; ".join(
            f"{r['config']} {'bf16' if r['bf16'] else 'fp32'}: " + ", ".join(f"{t:.2f}" for t in r["seconds"])
            for r in results
        ),
        "",
    ]
    for name, table in profiles.items():
        lines += [f"## Profile: one float32 training step of {name}", "", "```", table, "```", ""]
    text = "\n".join(lines)
    write_report(text, args.output)


if __name__ == "__main__":
    main()
