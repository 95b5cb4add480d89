"""Parity of the optional CUDA kernels with the pure-PyTorch path, on one GPU.

For each config (default ``configs/models/small_2stage.json`` and ``benchmarks/configs/hnet_2stage_gpu.json``; random
weights, routers calibrated on the CPU to the ratio-loss targets), on one batch of ``--batch`` x ``--length`` bytes of
English (float32 and bf16 autocast, one document per row and packed documents): the kernels
(``dynamic_chunker.layers.kernels``) against the pure path from the same weights: logits, chunk boundaries, loss and
gradients. Training speed with the kernels on and off: ``train_throughput --device cuda --kernels on off`` (README,
Optional GPU kernels). Without CUDA this exits with code 2; ``--smoke --device cpu`` checks the script on a tiny config.
Writes ``benchmarks/results/gpu_<device name>.md``.
"""

from __future__ import annotations

import itertools
import re
import sys
from pathlib import Path

import torch

from benchmarks import common
from dynamic_chunker import HNetConfig
from dynamic_chunker.evaluation.flops import default_compression
from dynamic_chunker.layers import kernels
from dynamic_chunker.training.objective import window_losses

DEFAULT_CONFIGS = [common.MODELS / "small_2stage.json", common.HERE / "configs" / "hnet_2stage_gpu.json"]
EXIT_NO_CUDA = 2


def parity(model, ids: torch.Tensor, targets: list[float], bf16: bool, packed: bool) -> list[str]:
    """The kernels against the pure path on the same weights and batch: the table cells of logits, boundaries, loss
    and gradients."""
    inputs, length, documents = ids[:, :-1], ids.shape[1] - 1, None
    if packed:  # documents of 1/8 to 3/8 of the row laid end to end, cut anew per row
        low, gen = max(1, ids.shape[1] // 8), torch.Generator().manual_seed(1)
        cuts = torch.randint(low, 3 * low + 1, (ids.shape[0], ids.shape[1] // low + 1), generator=gen).cumsum(dim=1)
        documents = torch.stack([torch.bucketize(torch.arange(ids.shape[1]), row, right=True) for row in cuts])
        documents = documents.to(ids.device)
    results = {}
    for use in (True, False):
        model.zero_grad(set_to_none=True)
        with kernels.use_kernels(use), torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            losses = window_losses(model, ids, targets, documents)
            out = model.boundaries(inputs, document_ids=None if documents is None else documents[:, :-1])
        losses.total().backward()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        starts = torch.stack([out.chunk_starts(s) for s in range(len(out.routing))])  # (stages, B, L)
        results[use] = (losses.output.logits.float().detach(), starts, losses.total().item(), grads)
    (logits, starts, loss, grads), (ref_logits, ref_starts, ref_loss, ref_grads) = results[True], results[False]
    # every mixer is causal: bytes before the first differing boundary decision of a row saw the same computation
    position = torch.arange(length, device=ids.device)
    first = torch.where((starts != ref_starts).any(dim=0), position, length).min(dim=1).values  # (B,)
    agreed = position[None, :] < first[:, None]
    difference = (logits - ref_logits).abs().amax(dim=-1)  # (B, L)
    return [
        f"{difference.max().item():.2e}",
        f"{agreed.float().mean().item():.1%}",
        f"{difference[agreed].max().item() if bool(agreed.any()) else float('nan'):.2e}",
        f"{ref_logits.abs().max().item():.1f}",
        " / ".join(f"{a:.4%}" for a in (starts == ref_starts).float().mean(dim=(1, 2)).tolist()),
        f"{loss:.5f} / {ref_loss:.5f}",
        f"{((grads - ref_grads).norm() / ref_grads.norm()).item():.2e}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, "gpu_DEVICE.md")  # DEVICE: the device name
    parser.add_argument("--configs", type=Path, nargs="+", default=DEFAULT_CONFIGS, help="model configs")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--length", type=int, default=8192, help="bytes per sequence")
    parser.add_argument("--batch", type=int, default=4, help="sequences per batch")
    parser.add_argument("--calibrate-length", type=int, default=4096, help="bytes for the CPU router calibration")
    parser.add_argument("--smoke", action="store_true", help="tiny config, short sequences: a crash test")
    args = common.parse(parser, argv)
    if args.smoke:
        args.configs, args.length, args.batch, args.calibrate_length = [common.MODELS / "tiny_2stage.json"], 256, 2, 256
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU, and torch.cuda.is_available() is False on this machine. Run it on "
              "a GPU machine, or use --smoke --device cpu to check the script itself.", file=sys.stderr)  # fmt: skip
        return EXIT_NO_CUDA
    run = common.Run("gpu", argv, args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    text = common.text_rows(args.text, args.batch, args.length + 1)
    rows = []
    for path in args.configs:
        targets = default_compression(config := HNetConfig.from_json(path))
        model = common.build(config, text[:1, : args.calibrate_length], targets).to(device)
        for bf16, packed in itertools.product((False, True), (False, True)):
            try:
                cells = parity(model, text.to(device), targets, bf16, packed)
            except Exception as error:  # report a failing check and go on
                cells = [f"failed: {type(error).__name__}: {error}"]
            precision, inputs = "bf16 autocast" if bf16 else "float32", "packed documents" if packed else "one per row"
            rows.append(f"| {path.stem} | {precision} | {inputs} | {' | '.join(cells)} |")
            print(rows[-1], flush=True)
    found = kernels.available()
    importable = {"mamba_ssm": found.ssd_scan, "causal_conv1d": found.conv1d, "flash_attn": found.attention}
    lines = run.header(
        f"Parity on {name}: optional kernels against the pure-PyTorch path (same weights, same batch)",
        "Kernels importable: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in importable.items()),
        f"Batch {args.batch} x {args.length} bytes of `{common.shown(args.text)}`; {common.LOSS}; random weights "
        "(seed 0), routers calibrated to the ratio-loss targets",
        "Every mixer is causal, so bytes before a row's first differing chunk-boundary decision (any stage) went "
        "through the same computation on both paths: their logits differ by rounding only. A decision that flips "
        "(a boundary probability within rounding of 0.5) changes the chunks, and so the logits, after it. "
        "Boundary agreement: fraction of bytes whose chunk-start decision is the same on both paths, per stage. "
        "Gradient difference: |g_kernels - g_pure| / |g_pure| over all parameters.",
    )
    lines += [
        "| model | precision | inputs | max abs logits diff, all bytes | bytes before the first differing boundary "
        "| max abs logits diff there | max abs logits | boundary agreement per stage | loss kernels / pure "
        "| gradient rel. diff |",
        "|---|---|---|---:|---:|---:|---:|---|---|---:|",
        *rows,
    ]
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + "_smoke" * args.smoke
    common.write_report(lines, args.output.with_name(args.output.name.replace("DEVICE", slug)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
