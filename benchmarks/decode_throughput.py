"""Decoding throughput: cached byte-by-byte stepping against recomputing the full forward for every new byte.

For each context length (default 256, 1K, 4K bytes) and batch size (default 1 and 8), on real text (row r starts
r * 997 bytes further in, so rows chunk differently): **cached** = prefill the context once (timed separately),
then ``--cached-steps`` calls of ``model.step`` with the text's next bytes, once with the value check of the ids
(``check=True``, one device read per step) and once without (``check=False``, what ``generate`` does), from two
copies of the same cache, in interleaved blocks of ``--block`` steps (each copy with the check in half of the blocks,
and first in half of them, so that neither the copy nor the order favours one side); **recompute** = one full forward
over the whole context per new byte, as a decoder without caches must. bytes/s = batch x steps / time. Also how often
the innermost network ran while stepping: per row, and per step (for at least one row, when a batched step pays for
it). The model is a 2-stage H-Net shaped like the paper's (``benchmarks/configs/hnet_2stage_decode.json``: m4 /
T1m4 / T8 / m4T1 / m4, widths 128/192/256, 11M parameters; ``--config`` for another) with routers calibrated to
``--targets`` (``evaluation.calibration``), so the main network runs on about 1 byte in 9. Writes
``benchmarks/results/decode_throughput_cpu.md``.
"""

from __future__ import annotations

import copy
import json
import math

import torch

from benchmarks import common
from dynamic_chunker import HNetConfig
from dynamic_chunker.evaluation.report import load_average
from dynamic_chunker.layers.segments import Segments

ROW_OFFSET = 997


