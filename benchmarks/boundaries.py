"""Boundary extraction speed: ``model.boundaries`` against the full forward, in MB of English text per second.

The text is the English validation split prepared by ``hnet data prepare`` (``data/english/val.bin``), or any local
file given with ``--text``. It is cut into rows of ``--length`` bytes, ``--batch`` rows per call, and the whole text
is processed once per pass. MB/s = text bytes / the fastest of ``--passes`` timed passes (after a warm-up call);
on a shared machine other processes only ever add time, so the minimum is the least noisy estimate.

The model is ``configs/models/small_2stage.json`` (or ``--config``) with random weights (seed 0). The cost of the
boundaries depends on how much the first stage compresses (the second stage's encoder runs on its chunks), and a
random-init router compresses far less than a trained one, so every setting is measured twice in the same run: with
the random-init routers, and with routers calibrated (as in ``decode_throughput.py``: W_q = W_k = I + g u u^T, g
bisected) to ``--compression`` bytes per chunk per stage, the paper's ratio-loss targets by default. The realised
bytes per chunk are reported for both.

Both methods run under ``torch.inference_mode``; the full forward is ``model(ids)`` (logits included). The boundary
masks of both are compared on the first call (they must be identical). A ``torch.profiler`` table of one
``model.boundaries`` call (calibrated routers, first setting) closes the report (``--no-profile`` to skip).

Usage: ``python benchmarks/boundaries.py``; writes ``benchmarks/results/boundaries_cpu.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from decode_throughput import calibrate_routing, load_average, machine, write_report
from mfu import matmul_rate

from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.evaluation.flops import default_compression, flops_breakdown

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_CONFIG = ROOT / "configs" / "models" / "small_2stage.json"
DEFAULT_TEXTS = [ROOT / "data" / "english" / "val.bin", Path("/usr/share/common-licenses/GPL-3")]
DEFAULT_OUTPUT = HERE / "results" / "boundaries_cpu.md"


def text_batches(path: Path, length: int, batch: int, limit: int | None) -> list[torch.Tensor]:
    """The text as (batch, length) calls; the last call holds the remaining full rows (the tail is dropped)."""
    data = np.fromfile(path, dtype=np.uint8)[:limit]
    rows = len(data) // length
    if rows == 0:
        raise ValueError(f"{path} has {len(data)} bytes, fewer than one row of {length}")
    ids = torch.from_numpy(data[: rows * length].astype(np.int64)).view(rows, length)
    return list(ids.split(batch))


def timed_passes(fn, batches: list[torch.Tensor], passes: int) -> list[float]:
    """Seconds per pass over all batches, after an untimed warm-up call on the first batch."""
    fn(batches[0])
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        for ids in batches:
            fn(ids)
        times.append(time.perf_counter() - start)
    return times


def bytes_per_chunk(model: HNetForCausalLM, batches: list[torch.Tensor]) -> list[float]:
    """Realised compression of every chunking stage over the whole text."""
    counts = None
    for ids in batches:
        out = model.boundaries(ids)
        stage = [int(r.boundary_mask.sum()) for r in out.routing]
        counts = stage if counts is None else [a + b for a, b in zip(counts, stage)]
    lengths = [sum(ids.numel() for ids in batches), *counts]
    return [lengths[i] / lengths[i + 1] for i in range(len(counts))]


def boundary_flops_per_byte(config: HNetConfig, length: int, compression: list[float]) -> float:
    """Forward FLOPs per byte of what ``boundaries`` runs: embedding, each chunking stage's encoder and its q/k
    routing projections (2/3 of the routing entry, which also counts the residual projection)."""
    parts = flops_breakdown(config, length, compression)
    total = parts["embedding"]
    for s in range(config.num_stages - 1):
        total += parts[f"stage{s}.encoder"] + parts[f"stage{s}.routing"] * 2 / 3
    return total


def measure(model: HNetForCausalLM, batches: list[torch.Tensor], passes: int) -> dict:
    with torch.inference_mode():
        first = batches[0]
        full, fast = model(first), model.boundaries(first)
        same = all(torch.equal(a.boundary_mask, b.boundary_mask) for a, b in zip(full.routing, fast.routing))
        total = sum(ids.numel() for ids in batches)
        boundary_times = timed_passes(model.boundaries, batches, passes)
        full_times = timed_passes(model, batches, passes)
    return {
        "compression": bytes_per_chunk(model, batches),
        "boundaries_mb_s": total / min(boundary_times) / 1e6,
        "full_mb_s": total / min(full_times) / 1e6,
        "boundary_times": boundary_times,
        "full_times": full_times,
        "same": same,
    }


def profile_table(model: HNetForCausalLM, ids: torch.Tensor, rows: int = 15) -> str:
    """Top operators (self CPU time) of one ``model.boundaries`` call after a warm-up call."""
    from torch.profiler import profile

    with torch.inference_mode():
        model.boundaries(ids)
        with profile() as prof:
            model.boundaries(ids)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--text", type=Path, default=next((p for p in DEFAULT_TEXTS if p.is_file()), None))
    parser.add_argument("--limit", type=int, default=None, help="use only the first LIMIT bytes of the text")
    parser.add_argument("--settings", nargs="+", default=["4x8192", "1x32768"], help="BATCHxLENGTH per call")
    parser.add_argument("--compression", type=float, nargs="+", default=None, help="calibration target per stage")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the operator profile")
    args = parser.parse_args(argv)
    if args.text is None or not args.text.is_file():
        parser.error(f"text file not found: {args.text}; pass --text PATH to a local English text")
    try:
        args.settings = [tuple(int(v) for v in s.lower().split("x")) for s in args.settings]
    except ValueError:
        parser.error(f"--settings takes BATCHxLENGTH values such as 4x8192, got {args.settings}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = HNetConfig.from_json(args.config)
    targets = args.compression or default_compression(config)
    torch.manual_seed(0)
    model = HNetForCausalLM(config).eval()
    params = sum(p.numel() for p in model.parameters())
    random_routing = {k: v.clone() for k, v in model.state_dict().items() if "routing_module" in k}
    calibration = text_batches(args.text, 8192, 1, 8192)[0]
    calibrate_routing(model, calibration, targets)
    calibrated_routing = {k: v.clone() for k, v in model.state_dict().items() if "routing_module" in k}

    rows, loads, start = [], [load_average()], time.perf_counter()
    mm_rate = matmul_rate(torch.float32, 4096, 5)
    print(f"torch.mm 4096^2 float32: {mm_rate / 1e9:.0f} GFLOP/s", flush=True)
    for batch, length in args.settings:
        batches = text_batches(args.text, length, batch, args.limit)
        for name, routing in (("random init", random_routing), ("calibrated", calibrated_routing)):
            model.load_state_dict({**model.state_dict(), **routing})
            row = {"batch": batch, "length": length, "routers": name, **measure(model, batches, args.passes)}
            row["flops_per_byte"] = boundary_flops_per_byte(config, length, row["compression"])
            rows.append(row)
            print(
                f"{batch}x{length} {name:<11} boundaries {row['boundaries_mb_s']:.4f} MB/s, full forward "
                f"{row['full_mb_s']:.4f} MB/s, bytes/chunk {' / '.join(f'{c:.2f}' for c in row['compression'])}",
                flush=True,
            )
    if args.profile:  # where the time of one call goes: the calibrated routers at the first setting
        batch, length = args.settings[0]
        profile = profile_table(model, text_batches(args.text, length, batch, args.limit)[0])
    loads.append(load_average())
    text_bytes = sum(ids.numel() for ids in text_batches(args.text, rows[0]["length"], rows[0]["batch"], args.limit))
    command = "python " + " ".join([str(Path(sys.argv[0])), *(sys.argv[1:] if argv is None else argv)])
    lines = [
        "# Boundary extraction: `model.boundaries` vs the full forward (CPU)",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {machine('cpu')}; load average before / after: {loads[0]} / {loads[1]}; "
        f"run time {time.perf_counter() - start:.0f} s  ",
        f"Model: `{args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config}` "
        f"{config.arch_layout}, widths {config.d_model}, {params / 1e6:.1f}M parameters, float32, "
        f"random weights (seed 0); routers random-init or calibrated to {targets} bytes per chunk  ",
        f"Text: `{args.text}` ({text_bytes:,} bytes per pass at the first setting), cut into rows; "
        f"MB/s = 10^6 bytes per second from the fastest of {args.passes} timed passes after a warm-up call",
        "",
        f"float32 `torch.mm` rate measured in the same run (4096 x 4096, best of 5): {mm_rate / 1e9:.0f} GFLOP/s. "
        "Boundary MFLOPs/byte: embedding + each chunking stage's encoder and q/k projections (paper App. B "
        "counting, realised compression); 'MB/s at mm rate' = the matmul rate / those FLOPs, what boundaries would "
        "reach if every FLOP ran at the large-matmul rate.",
        "",
        "| batch x bytes | routers | bytes/chunk per stage | boundaries MB/s | full forward MB/s | speed-up "
        "| masks identical | boundary MFLOPs/byte | boundary GFLOP/s | MB/s at mm rate |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']}x{r['length']} | {r['routers']} | {' / '.join(f'{c:.2f}' for c in r['compression'])} | "
            f"{r['boundaries_mb_s']:.4f} | {r['full_mb_s']:.4f} | {r['boundaries_mb_s'] / r['full_mb_s']:.1f}x | "
            f"{'yes' if r['same'] else 'NO'} | {r['flops_per_byte'] / 1e6:.2f} | "
            f"{r['flops_per_byte'] * r['boundaries_mb_s'] / 1e3:.1f} | {mm_rate / r['flops_per_byte'] / 1e6:.3f} |"
        )
    lines += [
        "",
        "Pass times (s): "
        + "; ".join(
            f"{r['batch']}x{r['length']} {r['routers']}: boundaries "
            + ", ".join(f"{t:.2f}" for t in r["boundary_times"])
            + " | full "
            + ", ".join(f"{t:.2f}" for t in r["full_times"])
            for r in rows
        ),
        "",
    ]
    if args.profile:
        lines += [
            f"## Profile: one `model.boundaries` call ({batch}x{length}, calibrated routers)",
            "",
            "```",
            profile,
            "```",
            "",
        ]
    text = "\n".join(lines)
    write_report(text, args.output)


if __name__ == "__main__":
    main()
