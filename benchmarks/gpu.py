"""Training throughput and MFU on one GPU, with and without the optional kernels, and parity of the two paths.

In one run (sized for under 5 minutes on one GPU: ``--budget-s`` stops starting further configs) the script

* measures the bf16 matrix-multiply rate of a large ``torch.mm`` (``--mm-size`` squared, best of ``--mm-repeats``);
* for each model config (``configs/models/small_2stage.json``, then ``benchmarks/configs/hnet_2stage_gpu.json`` if
  the time budget allows), trains ``--steps`` timed steps after ``--warmup`` untimed ones (batch ``--batch`` x
  ``--length`` bytes of English text, bf16 autocast, next-byte cross-entropy + 0.03 x the ratio losses, AdamW),
  once with the optional kernels (``mamba_ssm``, ``causal_conv1d``, ``flash_attn``; see
  ``dynamic_chunker.layers.kernels``) and once on the pure-PyTorch path, from the same weights;
* prints bytes/s and MFU = training FLOPs per byte (paper App. B counting, training = 3 x forward, at the
  compression the routers realised) x bytes/s / the measured bf16 matmul rate, plus peak memory and kernel calls;
* checks parity of the two paths on the same batch, in float32 and bf16 autocast, one row per sequence and packed
  documents: max |logits difference|, agreement of every stage's chunk boundaries (per byte), loss and gradient
  differences.

Routers are calibrated first (on the CPU, on the first ``--calibrate-length`` bytes) to the paper's ratio-loss
targets, as in ``mfu.py``. Without CUDA the script exits with code 2; ``--smoke`` runs the same code paths for a tiny
config and two steps on any device (``--device cpu`` for a check without a GPU). Usage: ``python benchmarks/gpu.py``;
writes ``benchmarks/results/gpu_<device name>.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from decode_throughput import load_average, machine, sync, text_rows, write_report
from mfu import build, matmul_rate, training_step

from dynamic_chunker import HNetConfig, HNetForCausalLM, parameter_groups
from dynamic_chunker.evaluation.flops import default_compression, training_flops_per_byte
from dynamic_chunker.layers import kernels
from dynamic_chunker.reference import RATIO_LOSS_WEIGHT

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_CONFIGS = [ROOT / "configs" / "models" / "small_2stage.json", HERE / "configs" / "hnet_2stage_gpu.json"]
SMOKE_CONFIG = ROOT / "configs" / "models" / "tiny_2stage.json"
DEFAULT_TEXTS = [ROOT / "data" / "english" / "val.bin", Path("/usr/share/common-licenses/GPL-3"), ROOT / "README.md"]
EXIT_NO_CUDA = 2
PATHS = {True: "kernels", False: "pure PyTorch"}


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def measure(model: HNetForCausalLM, ids: torch.Tensor, targets: list[float], args, use: bool) -> dict:
    """Timed training of ``model`` (modified in place) with the kernels on or off."""
    device = ids.device
    optimizer = torch.optim.AdamW(parameter_groups(model, [1.0] * model.config.num_stages, 0.1), lr=args.lr)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with kernels.use_kernels(use):
        for _ in range(args.warmup):
            training_step(model, optimizer, ids, targets, True)
        kernels.usage.clear()
        times, counts = [], []
        for _ in range(args.steps):
            sync(device)
            start = time.perf_counter()
            counts.append(training_step(model, optimizer, ids, targets, True))
            sync(device)
            times.append(time.perf_counter() - start)
    batch, length = ids.shape[0], ids.shape[1] - 1
    mean_counts = [sum(c[s] for c in counts) / len(counts) / batch for s in range(len(counts[0]))]
    positions = [length, *mean_counts]
    compression = [positions[s] / positions[s + 1] for s in range(len(mean_counts))]
    flops = training_flops_per_byte(model.config, length, compression)
    return {
        "seconds": times,
        "bytes_per_s": batch * length / min(times),
        "median_bytes_per_s": batch * length / statistics.median(times),
        "compression": compression,
        "flops_per_byte": flops,
        "flops_per_s": flops * batch * length / min(times),
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "calls_per_step": {name: n / args.steps for name, n in sorted(kernels.usage.items())},
    }


def packed_documents(batch: int, length: int, device: torch.device) -> torch.Tensor:
    """(batch, length) document ids: documents of length/8 to 3 length/8 bytes laid end to end, cut anew per row."""
    gen = torch.Generator().manual_seed(1)
    low = max(1, length // 8)
    cuts = torch.randint(low, 3 * low + 1, (batch, length // low + 1), generator=gen).cumsum(dim=1)
    return torch.stack([torch.bucketize(torch.arange(length), row, right=True) for row in cuts]).to(device)


def boundaries(model: HNetForCausalLM, ids: torch.Tensor, documents: torch.Tensor | None) -> list[torch.Tensor]:
    out = model.boundaries(ids, document_ids=documents)
    return [out.chunk_starts(s) for s in range(len(out.routing))]


def parity(model: HNetForCausalLM, ids: torch.Tensor, targets: list[float], bf16: bool, packed: bool) -> dict:
    """The kernels against the pure path on the same weights and batch: logits, boundaries, loss and gradients."""
    inputs, labels = ids[:, :-1], ids[:, 1:]
    documents = packed_documents(*inputs.shape, inputs.device) if packed else None
    results = {}
    for use in (True, False):
        model.zero_grad(set_to_none=True)
        with kernels.use_kernels(use), autocast(ids.device, bf16):
            out = model(inputs, document_ids=documents)
            loss = F.cross_entropy(out.logits.float().flatten(0, 1), labels.flatten())
            loss = loss + RATIO_LOSS_WEIGHT * sum(model.ratio_losses(out, targets))
            starts = boundaries(model, inputs, documents)
        loss.backward()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        results[use] = (out.logits.float().detach(), starts, loss.item(), grads)
    (logits, starts, loss, grads), (ref_logits, ref_starts, ref_loss, ref_grads) = results[True], results[False]
    # every mixer is causal: bytes before the first differing boundary decision of a row saw the same computation
    length = inputs.shape[1]
    position = torch.arange(length, device=inputs.device)
    differs = torch.stack([a != b for a, b in zip(starts, ref_starts, strict=True)]).any(dim=0)  # (B, L)
    first_difference = torch.where(differs, position, length).min(dim=1).values
    agreed = position[None, :] < first_difference[:, None]
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


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=Path, nargs="+", default=None, help="model configs, smallest first")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--text", type=Path, default=next((p for p in DEFAULT_TEXTS if p.is_file()), None))
    parser.add_argument("--length", type=int, default=8192, help="bytes per training sequence")
    parser.add_argument(
        "--batch",
        type=int,
        default=4,
        help="sequences per step (the pure path at 8 x 8K bytes may not fit the larger config)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (kernel compilation and autotuning)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model and path")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--mm-size", type=int, default=8192)
    parser.add_argument("--mm-repeats", type=int, default=10)
    parser.add_argument("--calibrate-length", type=int, default=4096, help="bytes for the CPU router calibration")
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false", help="keep random-init routers")
    parser.add_argument("--budget-s", type=float, default=240.0, help="start no further config past this time")
    parser.add_argument("--smoke", action="store_true", help="tiny config, short sequences, 2 steps: a crash test")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.text is None or not args.text.is_file():
        parser.error(f"text file not found: {args.text}; pass --text PATH to a local English text")
    if args.smoke:
        args.configs = args.configs or [SMOKE_CONFIG]
        args.length, args.batch, args.warmup, args.steps = min(args.length, 256), 2, 1, 2
        args.mm_size, args.mm_repeats, args.calibrate_length = min(args.mm_size, 256), 2, 256
    args.configs = args.configs or DEFAULT_CONFIGS
    for path in args.configs:
        if not path.is_file():
            parser.error(f"config not found: {path}")
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
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    output = args.output or HERE / "results" / f"gpu_{slug(name)}{'_smoke' if args.smoke else ''}.md"
    start, loads = time.perf_counter(), [load_average()]
    found = kernels.available()
    importable = {"mamba_ssm": found.ssd_scan, "causal_conv1d": found.conv1d, "flash_attn": found.attention}
    kernel_line = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in importable.items())
    print(f"{name}; kernels importable: {kernel_line}; switched on: {kernels.kernels_enabled()}", flush=True)
    rate = matmul_rate(torch.bfloat16, args.mm_size, args.mm_repeats, device)
    print(f"torch.mm {args.mm_size}^2 bfloat16: {rate / 1e12:.1f} TFLOP/s", flush=True)

    text = text_rows(args.text, args.batch, args.length + 1)
    results, parities, skipped, previous = [], [], [], 0.0
    for path in args.configs:
        elapsed = time.perf_counter() - start
        if results and elapsed + 2 * previous > args.budget_s:
            skipped.append(path.stem)
            print(f"{path.stem}: skipped (time budget {args.budget_s:.0f} s, {elapsed:.0f} s used)", flush=True)
            continue
        config_start = time.perf_counter()
        config = HNetConfig.from_json(path)
        targets = default_compression(config)
        model = build(config, text[:1, : args.calibrate_length + 1], targets, args.calibrate)
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        model.to(device)
        ids = text.to(device)
        params = sum(p.numel() for p in model.parameters())
        for use in (True, False):
            model.load_state_dict(weights)
            try:
                r = measure(model, ids, targets, args, use)
            except Exception as error:  # report a failing path and go on with the other one
                r = {"error": f"{type(error).__name__}: {error}"}
            results.append({"config": path.stem, "params": params, "kernels": use, **r})
            if device.type == "cuda":
                torch.cuda.empty_cache()  # after an out-of-memory failure too, for the next run
            print(f"{path.stem} {PATHS[use]}: " + summary(results[-1], rate), flush=True)
        model.load_state_dict(weights)
        for bf16 in (False, True):
            for packed in (False, True):
                try:
                    p = parity(model, ids, targets, bf16, packed)
                except Exception as error:
                    p = {"error": f"{type(error).__name__}: {error}"}
                parities.append({"config": path.stem, "bf16": bf16, "packed": packed, **p})
                print(f"{path.stem} parity {parity_label(parities[-1])}: {parity_summary(parities[-1])}", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        previous = time.perf_counter() - config_start
    loads.append(load_average())
    total = time.perf_counter() - start
    write_report(report(args, argv, device, name, kernel_line, rate, results, parities, skipped, loads, total), output)
    return 0


def summary(r: dict, rate: float) -> str:
    if "error" in r:
        return f"FAILED ({r['error']})"
    return (
        f"{r['bytes_per_s']:,.0f} bytes/s, {r['flops_per_s'] / 1e12:.2f} TFLOP/s, MFU {r['flops_per_s'] / rate:.1%}, "
        f"bytes/chunk {' / '.join(f'{c:.2f}' for c in r['compression'])}, peak {gib(r['peak_gib'])} GiB, "
        f"kernel calls per step {r['calls_per_step'] or 'none'}"
    )


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def parity_label(p: dict) -> str:
    return f"{'bf16 autocast' if p['bf16'] else 'float32'}, {'packed documents' if p['packed'] else 'one per row'}"


def parity_summary(p: dict) -> str:
    if "error" in p:
        return f"FAILED ({p['error']})"
    agreement = " / ".join(f"{a:.4%}" for a in p["boundary_agreement"])
    return (
        f"max |dlogits| {p['max_logits_diff']:.2e} (max |logits| {p['max_logits']:.1f}), before the first differing "
        f"boundary ({p['agreed_fraction']:.1%} of bytes) {p['max_logits_diff_agreed']:.2e}, boundary agreement "
        f"{agreement}, loss {p['loss'][0]:.5f} vs {p['loss'][1]:.5f}, grad rel. diff {p['grad_rel_diff']:.2e}"
    )


def report(args, argv, device, name, kernel_line, rate, results, parities, skipped, loads, total) -> str:
    command = "python " + " ".join([str(Path(sys.argv[0])), *(sys.argv[1:] if argv is None else argv)])
    lines = [
        f"# Training throughput and MFU on {name}: optional kernels against the pure-PyTorch path",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {machine(str(device))}; load average before / after: {loads[0]} / {loads[1]}; "
        f"run time {total:.0f} s  ",
        f"Kernels importable: {kernel_line}  ",
        f"Matmul rate (`torch.mm`, {args.mm_size} x {args.mm_size} bfloat16, best of {args.mm_repeats}): "
        f"**{rate / 1e12:.1f} TFLOP/s**  ",
        f"Training step: batch {args.batch} x {args.length} bytes of `{args.text}`, bf16 autocast, forward + backward "
        f"(CE + {RATIO_LOSS_WEIGHT} x ratio losses) + AdamW; {args.warmup} warm-up and {args.steps} timed steps per "
        "path from the same random weights (seed 0), routers "
        + ("calibrated to the paper's ratio-loss targets" if args.calibrate else "random-init")
        + "; FLOPs: paper App. B, training = 3 x forward, at the realised bytes per chunk",
        "",
        "| model | params | path | bytes/s (best) | bytes/s (median) | bytes/chunk | training MFLOPs/byte "
        "| model TFLOP/s | MFU vs bf16 mm | speed vs pure | peak GiB | kernel calls per step |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    pure = {r["config"]: r.get("bytes_per_s") for r in results if not r["kernels"]}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['params'] / 1e6:.1f}M | {PATHS[r['kernels']]} | failed: {r['error']} |")
            continue
        speed = f"{r['bytes_per_s'] / pure[r['config']]:.2f}x" if pure.get(r["config"]) else "-"
        calls = ", ".join(f"{k} {v:g}" for k, v in r["calls_per_step"].items()) or "none"
        lines.append(
            f"| {r['config']} | {r['params'] / 1e6:.1f}M | {PATHS[r['kernels']]} | {r['bytes_per_s']:,.0f} | "
            f"{r['median_bytes_per_s']:,.0f} | {' / '.join(f'{c:.2f}' for c in r['compression'])} | "
            f"{r['flops_per_byte'] / 1e6:.1f} | {r['flops_per_s'] / 1e12:.2f} | {r['flops_per_s'] / rate:.1%} | "
            f"{speed} | {gib(r['peak_gib'])} | {calls} |"
        )
    if skipped:
        lines += ["", f"Skipped for the time budget ({args.budget_s:.0f} s): {', '.join(skipped)}"]
    lines += [
        "",
        "Step times (s): "
        + "; ".join(
            f"{r['config']} {PATHS[r['kernels']]}: " + ", ".join(f"{t:.3f}" for t in r["seconds"])
            for r in results
            if "seconds" in r
        ),
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
        label = parity_label(p).split(", ")
        if "error" in p:
            lines.append(f"| {p['config']} | {label[0]} | {label[1]} | failed: {p['error']} |")
            continue
        lines.append(
            f"| {p['config']} | {label[0]} | {label[1]} | {p['max_logits_diff']:.2e} | {p['agreed_fraction']:.1%} | "
            f"{p['max_logits_diff_agreed']:.2e} | {p['max_logits']:.1f} | "
            + " / ".join(f"{a:.4%}" for a in p["boundary_agreement"])
            + f" | {p['loss'][0]:.5f} / {p['loss'][1]:.5f} | {p['grad_rel_diff']:.2e} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
