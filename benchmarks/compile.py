"""torch.compile of the H-Net training step on CPU: speed-up over eager, compile time, recompilations, parity.

The model (``configs/models/tiny_2stage.json`` by default; random weights, routers calibrated on the text to the
paper's ratio-loss targets as in ``decode_throughput.py``) is trained for a few steps (forward, backward of CE +
0.03 x ratio losses; no optimizer step, so that eager and compiled runs see the same weights) on ``--windows``
different windows of English text of ``--length`` bytes, eagerly and through ``torch.compile(model)``.

Chunk counts differ from window to window, so the inner stages see new shapes. ``torch.compile``'s automatic
dynamic shapes handle that: after the first new shape it recompiles once with symbolic lengths, then reuses that
graph. The data-dependent steps (the chunk count that sizes the inner sequence, the reset check of the scan, input
validation) are graph breaks, so each stage compiles separately. The table reports the first (compiling) step, the
recompilations seen, and the steady-state step time (fastest over the windows after the first pass) for both.

Usage: ``python benchmarks/compile.py``; writes ``benchmarks/results/compile_cpu.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch._dynamo
import torch.nn.functional as F
from decode_throughput import calibrate_routing, load_average, machine, write_report

from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.evaluation.flops import default_compression
from dynamic_chunker.reference import RATIO_LOSS_WEIGHT

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_CONFIG = ROOT / "configs" / "models" / "tiny_2stage.json"
DEFAULT_TEXTS = [ROOT / "data" / "english" / "val.bin", Path("/usr/share/common-licenses/GPL-3")]
DEFAULT_OUTPUT = HERE / "results" / "compile_cpu.md"


def windows(path: Path, length: int, count: int) -> list[torch.Tensor]:
    """``count`` (1, length + 1) windows spread over the file."""
    data = np.fromfile(path, dtype=np.uint8)
    if len(data) < length + 1:
        data = np.tile(data, -(-(length + 1) // len(data)))
    starts = np.linspace(0, len(data) - length - 1, count).astype(int)
    return [torch.from_numpy(data[s : s + length + 1].astype(np.int64))[None] for s in starts]


def step(model, ids: torch.Tensor, targets: list[float]) -> tuple[float, torch.Tensor, list[int]]:
    """Seconds, stage-0 boundary probabilities (they depend on the stage-0 encoder only) and chunk counts."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    out = model(ids[:, :-1])
    loss = F.cross_entropy(out.logits.flatten(0, 1), ids[:, 1:].flatten())
    loss = loss + RATIO_LOSS_WEIGHT * sum(model.ratio_losses(out, targets))
    loss.backward()
    counts = [int(r.boundary_mask.sum()) for r in out.routing]
    return time.perf_counter() - start, out.routing[0].boundary_prob.detach(), counts


def run(model, batches: list[torch.Tensor], targets: list[float], passes: int) -> dict:
    first, probs, counts = step(model, batches[0], targets)
    times = []
    all_probs, all_counts = [probs], [counts]
    for p in range(passes):
        for i, ids in enumerate(batches):
            if p == 0 and i == 0:
                continue
            seconds, probs, counts = step(model, ids, targets)
            if p == 0:
                all_probs.append(probs)
                all_counts.append(counts)
            else:
                times.append(seconds)
    return {"first": first, "steady": min(times), "probs": all_probs, "counts": all_counts}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--text", type=Path, default=next((p for p in DEFAULT_TEXTS if p.is_file()), None))
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--passes", type=int, default=2, help="passes over the windows (the first is not timed)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.text is None or not args.text.is_file():
        parser.error(f"text file not found: {args.text}; pass --text PATH to a local text")
    if args.passes < 2:
        parser.error("--passes must be at least 2 (the first pass compiles)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = HNetConfig.from_json(args.config)
    targets = default_compression(config)
    batches = windows(args.text, args.length, args.windows)
    torch.manual_seed(0)
    model = HNetForCausalLM(config)
    calibrate_routing(model, batches[0][:, :-1], targets)
    start, loads = time.perf_counter(), [load_average()]
    eager = run(model, batches, targets, args.passes)
    print(f"eager: first {eager['first']:.2f} s, steady {eager['steady']:.2f} s", flush=True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = run(torch.compile(model), batches, targets, args.passes)
    frames = dict(torch._dynamo.utils.counters["stats"])
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    print(f"compiled: first {compiled['first']:.2f} s, steady {compiled['steady']:.2f} s", flush=True)
    loads.append(load_average())
    same_counts = eager["counts"] == compiled["counts"]
    diff = max((a - b).abs().max().item() for a, b in zip(eager["probs"], compiled["probs"]))

    command = "python " + " ".join([str(Path(sys.argv[0])), *(sys.argv[1:] if argv is None else argv)])
    lines = [
        "# torch.compile of the training step (CPU)",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {machine('cpu')}; load average before / after: {loads[0]} / {loads[1]}; "
        f"run time {time.perf_counter() - start:.0f} s  ",
        f"Model: `{args.config.name}` {config.arch_layout}, widths {config.d_model}, float32, random weights, "
        f"routers calibrated to {targets} bytes per chunk; {args.windows} windows of {args.length} bytes of "
        f"`{args.text}` (chunks per stage: {eager['counts']}); forward + backward, no optimizer step",
        "",
        "| mode | first step (s) | steady step (s) | bytes/s | speed-up |",
        "|---|---:|---:|---:|---:|",
        f"| eager | {eager['first']:.2f} | {eager['steady']:.3f} | {args.length / eager['steady']:,.0f} | 1.00x |",
        f"| torch.compile | {compiled['first']:.2f} | {compiled['steady']:.3f} | "
        f"{args.length / compiled['steady']:,.0f} | {eager['steady'] / compiled['steady']:.2f}x |",
        "",
        f"Dynamo: {frames.get('unique_graphs', '?')} graphs compiled, {breaks} graph breaks, frames "
        f"{frames}. Same chunk counts as eager: {'yes' if same_counts else 'NO'} (compiled: {compiled['counts']}); "
        "largest stage-0 boundary-probability difference "
        f"compiled vs eager: {diff:.2e}.",
        "",
    ]
    text = "\n".join(lines)
    write_report(text, args.output)


if __name__ == "__main__":
    main()
