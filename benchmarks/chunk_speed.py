"""chunk_text speed with the bundled model, beside semchunk and the MiniLM embedding of the same chunks.

Texts: ``--megabytes`` of the English corpus (``data/english``: prose and reStructuredText) and of Python source (the
standard library of the running Python). For each: chunk_text (chunk_size 512 characters), semchunk at the size that
gives the same mean chunk length (``evaluation.chunkers.calibrate``) and the all-MiniLM-L6-v2 embedding of chunk_text's
chunks, in MB of text per second in this one run (best of ``--passes``; embedding: one pass); chunk_text also with
``compile=True`` (the one-off compile timed apart). The cutter alone (optimal and greedy, from signals computed
beforehand) and its share of chunk_text's time are reported too. Also the windows check: the stage boundaries of
``--agreement-megabytes`` of English with the default window against a window twice as long (share of positions where
they agree). Needs ``pip install -e ".[rag]"``. Writes ``benchmarks/results/chunk_speed_cpu.md``.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np

from benchmarks import common
from dynamic_chunker.config import BOS
from dynamic_chunker.evaluation.chunkers import calibrate, semchunk_chars
from dynamic_chunker.evaluation.embeddings import model_source
from dynamic_chunker.segmentation import DEFAULT_CONTEXT, DEFAULT_WINDOW, HNetChunker, boundary_signals


def english_text(size: int) -> str:
    """``size`` bytes of the English corpus (validation split, then training split), documents joined by newlines."""
    data = (common.ENGLISH / "val.bin").read_bytes()[:size]
    if len(data) < size:
        with open(common.ENGLISH / "train.bin", "rb") as file:
            data += file.read(size - len(data))
    return data.replace(bytes([BOS]), b"\n").decode("utf-8", "ignore")


def python_text(size: int) -> str:
    """``size`` bytes of Python source: the standard library of the running Python, file by file."""
    data = b""
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        data += path.read_bytes()
        if len(data) >= size:
            break
    return data[:size].decode("utf-8", "ignore")


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__, "chunk_speed_cpu.md", threads=2, text=False)
    parser.add_argument("--megabytes", type=float, default=0.25, help="MB of each text to chunk")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--agreement-megabytes", type=float, default=1.0, help="0: skip the windows check")
    args = common.parse(parser, argv)
    from sentence_transformers import SentenceTransformer

    run, size = common.Run("chunk_speed", argv), int(args.megabytes * 1e6)
    chunker = HNetChunker(chunk_size=512)
    compile_seconds, compiled = common.timed(lambda: HNetChunker(chunk_size=512, compile=True))
    compile_seconds += common.timed(lambda: compiled.chunk(english_text(3 * DEFAULT_WINDOW)))[0]  # compiles here
    cutters = {kind: HNetChunker(chunker.model, 512, cutter=kind) for kind in ("optimal", "greedy")}
    embedder = SentenceTransformer(model_source("sentence-transformers/all-MiniLM-L6-v2"), device="cpu")
    rows = []
    for name, text in (("English", english_text(size)), ("Python source", python_text(size))):
        mb = len(text.encode()) / 1e6
        seconds, chunks = common.best_of(args.passes, lambda t=text: chunker.chunk(t))
        compiled_seconds, compiled_chunks = common.best_of(args.passes, lambda t=text: compiled.chunk(t))
        assert [c.text for c in compiled_chunks] == [c.text for c in chunks], "compiled and eager chunks differ"
        mean = float(np.mean([len(c.text) for c in chunks]))
        param, sem_mean = calibrate(semchunk_chars, [text], mean)
        split = semchunk_chars(param)
        sem_seconds, _ = common.best_of(args.passes, lambda t=text, f=split: f(t))
        embed_seconds, _ = common.timed(lambda c=chunks: embedder.encode([x.text for x in c], batch_size=64))
        signals = chunker.signals(text.encode())
        cut_seconds = {
            kind: common.best_of(args.passes, lambda t=text, c=cutter, p=signals: c.cut(t, p))[0]
            for kind, cutter in cutters.items()
        }
        rows.append((name, mb, len(chunks), mean, mb / seconds, mb / compiled_seconds, sem_mean, mb / sem_seconds,
                     mb / embed_seconds,
                     mb / cut_seconds["optimal"], mb / cut_seconds["greedy"], cut_seconds[chunker.cutter] / seconds))
        print(rows[-1], flush=True)
    agreement = ""
    if args.agreement_megabytes > 0:
        data = english_text(int(args.agreement_megabytes * 1e6)).encode()
        short, long = (boundary_signals(chunker.model, data, window=w, overlap=DEFAULT_CONTEXT) > 0.5
                       for w in (DEFAULT_WINDOW, 2 * DEFAULT_WINDOW))  # fmt: skip
        stages = ", ".join(f"stage {s}: {x:.3%}" for s, x in enumerate((short == long).mean(axis=1)))
        agreement = (f"Windows check: boundaries of {len(data):,} bytes of English with windows of {DEFAULT_WINDOW} "
                     f"bytes vs {2 * DEFAULT_WINDOW} (both after {DEFAULT_CONTEXT} bytes of discarded left context) "
                     f"agree at {stages} of positions.")  # fmt: skip
    config = chunker.model.config
    lines = run.header(
        "chunk_text speed (CPU): the bundled model against semchunk and the embedding of the same chunks",
        f"Model: bundled `hnet_chunker_small`, layout {config.arch_layout}, widths {config.d_model}; chunk_text with "
        f"chunk_size 512 characters ({chunker.cutter} cutter: its share of the time is the last column), window "
        f"{DEFAULT_WINDOW} + {DEFAULT_CONTEXT} bytes of context, batch "
        f"{chunker.batch_size}, {chunker._workers()} windows at a time in threads (workers), float32; semchunk at "
        "the size giving the same mean chunk length; embedding: "
        "all-MiniLM-L6-v2 (sentence-transformers, batch 64) of chunk_text's chunks. MB/s = 10^6 bytes of text per "
        f"second, best of {args.passes} passes (embedding: one pass). `compiled`: the same with "
        f"`HNetChunker(compile=True)` (same chunks, checked), after a one-off compile of {compile_seconds:.0f} s "
        "(warm-up included; less when torch's compile cache already holds the graphs).",
    )
    lines += [
        "| text | MB | chunks | chunk_text mean chars | chunk_text MB/s | compiled MB/s | semchunk mean chars "
        "| semchunk MB/s | MiniLM embedding MB/s | chunk_text / embedding | cutter MB/s (optimal / greedy) "
        "| cutter share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, mb, count, mean, rate, fast, sem_mean, sem_rate, embed_rate, cut_rate, greedy_rate, share in rows:
        lines.append(f"| {name} | {mb:.2f} | {count:,} | {mean:.0f} | {rate:.4g} | {fast:.4g} | {sem_mean:.0f} | "
                     f"{sem_rate:.4g} | "
                     f"{embed_rate:.4g} | {rate / embed_rate:.2f} | {cut_rate:.3g} / {greedy_rate:.3g} | "
                     f"{share:.1%} |")  # fmt: skip
    common.write_report([*lines, "", agreement], args.output)


if __name__ == "__main__":
    main()