@torch.inference_mode()
def measure(model, ids: torch.Tensor, context: int, cached_steps: int, recompute_steps: int, block: int) -> dict:
    """ids (B, context + cached_steps + 1) on the model's device."""
    batch = ids.shape[0]
    cache = model.allocate_inference_cache(batch, context + cached_steps + 1)
    prefill, _ = common.timed(lambda: model(ids[:, :context], inference_params=cache), ids.device)
    first = model.step(ids[:, context], cache).logits  # warm-up, not timed; checked against the recompute below
    caches = [cache, copy.deepcopy(cache)]  # two copies stepping through the same bytes, one with the check, one not
    seconds, decisions = {True: 0.0, False: 0.0}, {True: [], False: []}
    for n, start in enumerate(range(1, cached_steps + 1, block)):
        steps = range(start, min(start + block, cached_steps + 1))
        pairs = [(caches[0], n // 2 % 2 == 0), (caches[1], n // 2 % 2 == 1)]  # each copy checks in half the blocks,
        for c, check in pairs if n % 2 == 0 else pairs[::-1]:  # and goes first in half of them
            fn = lambda c=c, k=check, s=steps: [model.step(ids[:, context + i], c, check=k) for i in s]  # noqa: E731
            elapsed, outputs = common.timed(fn, ids.device)
            seconds[check] += elapsed
            decisions[check] += [out.boundary_mask[:, -1] for out in outputs]
    main_ran = torch.stack(decisions[False]) == 1  # (steps, B): every router fired, so the innermost network ran
    new = ids[:, context : context + 1]  # what the check reads per step, timed alone: 100 calls, best of 5
    check = {c: common.best_of(5, lambda c=c: [Segments.from_inputs(new, check_values=c) for _ in range(100)],
                               ids.device)[0] / 100 for c in (True, False)}  # fmt: skip
    recompute, logits = common.timed(
        lambda: [model(ids[:, : context + 1 + i]).logits[:, -1] for i in range(recompute_steps)], ids.device
    )
    return {
        "context": context,
        "batch": batch,
        "prefill_s": prefill,
        "cached_bps": batch * cached_steps / seconds[False],
        "checked_bps": batch * cached_steps / seconds[True],
        "same": torch.equal(torch.stack(decisions[True]), torch.stack(decisions[False])),
        "check_share": (check[True] - check[False]) / (seconds[False] / cached_steps),  # of a step without it
        "recompute_bps": batch * recompute_steps / recompute,
        "main_per_row": main_ran.float().mean().item(),
        "main_per_step": main_ran.any(dim=1).float().mean().item(),
        "max_diff": (first - logits[0]).abs().max().item(),  # same position: cached step vs full forward
    }


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__, "decode_throughput_cpu.md", common.HERE / "configs" / "hnet_2stage_decode.json", 1)
    p.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096], help="context lengths in bytes")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    p.add_argument("--cached-steps", type=int, default=256, help="timed cached steps per setting")
    p.add_argument("--block", type=int, default=16, help="cached steps per timed block (checks on and off alternate)")
    p.add_argument("--recompute-steps", type=int, default=2, help="timed full forwards per setting")
    p.add_argument("--targets", type=float, nargs="+", default=[3.0, 3.0], help="positions per chunk, per stage")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = common.parse(p, argv)
    run = common.Run("decode_throughput", argv, args.device)
    config = HNetConfig.from_json(args.config)
    if len(args.targets) != config.num_stages - 1:
        p.error(f"--targets needs one value per chunking stage ({config.num_stages - 1})")
    model = common.build(config, common.text_rows(args.text, 1, max(args.contexts)), args.targets)
    model = model.eval().to(args.device)
    longest = max(args.contexts) + args.cached_steps + 1
    rows, loads = [], []
    for context in args.contexts:
        loads.append(f"{context}: {load_average()}")
        for batch in args.batches:
            ids = common.text_rows(args.text, batch, longest, ROW_OFFSET).to(args.device)
            rows.append(measure(model, ids, context, args.cached_steps, args.recompute_steps, args.block))
            r = rows[-1]
            print(f"context {context} batch {batch}: cached {r['cached_bps']:.1f} bytes/s, checks off / on "
                  f"{r['cached_bps'] / r['checked_bps']:.3f}", flush=True)
    lines = run.header(
        "Decoding throughput: cached stepping vs full recompute per byte",
        f"Device {args.device}; load average (1/5/15 min) before each context: {'; '.join(loads)}",
        f"Model: `{json.dumps(config.arch_layout)}`, widths {config.d_model} ({common.params(model) / 1e6:.1f}M "
        f"parameters, float32, random weights; routers calibrated to {args.targets} positions per chunk on the text)",
        f"Text: `{common.shown(args.text)}`; cached: {args.cached_steps} timed steps after a prefill and one warm-up "
        f"step, with and without the ids' value check in blocks of {args.block} steps, interleaved; recompute: "
        f"{args.recompute_steps} full forwards per setting",
    )
    lines += [
        "| context (bytes) | batch | cached, checks off (bytes/s) | cached, checks on (bytes/s) | checks off / on "
        "| the check alone, share of a step | recompute (bytes/s) | speed-up | main network ran, per row "
        "| main network ran, per step (any row) | prefill (s) | max abs logit difference |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['context']} | {r['batch']} | {r['cached_bps']:,.1f} | {r['checked_bps']:,.1f} "
              f"| {r['cached_bps'] / r['checked_bps']:.3f}{'' if r['same'] else ' (routing differed!)'} "
              f"| {r['check_share']:.2%} | {r['recompute_bps']:,.2f} | {r['cached_bps'] / r['recompute_bps']:,.0f}x "
              f"| {r['main_per_row']:.1%} | {r['main_per_step']:.1%} | {r['prefill_s']:.2f} | {r['max_diff']:.1e} |"
              for r in rows]  # fmt: skip
    ratios = [r["cached_bps"] / r["checked_bps"] for r in rows]
    lines += [
        "",
        f"Checks off / on: cached bytes/s without the value check of the ids (`model.step(ids, cache, check=False)`, "
        f"as `generate` decodes) over with it (the default, one device-to-host read per step), from copies of the same "
        f"cache over the same bytes, timed in alternating blocks in this run: geometric mean "
        f"{math.prod(ratios) ** (1 / len(ratios)):.3f}, range {min(ratios):.3f} to {max(ratios):.3f}. 'The check "
        "alone': `Segments.from_inputs` of one step's ids with the value check minus without it (best of 5 x 100 "
        "calls), over the time of a step without it: what turning it off can save at most on this device.",
        "",
        "Speed-up = cached (checks off) / recompute bytes per second, both measured in this run. Stepping cost does "
        "not grow with "
        "the context (Mamba state and the 1024-key windows are fixed-size; only the innermost global attention reads "
        "a longer KV cache), while a recompute processes the whole context for every byte. A batched step runs each "
        "inner stage only for the rows whose router fired, so its cost follows the per-step column. The last column "
        "compares the logits of the first cached step with those of the first recompute (the same position).",
    ]
    common.write_report(lines, args.output)


if __name__ == "__main__":
    main()
