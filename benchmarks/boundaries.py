"""Boundary extraction speed: ``model.boundaries`` against the full forward, in MB of English text per second.

The text (``data/english/val.bin`` or ``--text``) is cut into rows of ``--length`` bytes, ``--batch`` rows per call,
with the document ids of its packed documents, and processed once per pass; MB/s = text bytes / the fastest of
``--passes`` timed passes after a warm-up call. The model is ``configs/models/small_2stage.json`` with random weights;
a stage's cost depends on the compression before it, so every setting runs twice: random-init routers and routers
calibrated to ``--compression`` (``evaluation.calibration``). Both methods run under inference mode; their boundary
masks are compared on the first call. A profile of one ``model.boundaries`` call closes the report. Writes
``benchmarks/results/boundaries_cpu.md``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks import common
from dynamic_chunker import HNetConfig
from dynamic_chunker.evaluation.calibration import calibrate_routing
from dynamic_chunker.evaluation.compression import positions_per_chunk
from dynamic_chunker.evaluation.flops import boundary_flops_per_byte, default_compression


def text_batches(path: Path, batch: int, length: int, limit: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids, document ids) calls of (batch, length) over the first ``limit`` bytes (at least one row)."""
    rows = max(1, (limit or path.stat().st_size) // length)
    ids = common.text_rows(path, rows, length)
    return list(zip(ids.split(batch), common.documents(ids).split(batch)))


@torch.inference_mode()
def measure(model, batches, passes: int) -> dict:
    ids, docs = batches[0]
    full, fast = model(ids, document_ids=docs), model.boundaries(ids, document_ids=docs)
    total = sum(ids.numel() for ids, _ in batches)
    out = {"same": all(torch.equal(a.boundary_mask, b.boundary_mask) for a, b in zip(full.routing, fast.routing))}
    for name, fn in (("boundaries", model.boundaries), ("full", model)):
        fn(ids, document_ids=docs)  # warm-up
        one_pass = lambda fn=fn: [fn(i, document_ids=d) for i, d in batches]  # noqa: E731
        out[f"{name}_times"] = [common.timed(one_pass)[0] for _ in range(passes)]
        out[f"{name}_mb_s"] = total / min(out[f"{name}_times"]) / 1e6
    counts = torch.tensor([common.chunk_counts(model.boundaries(i, document_ids=d)) for i, d in batches])
    out["compression"] = positions_per_chunk(total, counts.sum(dim=0).tolist())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__, "boundaries_cpu.md", common.MODELS / "small_2stage.json")
    parser.add_argument("--limit", type=int, default=None, help="use only the first LIMIT bytes of the text")
    parser.add_argument("--settings", nargs="+", default=["4x8192", "1x32768"], help="BATCHxLENGTH per call")
    parser.add_argument("--compression", type=float, nargs="+", default=None, help="calibration target per stage")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the operator profile")
    args = common.parse(parser, argv)
    settings = [tuple(int(v) for v in s.lower().split("x")) for s in args.settings]
    run = common.Run("boundaries", argv)
    config = HNetConfig.from_json(args.config)
    targets = args.compression or default_compression(config)
    model = common.build(config).eval()
    routers = {"random init": {k: v.clone() for k, v in model.state_dict().items() if "routing_module" in k}}
    routers["calibrated"] = calibrate_routing(model, common.text_rows(args.text, 1, 8192), targets)
    mm_rate = common.matmul_rate(torch.float32, 4096, 5)
    rows = []
    for batch, length in settings:
        batches = text_batches(args.text, batch, length, args.limit)
        for name, routing in routers.items():
            model.load_state_dict({**model.state_dict(), **routing})
            row = {"setting": f"{batch}x{length}", "routers": name, **measure(model, batches, args.passes)}
            row["flops"] = boundary_flops_per_byte(config, length, row["compression"])
            rows.append(row)
            print(f"{row['setting']} {name}: {row['boundaries_mb_s']:.4f} / {row['full_mb_s']:.4f} MB/s", flush=True)
    if args.profile:  # the calibrated routers (loaded last) at the first setting
        ids, docs = text_batches(args.text, *settings[0], args.limit)[0]
        with torch.inference_mode():
            profile = common.profile_table(lambda: model.boundaries(ids, document_ids=docs))
    lines = run.header(
        "Boundary extraction: `model.boundaries` vs the full forward (CPU)",
        f"Model: `{common.shown(args.config)}` {config.arch_layout}, widths {config.d_model}, "
        f"{common.params(model) / 1e6:.1f}M parameters, float32, random weights (seed 0); routers random-init or"
        f" calibrated to {targets} bytes per chunk",
        f"Text: `{common.shown(args.text)}`, packed documents (ids change at BOS), cut into rows; MB/s = 10^6 bytes"
        f" per second from the fastest of {args.passes} timed passes after a warm-up call",
        f"float32 `torch.mm` rate in the same run (4096 x 4096, best of 5): {mm_rate / 1e9:.0f} GFLOP/s. Boundary "
        "MFLOPs/byte: embedding + each chunking stage's encoder and q/k projections (App. B counting, realised "
        "compression); 'MB/s at mm rate' = the matmul rate / those FLOPs.",
    )
    lines += [
        "| batch x bytes | routers | bytes/chunk per stage | boundaries MB/s | full forward MB/s | speed-up "
        "| masks identical | boundary MFLOPs/byte | boundary GFLOP/s | MB/s at mm rate |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['routers']} | {common.fmt(r['compression'])} | {r['boundaries_mb_s']:.4f} | "
            f"{r['full_mb_s']:.4f} | {r['boundaries_mb_s'] / r['full_mb_s']:.1f}x | {'yes' if r['same'] else 'NO'} | "
            f"{r['flops'] / 1e6:.2f} | {r['flops'] * r['boundaries_mb_s'] / 1e3:.1f} | "
            f"{mm_rate / r['flops'] / 1e6:.3f} |"
        )
    times = [f"{r['setting']} {r['routers']}: {common.fmt(r['boundaries_times'])} | {common.fmt(r['full_times'])}"
             for r in rows]  # fmt: skip
    lines += ["", "Pass times (s), boundaries | full: " + "; ".join(times), ""]
    if args.profile:
        lines += [f"## Profile: one `model.boundaries` call ({args.settings[0]}, calibrated routers)", "", "```"]
        lines += [profile, "```"]
    common.write_report(lines, args.output)


if __name__ == "__main__":
    main()
