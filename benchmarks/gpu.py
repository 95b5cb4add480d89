"""Training throughput and MFU on one GPU, with and without the optional kernels, and parity of the two paths.

In one run (sized for under 5 minutes on one GPU: ``--budget-s`` stops starting further configs): the bf16
``torch.mm`` rate; then for each config (``configs/models/small_2stage.json``, then
``benchmarks/configs/hnet_2stage_gpu.json`` if time allows) ``--steps`` timed training steps after ``--warmup``
(batch ``--batch`` x ``--length`` bytes of packed English documents, bf16 autocast, the trainer's objective, AdamW),
once with the optional kernels (``dynamic_chunker.layers.kernels``) and once on the pure-PyTorch path from the same
weights: bytes/s, MFU against the bf16 matmul rate, peak memory and kernel calls; and the parity of the two paths on
the same batch (float32 and bf16, one document per row and packed): logits, chunk boundaries, loss and gradients.
Routers are calibrated first (on the CPU) to the ratio-loss targets. Without CUDA it exits with code 2; ``--smoke``
runs the same code for a tiny config (``--device cpu`` checks the script without a GPU). Writes
``benchmarks/results/gpu_<device name>.md``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

from benchmarks import common
from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.evaluation.flops import default_compression
from dynamic_chunker.layers import kernels
from dynamic_chunker.training.objective import window_losses

DEFAULT_CONFIGS = [common.MODELS / "small_2stage.json", common.HERE / "configs" / "hnet_2stage_gpu.json"]
EXIT_NO_CUDA = 2
PATHS = {True: "kernels", False: "pure PyTorch"}


def measure(model: HNetForCausalLM, ids: torch.Tensor, targets: list[float], args, use: bool) -> dict:
    """Timed training of ``model`` (modified in place) with the kernels on or off."""
    if ids.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ids.device)
    with kernels.use_kernels(use):  # the warm-up compiles and autotunes; kernel calls are counted after it
        result = common.train_rate(model, ids, targets, args.warmup, args.steps, True, args.lr, kernels.usage.clear)
    cuda = ids.device.type == "cuda"
    result["peak_gib"] = torch.cuda.max_memory_allocated(ids.device) / 2**30 if cuda else None
    result["calls_per_step"] = {name: n / args.steps for name, n in sorted(kernels.usage.items())}
    return result


def packed_documents(batch: int, length: int, device: torch.device) -> torch.Tensor:
    """(batch, length) document ids: documents of length/8 to 3 length/8 bytes laid end to end, cut anew per row."""
    gen = torch.Generator().manual_seed(1)
    low = max(1, length // 8)
    cuts = torch.randint(low, 3 * low + 1, (batch, length // low + 1), generator=gen).cumsum(dim=1)
    return torch.stack([torch.bucketize(torch.arange(length), row, right=True) for row in cuts]).to(device)


def parity(model: HNetForCausalLM, ids: torch.Tensor, targets: list[float], bf16: bool, packed: bool) -> dict:
    """The kernels against the pure path on the same weights and batch: logits, boundaries, loss and gradients."""
    inputs = ids[:, :-1]
    documents = packed_documents(*ids.shape, ids.device) if packed else None
    results = {}
    for use in (True, False):
        model.zero_grad(set_to_none=True)
        with kernels.use_kernels(use), torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            losses = window_losses(model, ids, targets, documents)
            out = model.boundaries(inputs, document_ids=None if documents is None else documents[:, :-1])
            starts = [out.chunk_starts(s) for s in range(len(out.routing))]
        loss = losses.total()
        loss.backward()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        results[use] = (losses.output.logits.float().detach(), starts, loss.item(), grads)
    (logits, starts, loss, grads), (ref_logits, ref_starts, ref_loss, ref_grads) = results[True], results[False]
    # every mixer is causal: bytes before the first differing boundary decision of a row saw the same computation
    length = inputs.shape[1]
    position = torch.arange(length, device=inputs.device)
    differs = torch.stack([a != b for a, b in zip(starts, ref_starts, strict=True)]).any(dim=0)  # (B, L)
    agreed = position[None, :] < torch.where(differs, position, length).min(dim=1).values[:, None]
    difference = (logits - ref_logits).abs().amax(dim=-1)  # (B, L)
    return {
        "max_logits_diff": difference.max().item(),
        "max_logits_diff_agreed": difference[agreed].max().item() if bool(agreed.any()) else float("nan"),
        "agreed_fraction": agreed.float().mean().item(),
        "max_logits": ref_logits.abs().max().item(),
        "boundary_agreement": [(a == b).float().mean().item() for a, b in zip(starts, ref_starts, strict=True)],
        "loss": (loss, ref_loss),
        "grad_rel_diff": ((grads - ref_grads).norm() / ref_grads.norm()).item(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=Path, nargs="+", default=None, help="model configs, smallest first")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--text", type=Path, default=common.default_text())
    parser.add_argument("--length", type=int, default=8192, help="bytes per training sequence")
    parser.add_argument("--batch", type=int, default=4, help="sequences per step")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (kernel compilation and autotuning)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model and path")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--mm-size", type=int, default=8192)
    parser.add_argument("--mm-repeats", type=int, default=10)
    parser.add_argument("--calibrate-length", type=int, default=4096, help="bytes for the CPU router calibration")
    parser.add_argument("--budget-s", type=float, default=240.0, help="start no further config past this time")
    parser.add_argument("--smoke", action="store_true", help="tiny config, short sequences, 2 steps: a crash test")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.text is None or not args.text.is_file():
        parser.error(f"text file not found: {args.text}; pass --text PATH")
    if args.smoke:
        args.configs = args.configs or [common.MODELS / "tiny_2stage.json"]
        args.length, args.batch, args.warmup, args.steps = min(args.length, 256), 2, 1, 2
        args.mm_size, args.mm_repeats, args.calibrate_length = min(args.mm_size, 256), 2, 256
    args.configs = args.configs or DEFAULT_CONFIGS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "benchmarks/gpu.py needs a CUDA GPU, and torch.cuda.is_available() is False on this machine. "
            "Run it on a GPU machine, or use --smoke --device cpu to check the script itself.",
            file=sys.stderr,
        )
        return EXIT_NO_CUDA
    run = common.Run("gpu", argv, args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    found = kernels.available()
    importable = {"mamba_ssm": found.ssd_scan, "causal_conv1d": found.conv1d, "flash_attn": found.attention}
    kernel_line = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in importable.items())
    rate = common.matmul_rate(torch.bfloat16, args.mm_size, args.mm_repeats, device)
    text = common.text_rows(args.text, args.batch, args.length + 1)
    results, parities, skipped, previous = [], [], [], 0.0
    for path in args.configs:
        if results and time.perf_counter() - run.start + 2 * previous > args.budget_s:
            skipped.append(path.stem)
            continue
        config_start = time.perf_counter()
        config = HNetConfig.from_json(path)
        targets = default_compression(config)
        model = common.build(config, text[:1, : args.calibrate_length], targets)
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        model.to(device)
        ids = text.to(device)
        for use in (True, False):
            model.load_state_dict(weights)
            try:
                r = measure(model, ids, targets, args, use)
            except Exception as error:  # report a failing path and go on with the other one
                r = {"error": f"{type(error).__name__}: {error}"}
            results.append({"config": path.stem, "params": common.params(model), "kernels": use, **r})
            if device.type == "cuda":
                torch.cuda.empty_cache()  # after an out-of-memory failure too, for the next run
            print(f"{path.stem} {PATHS[use]}: {r.get('error', r.get('bytes_per_s'))}", flush=True)
        model.load_state_dict(weights)
        for bf16 in (False, True):
            for packed in (False, True):
                try:
                    p = parity(model, ids, targets, bf16, packed)
                except Exception as error:
                    p = {"error": f"{type(error).__name__}: {error}"}
                parities.append({"config": path.stem, "bf16": bf16, "packed": packed, **p})
        del model
        previous = time.perf_counter() - config_start
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    output = args.output or common.RESULTS / f"gpu_{slug}{'_smoke' if args.smoke else ''}.md"
    common.write_report(report(args, run, name, kernel_line, rate, results, parities, skipped), output)
    return 0


def report(args, run: common.Run, name, kernel_line, rate, results, parities, skipped) -> list[str]:
    lines = run.header(
        f"Training throughput and MFU on {name}: optional kernels against the pure-PyTorch path",
        f"Kernels importable: {kernel_line}",
        f"Matmul rate (`torch.mm`, {args.mm_size} x {args.mm_size} bfloat16, best of {args.mm_repeats}): "
        f"**{rate / 1e12:.1f} TFLOP/s**",
        f"Training step: batch {args.batch} x {args.length} bytes of `{common.shown(args.text)}` (packed "
        "documents), bf16 "
        f"autocast, {common.LOSS}, backward, AdamW; {args.warmup} warm-up and {args.steps} timed steps per "
        "path from the "
        "same random weights (seed 0), routers calibrated to the ratio-loss targets; FLOPs: paper App. B, training = "
        "3 x forward, at the realised bytes per chunk",
    )
    lines += [
        "| model | params | path | bytes/s (best) | bytes/s (median) | bytes/chunk | training MFLOPs/byte "
        "| model TFLOP/s | MFU vs bf16 mm | speed vs pure | peak GiB | kernel calls per step |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    pure = {r["config"]: r.get("bytes_per_s") for r in results if not r["kernels"]}
    for r in results:
        head = f"| {r['config']} | {r['params'] / 1e6:.1f}M | {PATHS[r['kernels']]} |"
        if "error" in r:
            lines.append(f"{head} failed: {r['error']} |")
            continue
        speed = f"{r['bytes_per_s'] / pure[r['config']]:.2f}x" if pure.get(r["config"]) else "-"
        calls = ", ".join(f"{k} {v:g}" for k, v in r["calls_per_step"].items()) or "none"
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        lines.append(
            f"{head} {r['bytes_per_s']:,.0f} | {r['median_bytes_per_s']:,.0f} | {common.fmt(r['compression'])} | "
            f"{r['flops_per_byte'] / 1e6:.1f} | {r['flops_per_s'] / 1e12:.2f} | {r['flops_per_s'] / rate:.1%} | "
            f"{speed} | {peak} | {calls} |"
        )
    if skipped:
        lines += ["", f"Skipped for the time budget ({args.budget_s:.0f} s): {', '.join(skipped)}"]
    times = [f"{r['config']} {PATHS[r['kernels']]}: {common.fmt(r['seconds'], 3)}" for r in results if "seconds" in r]
    lines += [
        "",
        "Step times (s): " + "; ".join(times),
        "",
        "## Parity: kernels against the pure path (same weights, same batch)",
        "",
        "Every mixer is causal, so bytes before a row's first differing chunk-boundary decision (any stage) went "
        "through the same computation on both paths: their logits differ by rounding only. A decision that flips "
        "(a boundary probability within rounding of 0.5) changes the chunks, and so the logits, after it. "
        "Boundary agreement: fraction of bytes whose chunk-start decision is the same on both paths, per stage. "
        "Gradient difference: |g_kernels - g_pure| / |g_pure| over all parameters.",
        "",
        "| model | precision | inputs | max abs logits diff, all bytes | bytes before the first differing boundary "
        "| max abs logits diff there | max abs logits | boundary agreement per stage | loss kernels / pure "
        "| gradient rel. diff |",
        "|---|---|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for p in parities:
        head = f"| {p['config']} | {'bf16 autocast' if p['bf16'] else 'float32'} | "
        head += f"{'packed documents' if p['packed'] else 'one per row'} |"
        if "error" in p:
            lines.append(f"{head} failed: {p['error']} |")
            continue
        agreement = " / ".join(f"{a:.4%}" for a in p["boundary_agreement"])
        lines.append(
            f"{head} {p['max_logits_diff']:.2e} | {p['agreed_fraction']:.1%} | {p['max_logits_diff_agreed']:.2e} | "
            f"{p['max_logits']:.1f} | {agreement} | {p['loss'][0]:.5f} / {p['loss'][1]:.5f} | "
            f"{p['grad_rel_diff']:.2e} |"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
