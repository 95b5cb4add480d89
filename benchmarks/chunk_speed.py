"""chunk_text speed with the bundled model, beside semchunk and the MiniLM embedding of the same chunks.

    python benchmarks/chunk_speed.py [--megabytes 0.25] [--threads 2] [--agreement-megabytes 1]

Texts: the start of `data/english`'s validation split (English prose and reStructuredText) and Python source from
the standard library of the running Python. For each: chunk_text (chunk_size 512 characters), semchunk at the size
that gives the same mean chunk length, and all-MiniLM-L6-v2 embedding of chunk_text's chunks, all in MB of text per
second in this one run (best of --passes). Also the windows check: the stage boundaries of --agreement-megabytes of
English with the default window against a window twice as long (share of positions where they agree).
Writes benchmarks/results/chunk_speed_cpu.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

from dynamic_chunker.segmentation import DEFAULT_CONTEXT, DEFAULT_WINDOW, HNetChunker, boundary_signals

RESULTS = Path(__file__).parent / "results"


def english(size: int) -> str:
    """The validation split, then as much of the training split as ``size`` needs (documents joined by newlines)."""
    folder = Path(__file__).resolve().parents[1] / "data" / "english"
    data = (folder / "val.bin").read_bytes()
    if len(data) < size:
        with open(folder / "train.bin", "rb") as file:
            data += file.read(size - len(data))
    return data.replace(bytes([254]), b"\n")[:size].decode("utf-8", "ignore")


def python_source(size: int) -> str:
    folder = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(folder.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        parts.append(text)
        total += len(text.encode())
        if total >= size:
            break
    return "".join(parts).encode()[:size].decode("utf-8", "ignore")


def best_of(passes: int, function) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(passes):
        begin = time.perf_counter()
        out = function()
        best = min(best, time.perf_counter() - begin)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=0.25, help="bytes of each text to chunk (default 0.25 MB)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--agreement-megabytes", type=float, default=1.0, help="0: skip the windows check")
    parser.add_argument("--out", default=str(RESULTS / "chunk_speed_cpu.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    begin = time.perf_counter()
    load_before = os.getloadavg()
    size = int(args.megabytes * 1e6)
    chunker = HNetChunker(chunk_size=512)
    import semchunk
    from sentence_transformers import SentenceTransformer

    from dynamic_chunker.evaluation.embeddings import model_source

    embedder = SentenceTransformer(model_source("sentence-transformers/all-MiniLM-L6-v2"), device="cpu")
    rows = []
    for name, text in (("English", english(size)), ("Python source", python_source(size))):
        mb = len(text.encode()) / 1e6
        seconds, chunks = best_of(args.passes, lambda t=text: chunker.chunk(t))
        mean = float(np.mean([len(c.text) for c in chunks]))
        lo, hi = 16, 2048  # semchunk's size (chars) for the same mean chunk length
        while hi - lo > 4:
            mid = (lo + hi) // 2
            pieces = semchunk.chunk(text, mid, len)
            lo, hi = (mid, hi) if np.mean([len(p) for p in pieces]) < mean else (lo, mid)
        sem_seconds, pieces = best_of(args.passes, lambda t=text, s=lo: semchunk.chunk(t, s, len))
        texts = [c.text for c in chunks]
        embed_seconds, _ = best_of(1, lambda t=texts: embedder.encode(t, batch_size=64))
        rows.append((name, mb, mean, mb / seconds, float(np.mean([len(p) for p in pieces])), mb / sem_seconds,
                     mb / embed_seconds, len(chunks)))  # fmt: skip
        print(rows[-1], file=sys.stderr, flush=True)
    agreement = None
    if args.agreement_megabytes > 0:
        data = english(int(args.agreement_megabytes * 1e6)).encode()
        model = chunker.model
        short = boundary_signals(model, data, window=DEFAULT_WINDOW, overlap=DEFAULT_CONTEXT) > 0.5
        long = boundary_signals(model, data, window=2 * DEFAULT_WINDOW, overlap=DEFAULT_CONTEXT) > 0.5
        agreement = (len(data), (short == long).mean(axis=1))
    config = chunker.model.config
    lines = [
        "# chunk_text speed (CPU): the bundled model against semchunk and the embedding of the same chunks",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} torch threads; load average before / after: {' '.join(f'{x:.2f}' for x in load_before)} / "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (other jobs were running: absolute figures are low, the "
        f"ratios in one row are comparable); run time {time.perf_counter() - begin:.0f} s  ",
        f"Model: bundled `hnet_chunker_small`, layout {config.arch_layout}, widths {config.d_model}; chunk_text with "
        f"chunk_size 512 characters, window {DEFAULT_WINDOW} + {DEFAULT_CONTEXT} bytes of context, "
        f"batch {chunker.batch_size}, float32; semchunk at the size giving the same mean chunk length; embedding: "
        "all-MiniLM-L6-v2 "
        "(sentence-transformers, batch 64) of chunk_text's chunks. MB/s = 10^6 bytes of text per second, best of "
        f"{args.passes} passes (embedding: one pass).",
        "",
        "| text | MB | chunks | chunk_text mean chars | chunk_text MB/s | semchunk mean chars | semchunk MB/s | "
        "MiniLM embedding MB/s | chunk_text / embedding |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, mb, mean, rate, sem_mean, sem_rate, embed_rate, count in rows:
        lines.append(f"| {name} | {mb:.2f} | {count:,} | {mean:.0f} | {rate:.4g} | {sem_mean:.0f} | {sem_rate:.4g} | "
                     f"{embed_rate:.4g} | {rate / embed_rate:.2f} |")  # fmt: skip
    if agreement is not None:
        n, share = agreement
        stages = ", ".join(f"stage {s}: {x * 100:.3f}%" for s, x in enumerate(share))
        lines += ["", f"Windows check: boundaries of {n:,} bytes of English with windows of {DEFAULT_WINDOW} bytes vs "
                  f"{2 * DEFAULT_WINDOW} (both with {DEFAULT_CONTEXT} bytes of discarded left context) agree at "
                  f"{stages} of positions."]  # fmt: skip
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
