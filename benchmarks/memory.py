"""Peak training memory against sequence length, with and without gradient checkpointing.

For each length (default 4K, 8K, 16K and 32K bytes; batch 1, English text) and each mode (plain; gradient
checkpointing of every stack, ``model.set_gradient_checkpointing()``), a fresh subprocess builds the model
(``configs/models/small_2stage.json`` by default, random weights, routers calibrated on the text to the paper's
ratio-loss targets as in ``decode_throughput.py``) and the input, resets the kernel's peak-RSS counter, takes the
current RSS as baseline and runs ``--steps`` training steps (forward, backward of CE + 0.03 x ratio losses, AdamW
step). "Peak" = peak RSS - baseline: activations kept for backward, gradients, optimizer state, temporaries and
allocator slack, as the OS sees them (helpers shared with ``train_throughput.py``).

Memory should grow linearly with length: the table shows the peak per KiB of sequence and the growth factor from
the previous length (2.0 = linear when lengths double). So that a run can never exhaust a shared machine, a length
is skipped when the linear extrapolation from the previous two lengths exceeds the memory the kernel reports as
available (MemAvailable) minus ``--margin-gb``; the table says so.

Usage: ``python benchmarks/memory.py``; writes ``benchmarks/results/memory_cpu.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from decode_throughput import calibrate_routing, load_average, machine, write_report
from train_throughput import WorkerError, peak_rss_bytes, reset_peak_rss, run_worker

from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.evaluation.flops import default_compression
from dynamic_chunker.reference import RATIO_LOSS_WEIGHT

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_CONFIG = ROOT / "configs" / "models" / "small_2stage.json"
DEFAULT_TEXTS = [ROOT / "data" / "english" / "train.bin", Path("/usr/share/common-licenses/GPL-3")]
DEFAULT_OUTPUT = HERE / "results" / "memory_cpu.md"
GIB = 2**30


def measure(spec: dict) -> dict:
    """One (length, mode) measurement; runs in its own process."""
    config = HNetConfig.from_dict(spec["config"])
    targets = default_compression(config)
    data = np.fromfile(spec["text"], dtype=np.uint8)
    data = np.tile(data, -(-(spec["length"] + 1) // len(data)))[: spec["length"] + 1]
    ids = torch.from_numpy(data.astype(np.int64))[None]
    torch.manual_seed(0)
    model = HNetForCausalLM(config)
    calibrate_routing(model, ids[:, :-1], targets)
    model.set_gradient_checkpointing(spec["checkpointing"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    exact = reset_peak_rss()
    baseline = peak_rss_bytes()
    times = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = model(ids[:, :-1])
        loss = F.cross_entropy(out.logits.flatten(0, 1), ids[:, 1:].flatten())
        loss = loss + RATIO_LOSS_WEIGHT * sum(model.ratio_losses(out, targets))
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    counts = [spec["length"], *(int(r.boundary_mask.sum()) for r in out.routing)]
    return {
        "peak_bytes": peak_rss_bytes() - baseline,
        "exact": exact,
        "seconds": min(times),
        "compression": [counts[i] / counts[i + 1] for i in range(len(counts) - 1)],
    }


def available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def worker_row(spec: dict) -> dict:
    """One measurement in a fresh process; a failure (e.g. out of memory) becomes a row with its error."""
    try:
        return run_worker(__file__, spec, "memory measurement")
    except WorkerError as err:
        return {"error": err.last_line}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--text", type=Path, default=next((p for p in DEFAULT_TEXTS if p.is_file()), None))
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--steps", type=int, default=1, help="training steps per measurement")
    parser.add_argument("--margin-gb", type=float, default=2.0, help="memory to leave free on the machine")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None and (args.text is None or not args.text.is_file()):
        parser.error(f"text file not found: {args.text}; pass --text PATH to a local text")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(measure(json.loads(args.worker))))
        return
    config = HNetConfig.from_json(args.config)
    start, loads = time.perf_counter(), [load_average()]
    rows = []
    for checkpointing in (False, True):
        done: list[tuple[int, int]] = []
        for length in sorted(args.lengths):
            row = {"length": length, "checkpointing": checkpointing}
            available = available_bytes()
            if len(done) >= 2 and available is not None:
                (l1, m1), (l2, m2) = done[-2:]
                predicted = m2 + (m2 - m1) / (l2 - l1) * (length - l2)
                if predicted > available - args.margin_gb * GIB:
                    row["error"] = f"skipped: predicted {predicted / GIB:.1f} GiB, {available / GIB:.1f} GiB available"
            if "error" not in row:
                spec = {
                    "config": config.to_dict(),
                    "text": str(args.text),
                    "length": length,
                    "checkpointing": checkpointing,
                    "steps": args.steps,
                }
                row.update(worker_row(spec))
            if "error" not in row:
                done.append((length, row["peak_bytes"]))
            rows.append(row)
            print(
                f"{length:>6} bytes, checkpointing {checkpointing}: "
                + (
                    row["error"]
                    if "error" in row
                    else f"peak +{row['peak_bytes'] / GIB:.2f} GiB, {row['seconds']:.1f} s"
                ),
                flush=True,
            )
    loads.append(load_average())

    command = "python " + " ".join([str(Path(sys.argv[0])), *(sys.argv[1:] if argv is None else argv)])
    lines = [
        "# Peak training memory against sequence length (CPU)",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {machine('cpu')}; load average before / after: {loads[0]} / {loads[1]}; "
        f"run time {time.perf_counter() - start:.0f} s  ",
        f"Model: `{args.config.name}` {config.arch_layout}, widths {config.d_model}, float32, random weights, "
        f"routers calibrated to {default_compression(config)} bytes per chunk; batch 1; text `{args.text}`; "
        f"{args.steps} training step(s) (forward, backward, AdamW) per fresh process",
        "",
        "| bytes | gradient checkpointing | peak memory | per KiB of sequence | growth vs previous length "
        "| step time (s) | bytes/chunk |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    previous = {}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['length']} | {'yes' if r['checkpointing'] else 'no'} | {r['error']} | | | | |")
            continue
        growth = previous.get(r["checkpointing"])
        lines.append(
            f"| {r['length']} | {'yes' if r['checkpointing'] else 'no'} | {r['peak_bytes'] / GIB:.2f} GiB | "
            f"{r['peak_bytes'] / (r['length'] / 1024) / 2**20:.1f} MiB | "
            + (f"{r['peak_bytes'] / growth:.2f}x" if growth else "-")
            + f" | {r['seconds']:.1f} | {' / '.join(f'{c:.2f}' for c in r['compression'])} |"
        )
        previous[r["checkpointing"]] = r["peak_bytes"]
    lines += [
        "",
        "Peak memory = peak RSS during the step(s) minus the RSS just before (model, input and calibrated routers "
        "already in memory)"
        + ("." if all(r.get("exact", True) for r in rows) else "; the peak counter could not be reset."),
        "",
    ]
    text = "\n".join(lines)
    write_report(text, args.output)


if __name__ == "__main__":
    main()
