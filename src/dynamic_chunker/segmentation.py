"""Learned chunks for retrieval: split text where a trained H-Net puts its chunk boundaries.

``chunk_text(text)`` cuts a text into chunks of at most ``chunk_size`` characters (or tokens of a given tokenizer),
choosing each cut among the positions the model marks as chunk starts, strongest first: a position where a deeper
stage also fired beats one where only stage 0 fired, and within a stage the higher boundary probability wins. Where a
span holds no boundary the cut falls back to weaker (sub-threshold) positions and finally to any character edge.
``level=s`` returns stage ``s``'s learned units as they are. Two cutters: ``"greedy"`` (default) picks each cut in
turn, the strongest in reach of the chunk's start; ``"optimal"`` picks all cuts at once (the best cut set, by
dynamic programming; see :func:`optimal_paths` and :meth:`_Cutter._optimal`).

The model is read only through ``model.boundaries`` (encoders and routers; no decoders, no logits). Texts of any length
are processed in windows of ``window`` bytes, each with ``context`` bytes of left context that is run through the
model and then discarded, so a boundary does not depend on where a window starts (every layer is causal: the right
side never matters). Windows go through the model ``batch_size`` at a time, and :meth:`HNetChunker.iter_chunks`
streams a file in blocks, so memory does not grow with the input.

Offsets: for ``str`` input ``start_index``/``end_index`` are character offsets (``text[start:end] == chunk.text``);
for ``bytes`` input they are byte offsets into those bytes, ``chunk.text`` is ``bytes``, ``chunk_size`` counts bytes,
and cuts never fall inside a valid UTF-8 sequence (each invalid byte counts as a character of its own). ``start_byte``
/ ``end_byte`` are always offsets into the UTF-8 encoding.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import heapq
import math
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .errors import InvalidArgument
from .evaluation.targets import WHITESPACE
from .layers.kernels import CPP_COMPILERS, can_compile
from .layers.stack import Block

BOS = 254  # byte that precedes every training document (data/corpus.py)
BUNDLED_MODEL = "hnet_chunker_small"  # src/dynamic_chunker/models/<name>: config.json + model.safetensors
DEFAULT_CHUNK_SIZE = 512
DEFAULT_WINDOW = 8192
DEFAULT_CONTEXT = 1024
# Windows per model call when batch_size is None: on CPU one at a time, so that each layer's temporaries (a few MB
# per window) are reused from the heap instead of being mapped fresh (and page-faulted in) on every call, which cost
# more than the model itself with 8 windows; on accelerators, batches keep the device busy.
DEFAULT_BATCH = {"cpu": 1}
DEFAULT_BATCH_ELSEWHERE = 8
# glibc malloc settings (see keep_freed_memory): blocks up to 32 MB (glibc's largest mmap threshold) come from the
# heap, and up to 256 MB of freed heap memory is kept for reuse
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_BLOCK_BYTES = 32 << 20
HEAP_KEEP_BYTES = 256 << 20
BLOCK_BYTES = 1 << 18  # bytes processed at a time (a whole number of windows): what bounds the memory
# Layout scores of a cut (see layout_scores): after a blank line, after a sentence end, after a line break (prose is
# often hard-wrapped, so a single line break says little), after clause punctuation (weakest: it splits a sentence,
# but where one must be split it halves the SQuAD answers cut in two at 128 characters; chunk_retrieval_screen.md).
BLANK_LINE, SENTENCE_END, NEWLINE, CLAUSE_END = 3.0, 2.0, 1.0, 0.5
CLAUSE_ENDERS = b",;:"
WIDE_CLAUSE_ENDERS = tuple(c.encode() for c in "，；：")  # full-width (Chinese, Japanese): no whitespace follows
# The optimal cutter (cutter="optimal"): gains are scores scaled by SCORE_SCALE and rounded, so that sums are exact
# integers (the streamed and the whole-text optimum then agree to the last tie); a chunk shorter than the minimum costs
# SHORT_PENALTY, more than any sum of gains, so it is chosen only where no cut set avoids it. Positions considered:
# those scoring at least the cut cost (cuts that pay for themselves), plus the best of every block of chunk_size /
# FALLBACK_BLOCKS characters (so every reach of chunk_size holds one); below MIN_BLOCK every position. Considering
# every position instead ran 4-5x slower and scored the same on retrieval at cut_cost 2.5 (within 0.1 recall@5,
# 0.01 IoU@5, all sizes and variants); at cut_cost 10 the candidates cut fewer SQuAD answers in two (0.8% against
# 1.2% at 300 characters on flat).
SCORE_SCALE = 1024
SHORT_PENALTY = 1 << 62
FALLBACK_BLOCKS = 4
MIN_BLOCK = 4  # a block must hold the start of a character of up to 4 bytes
FORCE_BYTES = 1 << 20  # uncommitted bytes after which the cutter commits its best path (see _Cutter._optimal)
SENTENCE_ENDERS = (b".", b"!", b"?", "。".encode(), "！".encode(), "？".encode())


@dataclass(frozen=True)
class Chunk:
    """One chunk. ``text == source[start_index:end_index]``; see the module docstring for what offsets count."""

    text: str | bytes
    start_index: int
    end_index: int
    token_count: int  # tokens of the tokenizer given, else characters (bytes for bytes input)
    start_byte: int
    end_byte: int
    level: int | None  # deepest stage whose boundary opened the chunk; None: a cut without any boundary
    score: float  # the boundary probability at that stage (1.0 at the start of the text)


# ------------------------------------------------------------------------------------------------ byte-level signals
def row_probs(model, rows: list[bytes], min_rows: int = 0, longest: int = 0) -> np.ndarray:
    """Run ``model.boundaries`` on byte strings as one right-padded batch: (stages, len(rows), longest) float32, where
    [s, r, t] is stage s's boundary probability at byte t of row r if that byte reached stage s, else 0.

    ``min_rows`` and ``longest`` pad the batch further (with one-byte rows, and masked bytes at the end of each row;
    the model is causal, so the real bytes' results do not change): a compiled model then sees only a few shapes.
    """
    stages = model.config.num_stages - 1
    length = max(longest, *(len(r) for r in rows))
    rows = rows + [bytes([BOS])] * (min_rows - len(rows))
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for r, row in enumerate(rows):  # one copy per row (a window), not per byte
        ids[r, : len(row)] = torch.frombuffer(bytearray(row), dtype=torch.uint8)
        mask[r, : len(row)] = True
    device = next(model.parameters()).device
    out = np.zeros((max(stages, 1), len(rows), length), dtype=np.float32)
    with torch.inference_mode():
        found = model.boundaries(ids.to(device), mask=mask.to(device))
        for s in range(stages):
            routing = found.routing[s]
            p = routing.boundary_prob.float()
            if routing.mask is not None:
                p = p * routing.mask
            # amax: padded entries carry 0 and may point at any position, so they must not overwrite a real value
            per_byte = torch.zeros(len(rows), length, device=p.device)
            out[s] = per_byte.scatter_reduce(1, found.positions[s], p, "amax", include_self=True).cpu().numpy()
    return out


def window_bucket(length: int, longest: int) -> int:
    """The padded length of a model call on rows of up to ``length`` bytes, of at most ``longest`` (a compiled model
    sees only these): the first of 512, 1024, 2048, ... that holds it, or ``longest`` beyond the last below it."""
    bucket = 512
    while bucket < length and bucket < longest:
        bucket *= 2
    return max(length, min(bucket, longest))


def boundary_signals(
    model,
    data: bytes,
    context: bytes = bytes([BOS]),
    window: int = DEFAULT_WINDOW,
    overlap: int = DEFAULT_CONTEXT,
    batch_size: int | None = None,
    fixed_shapes: bool = False,
    workers: int = 1,
) -> np.ndarray:
    """Boundary probabilities of every stage over ``data``: (stages, len(data)) float32.

    ``probs[s, t]`` is stage ``s``'s probability that a chunk starts at byte ``t`` where byte ``t`` reached stage ``s``
    (it started a chunk at every stage before ``s``), else 0; stage ``s`` fired at ``t`` where it is > 0.5.
    ``context`` holds the bytes before ``data`` (the BOS byte at a text's start). Each window of ``window`` bytes is
    run after up to ``overlap`` bytes of what precedes it, whose outputs are discarded. ``batch_size`` windows go
    through the model at a time (None: :func:`default_batch_size`). ``fixed_shapes`` pads every call to
    ``batch_size`` rows of a :func:`window_bucket` (for a compiled model: a few shapes, each compiled once).
    ``workers`` model calls run at once, in threads (see :func:`map_calls`).
    """
    batch_size = default_batch_size(model) if batch_size is None else batch_size
    if window < 1 or overlap < 0 or batch_size < 1 or workers < 1:
        raise InvalidArgument(
            f"need window, batch_size, workers >= 1 and overlap >= 0; got {window}, {batch_size}, {workers}, {overlap}"
        )
    probs = np.zeros((max(model.config.num_stages - 1, 1), len(data)), dtype=np.float32)
    left = context[len(context) - overlap :] if overlap else b""
    stream = left + data
    starts = range(len(left), len(stream), window)  # where each window's own bytes start in the stream

    def call(rows: range) -> np.ndarray:
        batch = [stream[max(0, s - overlap) : s + window] for s in rows]
        pad = (batch_size, window_bucket(max(map(len, batch)), overlap + window)) if fixed_shapes else (0, 0)
        return row_probs(model, batch, *pad)

    groups = [starts[first : first + batch_size] for first in range(0, len(starts), batch_size)]
    for rows, out in zip(groups, map_calls(call, groups, workers)):
        for r, s in enumerate(rows):
            b, keep = max(0, s - overlap), min(window, len(stream) - s)
            probs[:, s - len(left) : s - len(left) + keep] = out[:, r, s - b : s - b + keep]
    return probs


def map_calls(call: Callable[[Any], np.ndarray], items: list, workers: int) -> Iterator[np.ndarray]:
    """``map(call, items)``, with up to ``workers`` calls at once in threads, each running its torch operations on one
    thread. On a CPU, windows side by side use the cores better than one window's small matrices split across them
    (2 cores: 1.25x)."""
    if workers <= 1 or len(items) <= 1:
        yield from map(call, items)
        return
    with _one_thread_workers(), ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        yield from pool.map(call, items)


# torch.set_num_threads(n) sets the calling thread's own count and the count that threads started later begin with.
# The workers above set 1 for themselves, and with it that start count: the first of overlapping calls (a server
# chunking in several threads) saves the start count and the last one puts it back, from a thread of its own, so
# that no caller's own count changes and overlapping calls cannot leave new threads at 1.
_workers_lock = threading.Lock()
_workers_calls = 0
_start_threads = 1


@contextlib.contextmanager
def _one_thread_workers() -> Iterator[None]:
    global _workers_calls, _start_threads
    with _workers_lock:
        if _workers_calls == 0:
            _start_threads = torch.get_num_threads()
        _workers_calls += 1
    try:
        yield
    finally:
        with _workers_lock:
            _workers_calls -= 1
            if _workers_calls == 0:
                restore = threading.Thread(target=torch.set_num_threads, args=(_start_threads,))
                restore.start()
                restore.join()


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc serve tensors of up to HEAP_BLOCK_BYTES from its heap and keep up to HEAP_KEEP_BYTES of
    freed memory there, instead of mapping fresh pages for each large tensor and returning them when it is freed.

    Every fresh page costs a page fault when first written (about 3 us each in a VM such as our CI machine's: more
    than the model's own work per byte when a window's temporaries are mapped anew on every call). Process-wide and
    done once (the process keeps up to HEAP_KEEP_BYTES it no longer uses); returns whether it applied (glibc only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library symbols, or one without mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, HEAP_KEEP_BYTES))


def default_batch_size(model) -> int:
    """Windows per model call for ``model``'s device when none is given (see DEFAULT_BATCH)."""
    device = next(model.parameters()).device.type
    return DEFAULT_BATCH.get(device, DEFAULT_BATCH_ELSEWHERE)


def _byte_table(ranges: dict[tuple[int, int], int], default: int) -> np.ndarray:
    table = np.full(256, default, dtype=np.uint8)
    for (first, last), value in ranges.items():
        table[first : last + 1] = value
    return table


# per lead byte: the length of the UTF-8 sequence it starts (0: cannot start one), and the allowed range of the second
# byte, which rules out overlong forms, surrogates and code points above U+10FFFF
SEQUENCE_LENGTH = _byte_table({(0x00, 0x7F): 1, (0xC2, 0xDF): 2, (0xE0, 0xEF): 3, (0xF0, 0xF4): 4}, 0)
SECOND_LOW = _byte_table({(0xE0, 0xE0): 0xA0, (0xF0, 0xF0): 0x90}, 0x80)
SECOND_HIGH = _byte_table({(0xED, 0xED): 0x9F, (0xF4, 0xF4): 0x8F}, 0xBF)


def char_edges(data: bytes, strict: bool) -> np.ndarray:
    """(len(data),) bool: where a character starts. ``strict`` (bytes input): a position inside a *valid* UTF-8
    sequence is not an edge, every other byte is (an invalid byte is a character of its own); otherwise (UTF-8 of a
    str) every non-continuation byte is an edge."""
    b = np.frombuffer(data, dtype=np.uint8)
    continuation = (b & 0xC0) == 0x80
    if not strict:
        return ~continuation
    n = len(b)
    need = SEQUENCE_LENGTH[b]
    second = np.append(b[1:], np.uint8(0))
    cont = np.append(continuation, np.zeros(3, bool))
    valid = need == 1
    ok_second = (second >= SECOND_LOW[b]) & (second <= SECOND_HIGH[b])
    for k in (2, 3, 4):
        ok = (need == k) & ok_second
        for j in range(1, k):
            ok &= cont[j : n + j]
        valid |= ok
    inside = np.zeros(n, dtype=bool)
    for k in (1, 2, 3):  # byte t is inside the valid sequence that starts at t - k
        inside[k:] |= valid[:-k] & (need[:-k] > k)
    return ~inside


def layout_scores(data: bytes, context: bytes = b"") -> np.ndarray:
    """(len(data),) float32: how strongly the layout suggests a cut before each byte: BLANK_LINE after a blank line,
    SENTENCE_END after a sentence end (. ! ? then whitespace, or 。！？), NEWLINE after another line break, CLAUSE_END
    after clause punctuation (, ; : then whitespace, or ，；：), else 0.
    ``context`` is the text before ``data`` (its last few bytes are looked at)."""
    tail = context[-8:]
    b = np.frombuffer(tail + data, dtype=np.uint8)
    n, lead = len(data), len(tail)

    def before(k: int) -> np.ndarray:  # the byte k positions before each byte of data (0 where there is none)
        out = np.zeros(n, dtype=np.uint8)
        start = max(0, k - lead)
        out[start:] = b[lead - k + start : lead - k + n]
        return out

    prev, prev2 = before(1), before(2)
    space = np.isin(prev, np.frombuffer(WHITESPACE, np.uint8))
    score = np.zeros(n, dtype=np.float32)
    ascii_end = np.isin(prev2, np.frombuffer(b".!?", np.uint8)) & space
    clause_end = np.isin(prev2, np.frombuffer(CLAUSE_ENDERS, np.uint8)) & space

    def after_any(enders: tuple[bytes, ...]) -> np.ndarray:  # right after one of these 3-byte characters
        found = np.zeros(n, dtype=bool)
        for ender in enders:
            e = np.frombuffer(ender, np.uint8)
            found |= (before(3) == e[0]) & (prev2 == e[1]) & (prev == e[2])
        return found

    wide_end = after_any(SENTENCE_ENDERS[3:])
    score[clause_end | after_any(WIDE_CLAUSE_ENDERS)] = CLAUSE_END
    score[prev == 0x0A] = NEWLINE
    score[ascii_end | wide_end] = SENTENCE_END
    score[(prev == 0x0A) & ((prev2 == 0x0A) | ((prev2 == 0x0D) & (before(3) == 0x0A)))] = BLANK_LINE
    return score


# ------------------------------------------------------------------------------------------------ optimal cuts
def optimal_paths(
    offsets: list[int], gains: list[int], size: int, min_len: int, adjacent: list[bool] | None = None,
    free_end: bool = False,
) -> tuple[list[int], list[int]]:
    """Best cut sets over candidate cuts (nodes), by dynamic programming with sliding-window maxima: O(nodes).

    Node 0 is the start (a chunk boundary already chosen), node k > 0 a possible cut at ``offsets[k]`` (increasing)
    with gain ``gains[k]`` (the cut's score minus the cost of a cut). A chunk from node i to node k is allowed when
    ``offsets[k] - offsets[i] <= size``, or when ``adjacent[k]`` says node k - 1 is the unit just before node k (a
    single unit longer than ``size``); it is short when ``offsets[k] - offsets[i] < min_len`` and then costs
    SHORT_PENALTY, except into the last node when ``free_end`` (the end of the text).
    Returns ``best`` (best[k]: the highest total gain of a cut set from node 0 ending with a cut at node k) and
    ``parent`` (the node before k on that best set; of equal ones the latest). Every node is reached when each
    ``size`` of offsets before a node holds a node or its adjacent unit.
    """
    n = len(offsets)
    best, parent = [0] * n, [0] * n
    free: deque[int] = deque()  # nodes far enough back (>= min_len), best values decreasing from the front
    short: deque[int] = deque()  # nodes closer than min_len
    reach = moved = 0  # first node within size of node k; first node not yet moved from short to free
    for k in range(1, n):
        o = offsets[k]
        value = best[k - 1]
        while short and best[short[-1]] <= value:
            short.pop()
        short.append(k - 1)
        while moved < k and offsets[moved] <= o - min_len:
            value = best[moved]
            while free and best[free[-1]] <= value:
                free.pop()
            free.append(moved)
            moved += 1
        while offsets[reach] < o - size:
            reach += 1
        lo = min(reach, k - 1) if adjacent is not None and adjacent[k] else reach
        while free and free[0] < lo:
            free.popleft()
        while short and short[0] < max(lo, moved):
            short.popleft()
        penalty = 0 if free_end and k == n - 1 else SHORT_PENALTY
        if free and (not short or best[free[0]] >= best[short[0]] - penalty):
            parent[k] = free[0]
            best[k] = best[free[0]] + gains[k]
        elif short:
            parent[k] = short[0]
            best[k] = best[short[0]] - penalty + gains[k]
        else:  # unreachable with the candidates _Cutter builds; kept so that any input gives a valid cut set
            parent[k] = k - 1
            best[k] = best[k - 1] - 2 * SHORT_PENALTY + gains[k]
    return best, parent


def block_best(score: np.ndarray, block: np.ndarray) -> np.ndarray:
    """(n,) bool: the highest ``score`` (the latest of equal ones) within each run of equal ``block`` ids (sorted)."""
    if len(score) == 0:
        return np.zeros(0, dtype=bool)
    starts = np.flatnonzero(np.diff(block, prepend=block[0] - 1))
    run = np.cumsum(np.isin(np.arange(len(score)), starts)) - 1
    top = np.flatnonzero(score == np.maximum.reduceat(score, starts)[run])
    last = np.append(run[top][1:] != run[top][:-1], True)
    out = np.zeros(len(score), dtype=bool)
    out[top[last]] = True
    return out


# ------------------------------------------------------------------------------------------------ token counting
def token_counter(tokenizer) -> Callable[[str], int]:
    """A function str -> number of tokens from a callable (returning a count or a sequence), a Hugging Face
    ``tokenizers.Tokenizer`` / ``transformers`` tokenizer or a tiktoken ``Encoding``."""
    if type(tokenizer).__module__.startswith("tiktoken"):
        return lambda s: len(tokenizer.encode(s, disallowed_special=()))
    if type(tokenizer).__module__.startswith("tokenizers"):
        return lambda s: len(tokenizer.encode(s, add_special_tokens=False).ids)
    if hasattr(tokenizer, "encode") and type(tokenizer).__module__.startswith("transformers"):
        return lambda s: len(tokenizer.encode(s, add_special_tokens=False))
    if callable(tokenizer):

        def count(s: str) -> int:
            out = tokenizer(s)
            return out if isinstance(out, int) else len(out)

        return count
    raise TypeError(
        f"tokenizer must be a callable (str -> count or tokens), a tokenizers.Tokenizer or a tiktoken Encoding; "
        f"got {type(tokenizer).__name__}"
    )


# ------------------------------------------------------------------------------------------------ models
def compile_for_chunking(model) -> None:
    """``torch.compile`` in place what ``model.boundaries`` runs: the stage-0 encoder and router (every byte; static
    shapes, callers pad windows to a few) and the blocks of the inner encoders (lengths padded to the compiled blocks'
    buckets, see ``Block.compile_bucketed``)."""
    if not can_compile(next(model.parameters()).device):
        raise InvalidArgument(
            f"compile=True needs a C++ compiler for torch.compile on CPU (none of {', '.join(CPP_COMPILERS)} is on "
            "PATH): install one (e.g. apt-get install g++) or leave compile off"
        )
    for module in (model.backbone.encoder, model.backbone.routing_module):
        if getattr(module, "_compiled_call_impl", None) is None:  # once, however many chunkers share the model
            module.compile(dynamic=False)
    stage = model.backbone.main_network
    while not stage.is_innermost:
        for block in stage.encoder.modules():
            if isinstance(block, Block):
                block.compile_bucketed(inference=True)
        stage = stage.main_network


@functools.lru_cache(maxsize=4)
def _bundled(device: str, compiled: bool):
    from .checkpoints import from_pretrained

    folder = Path(__file__).parent / "models" / BUNDLED_MODEL
    if not (folder / "model.safetensors").exists():
        raise FileNotFoundError(f"the bundled model is missing from {folder}; reinstall dynamic_chunker or pass model=")
    model = from_pretrained(folder, device=device).eval()
    if compiled:  # a copy of its own: chunkers without compile keep an eager one
        compile_for_chunking(model)
    return model


def load_chunking_model(model=None, device: str | torch.device | None = None, compile: bool = False):
    """The bundled model (``None``), a folder / .pt / .safetensors / Hub id, or an ``HNetForCausalLM`` as it is;
    ``compile``: with what chunking runs compiled in place (:func:`compile_for_chunking`)."""
    from .model import HNetForCausalLM

    if model is None:
        return _bundled(str(torch.device(device or "cpu")), compile)
    if isinstance(model, HNetForCausalLM):
        model = model.to(device) if device is not None else model
    elif isinstance(model, str | Path):
        from .checkpoints import from_pretrained

        model = from_pretrained(model, device=device).eval()
    else:
        raise TypeError(f"model must be None, a path or Hub id, or an HNetForCausalLM; got {type(model).__name__}")
    if compile:
        compile_for_chunking(model)
    return model


# ------------------------------------------------------------------------------------------------ the chunker
class HNetChunker:
    """Chunks texts where an H-Net puts its boundaries (see the module docstring).

    Args:
        model: ``None`` (the bundled model), a folder, ``.pt``/``.safetensors`` file, Hub id or ``HNetForCausalLM``.
        chunk_size: hard maximum per chunk, in characters (bytes for bytes input) or in tokens of ``tokenizer``;
            default 512 characters, or no maximum with ``level``.
        level: return stage ``level``'s learned units (split further only where one exceeds ``chunk_size``).
        tokenizer: count ``chunk_size`` in its tokens (callable, Hugging Face tokenizer or tiktoken encoding).
        min_fraction: a cut is chosen among positions from ``min_fraction * chunk_size`` to ``chunk_size``.
        layout_weight: weight of the layout scores (blank lines, sentence ends, line breaks, clause punctuation)
            added to the model's. The defaults (2.0, min_fraction 0.2) cut the fewest SQuAD answers in two, on average
            over chunk lengths 128, 275 and 550, in the settings screen of
            ``python -m benchmarks.chunk_retrieval`` (``benchmarks/results/chunk_retrieval_screen.md``).
        model_weight: weight of the model's boundary strength (0: layout only, an ablation).
        cutter: ``"greedy"`` (default): from each chunk start, the highest-scoring end between ``min_fraction *
            chunk_size`` and ``chunk_size`` (the latest of equal ones). ``"optimal"``: all cuts at once, the cut set
            with the highest sum of (score - ``cut_cost``) whose chunks all lie within those bounds (dynamic
            programming; streamed texts give the same cuts as whole ones). Character-counted only: with a
            ``tokenizer`` the greedy cutter is used. On the retrieval benchmark the optimal cutter (screened setting
            ``layout_weight=4.0, cut_cost=10.0``) did not beat the greedy one (``chunk_retrieval_paired.md``).
        cut_cost: the optimal cutter's price of a cut: below the score of a sentence end, every such end becomes a
            cut once a chunk reaches the minimum (short chunks, far below ``chunk_size``); above it, chunks fill up.
        window, context, batch_size: bytes per window, discarded left context per window, windows per model call
            (default: 1 on CPU, 8 on other devices).
        tune_malloc: on CPU, apply :func:`keep_freed_memory` (process-wide glibc settings that make chunking several
            times faster on machines where page faults are slow); False leaves the process's allocator alone.
        compile: compile what chunking runs of the model (the encoders and the stage-0 router) with
            ``torch.compile``, padding model calls and inner lengths to a few shapes, so that each compiles once. A
            model you pass is compiled in place (``nn.Module.compile`` and compiled blocks: the same object and
            weights); the bundled one is a separate copy. Pays off for large inputs: on 2 CPU cores 1.2-1.4x the bytes
            per second after a one-off compile of up to a minute (less when torch's compile cache already holds the
            graphs); needs a C++ compiler on CPU. Boundary probabilities agree with eager ones to about 1e-6 and the
            chunks are the same (``tests/test_segmentation.py``).
        workers: model calls run at once, in threads that each run torch on one thread (None: the number of torch
            threads on CPU, 1 elsewhere). On 2 CPU cores, two windows side by side ran 1.25x faster than one window
            on two threads. Each window's result is that of a one-thread run, whatever the number.
    """

    def __init__(
        self,
        model=None,
        chunk_size: int | None = None,
        *,
        level: int | None = None,
        tokenizer=None,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        min_fraction: float = 0.2,
        layout_weight: float = 2.0,
        model_weight: float = 1.0,
        cutter: str = "greedy",
        cut_cost: float = 10.0,
        window: int = DEFAULT_WINDOW,
        context: int = DEFAULT_CONTEXT,
        tune_malloc: bool = True,
        compile: bool = False,
        workers: int | None = None,
    ):
        if chunk_size is None and level is None:
            chunk_size = DEFAULT_CHUNK_SIZE
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise InvalidArgument(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if cutter not in ("optimal", "greedy"):
            raise InvalidArgument(f"cutter must be 'optimal' or 'greedy', got {cutter!r}")
        if not 0 <= min_fraction <= 1:
            raise InvalidArgument(f"min_fraction must be in [0, 1], got {min_fraction}")
        if window < 1 or context < 0 or (batch_size is not None and batch_size < 1):
            raise InvalidArgument(f"need window, batch_size >= 1, context >= 0; got {window}, {batch_size}, {context}")
        self.model = load_chunking_model(model, device, compile)
        batch_size = default_batch_size(self.model) if batch_size is None else batch_size
        if tune_malloc and next(self.model.parameters()).device.type == "cpu":
            keep_freed_memory()
        self.stages = self.model.config.num_stages - 1
        if level is not None and not (isinstance(level, int) and 0 <= level < max(self.stages, 1)):
            raise InvalidArgument(f"level must be a stage of the model, 0..{max(self.stages, 1) - 1}; got {level!r}")
        self.chunk_size, self.level = chunk_size, level
        self.count_tokens = token_counter(tokenizer) if tokenizer is not None else None
        self.batch_size, self.window, self.context = batch_size, window, context
        self.min_fraction, self.layout_weight, self.model_weight = min_fraction, layout_weight, model_weight
        self.cutter, self.cut_cost = cutter, cut_cost
        self.compiled = compile
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise InvalidArgument(f"workers must be a positive integer, got {workers!r}")
        self.workers = workers

    def __call__(self, text: str | bytes) -> list[Chunk]:
        return self.chunk(text)

    def chunk(self, text: str | bytes) -> list[Chunk]:
        """Chunks of one text (``str``: character offsets; ``bytes``: byte offsets)."""
        if isinstance(text, str):
            data, text_mode = text.encode("utf-8", "surrogatepass"), True
        elif isinstance(text, bytes | bytearray | memoryview):
            data, text_mode = bytes(text), False
        else:
            raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
        block = self._block_bytes()
        return list(self._chunks((data[i : i + block] for i in range(0, len(data), block)), text_mode))

    def chunk_batch(self, texts: Iterable[str | bytes]) -> list[list[Chunk]]:
        """Chunks of many texts; short texts (up to one window) share model calls, ``batch_size`` at a time."""
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str | bytes | bytearray | memoryview):
                raise TypeError(f"texts must be str or bytes, got {type(t).__name__}")
        encoded = [t.encode("utf-8", "surrogatepass") if isinstance(t, str) else bytes(t) for t in texts]
        signals = self._batched_signals(encoded)
        return [
            list(self._cut_stream([(data, probs)], text_mode=isinstance(text, str)))
            for text, data, probs in zip(texts, encoded, signals)
        ]

    def iter_chunks(self, source: str | Path | BinaryIO) -> Iterator[Chunk]:
        """Stream the chunks of a file (path or binary file object), reading it in blocks of BLOCK_BYTES:
        memory stays bounded however long the file is. Offsets are byte offsets and chunk texts ``bytes`` (as for
        bytes input); the chunks are those of ``chunk(the whole file's bytes)``."""
        if isinstance(source, str | Path):
            with open(source, "rb") as file:
                yield from self.iter_chunks(file)
            return
        yield from self._chunks(_reblock(source, self._block_bytes()), text_mode=False)

    def _block_bytes(self) -> int:
        # a whole number of windows, so that windows fall at the same places whatever the block boundaries
        return max(1, BLOCK_BYTES // self.window) * self.window

    def cut(self, text: str | bytes, probs: np.ndarray) -> list[Chunk]:
        """Chunks of ``text`` from its signals (``signals(text as UTF-8)``): tries other sizes or weights without
        running the model again."""
        data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
        if probs.shape[-1] != len(data):
            raise InvalidArgument(f"signals for {probs.shape[-1]} bytes given with a text of {len(data)} bytes")
        return list(self._cut_stream([(data, probs)], text_mode=isinstance(text, str)))

    # -------------------------------------------------------------------------------------------- internals
    def signals(self, data: bytes, context: bytes = bytes([BOS])) -> np.ndarray:
        """(stages, len(data)) boundary probabilities (see :func:`boundary_signals`)."""
        return boundary_signals(
            self.model, data, context, self.window, self.context, self.batch_size, self.compiled, self._workers()
        )

    def _workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return torch.get_num_threads() if next(self.model.parameters()).device.type == "cpu" else 1

    def _batched_signals(self, encoded: list[bytes]) -> list[np.ndarray]:
        # Texts of at most one window share model calls (each row: BOS + the text, as the text alone would run);
        # longer ones go through signals() on their own.
        short = [i for i, d in enumerate(encoded) if len(d) <= self.window]
        out = {i: self.signals(d) for i, d in enumerate(encoded) if i not in set(short)}

        def call(group: list[int]) -> np.ndarray:
            rows = [bytes([BOS]) + encoded[i] for i in group]
            longest = window_bucket(max(map(len, rows)), self.window + 1)
            return row_probs(self.model, rows, *((self.batch_size, longest) if self.compiled else (0, 0)))

        groups = [short[first : first + self.batch_size] for first in range(0, len(short), self.batch_size)]
        for group, probs in zip(groups, map_calls(call, groups, self._workers())):
            for r, i in enumerate(group):
                out[i] = np.ascontiguousarray(probs[:, r, 1 : 1 + len(encoded[i])])
        return [out[i] for i in range(len(encoded))]

    def _chunks(self, blocks: Iterable[bytes], text_mode: bool) -> Iterator[Chunk]:
        def with_signals() -> Iterator[tuple[bytes, np.ndarray]]:
            context = bytes([BOS])
            for block in blocks:
                yield block, self.signals(block, context)
                context = (context + block)[-max(self.context, 1) :]

        yield from self._cut_stream(with_signals(), text_mode)

    def _cut_stream(self, pieces: Iterable[tuple[bytes, np.ndarray]], text_mode: bool) -> Iterator[Chunk]:
        """Cut chunks from (bytes, signals) pieces of one text, in order; keeps only the not yet emitted tail."""
        cutter = _Cutter(self, text_mode)
        for data, probs in pieces:
            yield from cutter.feed(data, probs, final=False)
        yield from cutter.feed(b"", np.zeros((max(self.stages, 1), 0), np.float32), final=True)


class _Cutter:
    """Greedy cuts over a growing buffer: the bytes since the current chunk's start with their signals."""

    HOLD = 3  # bytes held back until more arrive: whether they start a character may depend on the next bytes

    def __init__(self, chunker: HNetChunker, text_mode: bool):
        self.c, self.text_mode = chunker, text_mode
        self.data = b""
        self.probs = np.zeros((max(chunker.stages, 1), 0), np.float32)
        self.before = b""  # a few bytes before the buffer (layout context)
        self.byte0 = 0  # offset of the buffer's first byte in the whole input
        self.index0 = 0  # its offset in characters (text mode) or bytes
        self.first = True
        self.decided = np.zeros(0, dtype=bool)  # optimal cutter: fallback candidates among the buffer's first units

    def feed(self, data: bytes, probs: np.ndarray, final: bool) -> Iterator[Chunk]:
        self.data += data
        self.probs = np.concatenate([self.probs, probs], axis=1)
        usable = len(self.data) if final else max(0, len(self.data) - self.HOLD)
        if usable == 0:
            return
        edges = char_edges(self.data, strict=not self.text_mode)[:usable]
        where = np.flatnonzero(edges)  # byte position of each unit (character) in the buffer
        if not final and len(where):
            usable = int(where[-1])  # the last unit may continue into the held-back bytes
            where = where[:-1]
        if len(where) == 0:
            return
        unit_bytes = np.append(where, usable if not final else len(self.data))
        strength, level, prob = self._unit_signals(where, usable)
        layout = layout_scores(self.data[:usable], self.before)[where]
        score = self.c.model_weight * strength + self.c.layout_weight * layout
        # offsets reported and limited by chunk_size: characters for text, bytes for bytes input
        self.offsets = np.arange(len(unit_bytes)) if self.text_mode else unit_bytes
        cuts = self._cuts(score, level, unit_bytes, final)
        if not cuts:
            return
        text = self.data[: unit_bytes[cuts[-1]]]
        starts = [0, *cuts[:-1]]
        for a, b in zip(starts, cuts):
            piece = text[unit_bytes[a] : unit_bytes[b]]
            if self.first or a > 0:
                opened_level = self.c.stages - 1 if self.first else (None if level[a] < 0 else int(level[a]))
                opened_score = 1.0 if self.first else float(prob[a])
            else:
                opened_level, opened_score = self.carry
            self.first = False
            if self.text_mode:
                piece = piece.decode("utf-8", "surrogatepass")
            count = self.c.count_tokens(piece) if self.c.count_tokens and self.text_mode else len(piece)
            yield Chunk(
                piece,
                self.index0 + int(self.offsets[a]),
                self.index0 + int(self.offsets[b]),
                count,
                self.byte0 + int(unit_bytes[a]),
                self.byte0 + int(unit_bytes[b]),
                opened_level,
                opened_score,
            )
        last = cuts[-1]
        if last < len(where):
            self.carry = (None if level[last] < 0 else int(level[last]), float(prob[last]))
        cut_byte = int(unit_bytes[last])
        self.before = (self.before + self.data[:cut_byte])[-8:]
        self.data = self.data[cut_byte:]
        self.probs = self.probs[:, cut_byte:]
        self.byte0 += cut_byte
        self.index0 += int(self.offsets[last])

    def _unit_signals(self, where: np.ndarray, usable: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per unit: boundary strength (sum of the probabilities along the stages reached), deepest stage fired
        (-1: none) and the probability at that stage (stage 0's where none fired). A boundary on any byte of a
        multi-byte character counts for that character (maximum over its bytes)."""
        probs = np.maximum.reduceat(self.probs[:, :usable], where, axis=1)
        strength = probs.sum(axis=0)
        fired = probs > 0.5
        reached = np.logical_and.accumulate(fired, axis=0)  # fired at this stage and at every stage before it
        level = reached.sum(axis=0, dtype=np.int8) - 1
        prob = np.take_along_axis(probs, np.maximum(level, 0)[None], axis=0)[0]
        return strength, level, prob

    def _cuts(self, score: np.ndarray, level: np.ndarray, unit_bytes: np.ndarray, final: bool) -> list[int]:
        """Unit indices where chunks end (each also the next chunk's start), for as much as the buffer decides."""
        n = len(score)  # units in the buffer; a cut before unit j ends the chunk at j (0 < j <= n)
        size = self.c.chunk_size
        if self.c.level is not None:
            mandatory = np.flatnonzero(level[1:] >= self.c.level) + 1
            bounds = [*mandatory.tolist(), n] if final else mandatory.tolist()
            if size is None:
                return bounds
            cuts, start = [], 0
            for end in bounds:
                cuts += self._greedy(score, start, end, unit_bytes, final=True)
                start = end
            return cuts
        if self.c.cutter == "optimal" and (self.c.count_tokens is None or not self.text_mode):
            return self._optimal(score, n, unit_bytes, final)
        return self._greedy(score, 0, n, unit_bytes, final)

    def _optimal(self, score: np.ndarray, n: int, unit_bytes: np.ndarray, final: bool) -> list[int]:
        """Cuts of the best cut set (highest sum of score - cut_cost, chunks within [min_len, chunk_size]) over the
        units of the buffer, for as much as later text cannot change: all cuts up to the last one that every best
        set shares whatever follows (the common ancestor of the best sets ending in reach of the buffer's end).

        Candidates are fixed by the text alone (blocks aligned to offset 0; the statuses of blocks that straddle a
        committed cut are remembered in ``self.decided``), and gains are integers, so the cuts equal those of the
        whole text at once however it arrives in blocks. Only where no cut is shared for FORCE_BYTES (texts whose
        scores tie everywhere, e.g. one letter repeated) the best set so far is committed up to the reach of the end.
        """
        c, size = self.c, self.c.chunk_size
        absolute = self.index0 + self.offsets  # n + 1 offsets (units and the end), counted from the text's start
        block = max(1, size // FALLBACK_BLOCKS)
        if final or block < MIN_BLOCK:
            limit = n
            horizon = int(absolute[n])
        else:  # only whole blocks: a block's best unit may still change with what follows
            horizon = int(absolute[n]) // block * block
            limit = int(np.searchsorted(absolute[:n], horizon))
            if limit == 0:
                return []
        if block < MIN_BLOCK:
            candidate = np.ones(limit, dtype=bool)
        else:
            known = min(len(self.decided), limit)
            candidate = np.zeros(limit, dtype=bool)
            candidate[:known] = self.decided[:known]
            candidate[known:] = block_best(score[known:limit], absolute[known:limit] // block)
        fallback = candidate.copy()
        candidate |= score[:limit] >= c.cut_cost
        candidate[0] = True  # the start of the buffer: the last cut (or the text's start)
        nodes = np.flatnonzero(candidate)
        gains = np.rint((score[nodes].astype(np.float64) - c.cut_cost) * SCORE_SCALE).astype(np.int64)
        if final:
            nodes, gains = np.append(nodes, n), np.append(gains, 0)
        offsets = absolute[nodes]
        adjacent = np.append(False, np.diff(nodes) == 1) if not self.text_mode else None
        min_len = math.ceil(c.min_fraction * size)
        best, parent = optimal_paths(offsets.tolist(), gains.tolist(), size, min_len,
                                     None if adjacent is None else adjacent.tolist(), free_end=final)  # fmt: skip
        if final:
            anchor = len(nodes) - 1
        else:
            frontier = set(np.flatnonzero(offsets >= horizon - size).tolist()) | {len(nodes) - 1}
            latest_first = [-k for k in frontier]
            heapq.heapify(latest_first)
            while len(frontier) > 1:  # walk the latest node back until all best sets meet
                latest = -heapq.heappop(latest_first)
                frontier.remove(latest)
                if parent[latest] not in frontier:
                    frontier.add(parent[latest])
                    heapq.heappush(latest_first, -parent[latest])
            anchor = frontier.pop()
            if unit_bytes[n] - unit_bytes[nodes[anchor]] > FORCE_BYTES:
                ends = np.flatnonzero(offsets >= horizon - size)
                ends = ends if len(ends) else np.array([len(nodes) - 1])
                anchor = int(ends[len(ends) - 1 - np.argmax(np.asarray(best)[ends][::-1])])  # best; latest of equal
                while anchor and offsets[anchor] >= horizon - size:
                    anchor = parent[anchor]
        path = []
        while anchor:
            path.append(int(nodes[anchor]))
            anchor = parent[anchor]
        path.reverse()
        if not final:
            self.decided = fallback[path[-1] if path else 0 :]
        return path

    def _greedy(self, score: np.ndarray, start: int, end: int, unit_bytes: np.ndarray, final: bool) -> list[int]:
        """Cuts in units [start, end): from each chunk start, the highest score among the allowed ends (the latest
        of equal ones); a chunk that reaches ``end`` is only cut there when ``final``."""
        cuts: list[int] = []
        while start < end:
            hi = self._longest(start, end, unit_bytes)
            if hi >= end:
                if final:
                    cuts.append(end)
                break
            lo = min(hi, start + max(1, math.ceil(self.c.min_fraction * (hi - start))))
            window = score[lo : hi + 1]
            j = lo + len(window) - 1 - int(np.argmax(window[::-1]))
            cuts.append(j)
            start = j
        return cuts

    def _longest(self, start: int, end: int, unit_bytes: np.ndarray) -> int:
        """The furthest chunk end (unit index, >= start + 1) such that units [start, end) fit in chunk_size, or
        ``end + 1`` when everything up to ``end`` fits (no cut needed yet). A single unit always "fits"."""
        size = self.c.chunk_size
        if self.c.count_tokens is None or not self.text_mode:
            # last unit boundary within size of the start (at least one unit)
            stop = int(np.searchsorted(self.offsets, self.offsets[start] + size, side="right")) - 1
            return max(stop, start + 1) if stop < end else end + 1
        count = self.c.count_tokens

        def fits(stop: int) -> bool:
            return count(self.data[unit_bytes[start] : unit_bytes[stop]].decode("utf-8", "surrogatepass")) <= size

        span = size  # galloping: tokens of a tokenizer usually hold one or more characters
        while start + span < end and fits(start + span):
            span *= 2
        if start + span >= end and fits(end):
            return end + 1
        lo, hi = start + 1, min(start + span, end)  # lo: allowed (a single unit may exceed); hi: does not fit
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo


def _reblock(file: BinaryIO, size: int) -> Iterator[bytes]:
    """Blocks of exactly ``size`` bytes (the last one shorter) from a file whose reads may return less."""
    pending = b""
    while chunk := file.read(size - len(pending)):
        pending += chunk
        if len(pending) == size:
            yield pending
            pending = b""
    if pending:
        yield pending


def chunk_text(
    text: str | bytes,
    chunk_size: int | None = None,
    *,
    model=None,
    level: int | None = None,
    tokenizer=None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    **options: Any,
) -> list[Chunk]:
    """Split ``text`` into chunks where the model puts its boundaries (see :class:`HNetChunker` for the options).

    ``"".join(c.text for c in chunks) == text`` and ``text[c.start_index:c.end_index] == c.text`` always hold.
    """
    chunker = HNetChunker(
        model, chunk_size, level=level, tokenizer=tokenizer, device=device, batch_size=batch_size, **options
    )  # cheap: the bundled model is loaded once per process
    return chunker.chunk(text)


