"""Decoding throughput: cached byte-by-byte stepping against recomputing the full forward for every new byte.

For each context length (default 256, 1K and 4K bytes) and batch size (default 1 and 8) the script feeds the same
real text (a local file, repeated; row r starts r * 997 bytes further in, so rows chunk differently) and measures

* **cached**: prefill the context once (``model(ids, inference_params=cache)``, timed separately), then
  ``--cached-steps`` calls of ``model.step`` with the text's next bytes. bytes/s = batch x steps / time;
* **recompute**: for each of ``--recompute-steps`` new bytes, one full forward over the whole context so far, as a
  decoder without caches must. bytes/s = batch x steps / time;

and, while stepping, how often the innermost (main) network ran: per row (fraction of (row, step) pairs in which
every router fired) and per step (fraction of steps in which it ran for at least one row of the batch, which is when a
batched step pays for it).

Model: a 2-stage H-Net shaped like the paper's 2-stage models (m4 / T1m4 / T8 / m4T1 / m4) at widths 128, 192, 256
(about 11M parameters), small enough that the recompute baseline at 8 x 4K bytes finishes in reasonable time on a
2-core CPU; ``--config`` selects another (e.g. benchmarks/configs/hnet_2stage_bench.json). Its routers are random,
so before measuring, each stage's router is calibrated on the benchmark text to select about 1/N of its positions
(N = 3 and 3 as in the paper's 2-stage models): W_q = W_k = I + g u u^T with u the mean direction of the stage's
encoder outputs, g found by bisection (a larger g makes adjacent q and k more alike, so fewer boundaries). The main
network then runs on about 1 byte in 9. Weights stay fixed for the whole run.

Usage: ``python benchmarks/decode_throughput.py`` (about 3 minutes on a busy 2-core CPU); writes the table, the
command and the machine to ``benchmarks/results/decode_throughput_cpu.md`` (``--output`` to change).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.layers.segments import Segments

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results" / "decode_throughput_cpu.md"
DEFAULT_TEXTS = [Path("/usr/share/common-licenses/GPL-3"), HERE.parent / "README.md"]
DECODE_CONFIG = {
    "arch_layout": ["m4", ["T1m4", ["T8"], "m4T1"], "m4"],
    "d_model": [128, 192, 256],
    "d_intermediate": [0, 512, 768],
    "ssm_cfg": {"d_state": 32, "d_conv": 4, "expand": 2, "chunk_size": 256},
    "attn_cfg": {"num_heads": [2, 3, 4], "rotary_emb_dim": [32, 32, 32], "window_size": [1023, 1023, -1]},
}
ROW_OFFSET = 997


def text_rows(path: Path, batch: int, length: int) -> torch.Tensor:
    """(batch, length) byte ids: the file repeated, row r starting r * ROW_OFFSET bytes in."""
    data = path.read_bytes()
    if not data:
        raise ValueError(f"text file {path} is empty")
    data = data * math.ceil((length + batch * ROW_OFFSET) / len(data))
    return torch.tensor([list(data[r * ROW_OFFSET : r * ROW_OFFSET + length]) for r in range(batch)])


def set_router(router, direction: torch.Tensor, strength: float, hidden: torch.Tensor, segments: Segments) -> int:
    """W_q = W_k = I + strength * u u^T; returns how many positions the router then selects."""
    weight = torch.eye(direction.numel()) + strength * torch.outer(direction, direction)
    router.q_proj_layer.weight.copy_(weight)
    router.k_proj_layer.weight.copy_(weight)
    return int(router(hidden, segments).boundary_mask.sum())


@torch.no_grad()
def calibrate_routing(model: HNetForCausalLM, ids: torch.Tensor, targets: list[float]) -> dict[str, torch.Tensor]:
    """Set every stage's router so that it selects 1/N of its positions on ``ids``; returns the routing weights.

    Runs each encoder once (stage by stage, as ``HNet.forward`` does) and bisects the strength g of W_q = W_k =
    I + g u u^T, u the unit mean of the encoder outputs. Larger g adds a shared component to adjacent q and k,
    raising their cosine and lowering the boundary count. Aims at floor(positions / N) boundaries.
    """
    x, segments, stage = model.embeddings(ids), Segments(), model.backbone
    for target in targets:
        if stage.pad_dimension is not None:
            x = torch.cat([x, stage.pad_dimension.to(x.dtype).expand(*x.shape[:-1], -1)], dim=-1)
        hidden = stage.encoder(x, segments)
        goal = math.floor(hidden.shape[0] * hidden.shape[1] / target)
        mean = hidden.float().mean(dim=(0, 1))
        args = (stage.routing_module, mean / mean.norm())
        low, high = 0.0, 1.0
        selected = set_router(*args, high, hidden, segments)
        while selected > goal:
            low, high = high, 2 * high
            if high > 1e6:
                raise RuntimeError(f"cannot reach {target} bytes per chunk at stage {stage.stage} by calibration")
            selected = set_router(*args, high, hidden, segments)
        for _ in range(40):
            if selected == goal:
                break
            middle = (low + high) / 2
            count = set_router(*args, middle, hidden, segments)
            low, high, selected = (middle, high, selected) if count > goal else (low, middle, count)
        set_router(*args, high, hidden, segments)  # the smallest strength found with at least the target compression
        x, segments, _ = stage.chunk_layer(hidden, stage.routing_module(hidden, segments), segments)
        stage = stage.main_network
    return {k: v.clone() for k, v in model.state_dict().items() if "routing_module" in k}


def machine(device: str) -> str:
    cpu = platform.processor() or "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    if device.startswith("cuda"):
        cpu += f", GPU {torch.cuda.get_device_name(device)}"
    return f"{os.cpu_count()} CPUs, {cpu}, torch {torch.__version__}, {torch.get_num_threads()} torch threads"


def write_report(text: str, path: Path) -> None:
    """Print a benchmark's table and save it (UTF-8) under benchmarks/results/."""
    print("\n" + text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure(model: HNetForCausalLM, ids: torch.Tensor, context: int, cached_steps: int, recompute_steps: int) -> dict:
    """ids (B, context + cached_steps + 1) on the model's device."""
    device, batch = ids.device, ids.shape[0]
    cache = model.allocate_inference_cache(batch, context + cached_steps + 1)
    sync(device)
    start = time.perf_counter()
    model(ids[:, :context], inference_params=cache)
    sync(device)
    prefill = time.perf_counter() - start

    first = model.step(ids[:, context], cache).logits  # warm-up, not timed; checked against the recompute below
    decisions = []
    sync(device)
    start = time.perf_counter()
    for i in range(1, cached_steps + 1):
        decisions.append(model.step(ids[:, context + i], cache).boundary_mask[:, -1])
    sync(device)
    cached = time.perf_counter() - start
    main_ran = torch.stack(decisions) == 1  # (steps, B): every router fired, so the innermost network ran

    start = time.perf_counter()
    recomputed = [model(ids[:, : context + 1 + i]).logits[:, -1] for i in range(recompute_steps)]
    sync(device)
    recompute = time.perf_counter() - start
    return {
        "context": context,
        "batch": batch,
        "prefill_s": prefill,
        "cached_bps": batch * cached_steps / cached,
        "recompute_bps": batch * recompute_steps / recompute,
        "main_per_row": main_ran.float().mean().item(),
        "main_per_step": main_ran.any(dim=1).float().mean().item(),
        "max_diff": (first - recomputed[0]).abs().max().item(),  # same position: cached step vs full forward
    }


def report(args, config: HNetConfig, params: int, text: Path, rows: list[dict], loads: list[str], total: float) -> str:
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    lines = [
        "# Decoding throughput: cached stepping vs full recompute per byte",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine(args.device)}, device {args.device}  ",
        f"Load average (1/5/15 min) before each context: {'; '.join(loads)}  ",
        f"Model: `{json.dumps(config.arch_layout)}`, widths {config.d_model} ({params / 1e6:.1f}M parameters, "
        f"float32, random weights; routers calibrated to {' and '.join(str(t) for t in args.targets)} positions "
        "per chunk on the text)  ",
        f"Text: {text}; cached: {args.cached_steps} timed steps after a prefill and one warm-up step; recompute: "
        f"{args.recompute_steps} full forwards per setting; total run time {total:.0f} s",
        "",
        "| context (bytes) | batch | cached (bytes/s) | recompute (bytes/s) | speed-up | main network ran, per row "
        "| main network ran, per step (any row) | prefill (s) | max abs logit difference |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['context']} | {r['batch']} | {r['cached_bps']:,.1f} | {r['recompute_bps']:,.2f} "
            f"| {r['cached_bps'] / r['recompute_bps']:,.0f}x | {r['main_per_row']:.1%} | {r['main_per_step']:.1%} "
            f"| {r['prefill_s']:.2f} | {r['max_diff']:.1e} |"
        )
    lines += [
        "",
        "Speed-up = cached / recompute bytes per second, both measured in this run. Stepping cost does not grow with "
        "the context (Mamba state and the 1024-key windows are fixed-size; only the innermost global attention reads "
        "a longer KV cache), while a recompute processes the whole context for every byte. A batched step runs each "
        "inner stage only for the rows whose router fired, so its cost follows the per-step column. The last column "
        "compares the logits of the first cached step with those of the first recompute (the same position).",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help="model config JSON (default: the built-in 11M-parameter 2-stage model)")
    p.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096], help="context lengths in bytes")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    p.add_argument("--cached-steps", type=int, default=64, help="timed cached steps per setting")
    p.add_argument("--recompute-steps", type=int, default=2, help="timed full forwards per setting")
    p.add_argument("--targets", type=float, nargs="+", default=[3.0, 3.0], help="positions per chunk, per stage")
    p.add_argument("--text", type=Path, help="text file (default: GPL-3 licence text, else the README)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown file for the table")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    begin = time.perf_counter()
    config = HNetConfig.from_json(args.config) if args.config else HNetConfig.from_dict(DECODE_CONFIG)
    if len(args.targets) != config.num_stages - 1:
        raise SystemExit(f"--targets needs one value per chunking stage ({config.num_stages - 1})")
    text = args.text or next(p for p in DEFAULT_TEXTS if p.is_file())
    torch.manual_seed(0)
    model = HNetForCausalLM(config).eval()
    longest = max(args.contexts) + args.cached_steps + 1
    calibrate_routing(model, text_rows(text, 1, max(args.contexts)), args.targets)
    model.to(args.device)
    params = sum(p.numel() for p in model.parameters())
    rows, loads = [], []
    for context in args.contexts:
        loads.append(f"{context}: {load_average()}")
        for batch in args.batches:
            ids = text_rows(text, batch, longest).to(args.device)
            rows.append(measure(model, ids, context, args.cached_steps, args.recompute_steps))
            r = rows[-1]
            print(
                f"context {context:>5} batch {batch}: cached {r['cached_bps']:8.1f} B/s, recompute "
                f"{r['recompute_bps']:8.2f} B/s, main network per row {r['main_per_row']:.1%}",
                flush=True,
            )
    table = report(args, config, params, text, rows, loads, time.perf_counter() - begin)
    write_report(table, args.output)


if __name__ == "__main__":
    main()
