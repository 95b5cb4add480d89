"""chunk_text / HNetChunker: lossless chunks at character edges, within chunk_size, at the model's boundaries."""

import itertools
import sys
import threading
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.errors import InvalidArgument
from dynamic_chunker.layers.stack import Block
from dynamic_chunker.segmentation import (
    BLANK_LINE,
    CLAUSE_END,
    NEWLINE,
    SENTENCE_END,
    SHORT_PENALTY,
    Chunk,
    HNetChunker,
    boundary_signals,
    char_edges,
    chunk_text,
    keep_freed_memory,
    layout_scores,
    map_calls,
    optimal_paths,
    row_probs,
    token_counter,
    window_bucket,
)


def small_model(stages: int = 2, seed: int = 0) -> HNetForCausalLM:
    """A random H-Net small enough that chunking a few kilobytes takes milliseconds."""
    layout = ["m1", ["T1"], "m1"] if stages == 1 else ["m1", ["m1", ["T1"], "m1"], "m1"]
    widths = [32, 64] if stages == 1 else [32, 32, 64]
    config = HNetConfig.from_dict(
        {
            "arch_layout": layout,
            "d_model": widths,
            "d_intermediate": [0] * (len(widths) - 1) + [128],
            "vocab_size": 256,
            "ssm_cfg": {"chunk_size": 64, "d_conv": 4, "d_state": 16, "expand": 2},
            "attn_cfg": {"num_heads": [1] * len(widths), "rotary_emb_dim": [16] * len(widths),
                         "window_size": [-1] * len(widths)},
        }
    )
    torch.manual_seed(seed)
    return HNetForCausalLM(config).eval()


MODEL = small_model()
SAMPLE = (
    "The kernel schedules tasks.  It keeps a run queue per CPU!\n\nA second paragraph follows? Yes.\n"
    "def f(x):\n    return x + 1  # code\n"
    "中文没有空格的句子。这是第二句！\n"
    "emoji 😀👍🏽 and e\u0301 combining; שלום עולם (RTL) مرحبا\x00NUL\t tabs\r\n"
)


CUTTERS = st.sampled_from(["greedy", "optimal"])


def check_chunks(text, chunks: list[Chunk], chunk_size: int | None = None):
    joined = ("" if isinstance(text, str) else b"").join(c.text for c in chunks)
    assert joined == text
    encoded = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    position = 0
    for c in chunks:
        assert c.text, "no empty chunks"
        assert text[c.start_index : c.end_index] == c.text
        assert c.start_index == position
        position = c.end_index
        piece = c.text.encode("utf-8", "surrogatepass") if isinstance(c.text, str) else c.text
        assert encoded[c.start_byte : c.end_byte] == piece
        if chunk_size is not None:
            assert len(c.text) <= chunk_size or len(c.text) == 1 or not isinstance(text, str)
    assert position == len(text)


# ------------------------------------------------------------------------------------------------ guarantees
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=300), chunk_size=st.integers(1, 60), layout=st.sampled_from([0.0, 1.0]), cutter=CUTTERS)
def test_any_text_is_chunked_losslessly_within_chunk_size(text, chunk_size, layout, cutter):
    chunks = chunk_text(text, chunk_size, model=MODEL, layout_weight=layout, cutter=cutter)
    check_chunks(text, chunks, chunk_size)
    assert chunk_text(text, chunk_size, model=MODEL, layout_weight=layout, cutter=cutter) == chunks  # deterministic


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300), chunk_size=st.integers(1, 40), cutter=CUTTERS)
def test_any_bytes_are_chunked_at_character_edges(data, chunk_size, cutter):
    chunks = chunk_text(data, chunk_size, model=MODEL, cutter=cutter)
    check_chunks(data, chunks)
    edges = set(reference_edges(data))
    for c in chunks:
        assert c.start_index == c.start_byte and c.end_index == c.end_byte  # bytes in, byte offsets out
        assert c.start_index in edges, "a cut inside a valid UTF-8 sequence"
        assert len(c.text) <= chunk_size or reference_edges(c.text) == [0]  # too long only as one character


def reference_edges(data: bytes) -> list[int]:
    """Where characters start, by decoding: a valid UTF-8 sequence is one character, an invalid byte another."""
    edges, i = [], 0
    while i < len(data):
        edges.append(i)
        for k in (1, 2, 3, 4):
            try:
                if len(data[i : i + k].decode("utf-8")) == 1:
                    i += k
                    break
            except UnicodeDecodeError:
                continue
        else:
            i += 1
    return edges


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64) | st.text(max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_char_edges_match_a_decoder(data):
    assert np.flatnonzero(char_edges(data, strict=True)).tolist() == reference_edges(data)


@pytest.mark.parametrize(
    "text",
    ["", " ", " \n\n\t  \r\n ", "\x00" * 50, "😀" * 40, "e\u0301" * 30, "שלום עולם " * 10, "中文没有空格" * 20, SAMPLE,
     "\ud800 lone surrogate"],
)
@pytest.mark.parametrize("chunk_size", [1, 7, 64])
@pytest.mark.parametrize("cutter", ["greedy", "optimal"])
def test_special_texts(text, chunk_size, cutter):
    chunks = chunk_text(text, chunk_size, model=MODEL, cutter=cutter)
    check_chunks(text, chunks, chunk_size)
    assert (chunks == []) == (text == "")


def test_invalid_utf8_bytes_keep_byte_offsets():
    data = b"ok \xff\xfe caf\xc3\xa9 \xe4\xb8\xad\xe6 end" * 5
    chunks = chunk_text(data, 5, model=MODEL)
    check_chunks(data, chunks)
    assert all(isinstance(c.text, bytes) and c.token_count == len(c.text) for c in chunks)
    assert max(len(c.text) for c in chunks) <= 5


def test_first_chunk_opens_at_every_stage_and_levels_are_consistent():
    chunks = chunk_text(SAMPLE, 40, model=MODEL)
    assert chunks[0].level == 1 and chunks[0].score == 1.0
    for c in chunks[1:]:
        assert c.level in (None, 0, 1)
        assert (c.score > 0.5) == (c.level is not None)


# ------------------------------------------------------------------------------------------------ what is cut where
def test_level_returns_the_stage_units_unchanged():
    text = SAMPLE.encode("ascii", "ignore").decode()  # one byte per character: units map to bytes one to one
    found = MODEL.boundaries(torch.tensor([[254, *text.encode()]]))
    for stage in (0, 1):
        starts = torch.nonzero(found.chunk_starts(stage)[0, 1:]).flatten().tolist()
        chunks = chunk_text(text, model=MODEL, level=stage)
        check_chunks(text, chunks)
        assert [c.start_index for c in chunks] == sorted({0, *starts})
        assert all(c.level is not None and c.level >= stage for c in chunks)


def test_level_with_chunk_size_splits_only_long_units():
    units = chunk_text(SAMPLE, model=MODEL, level=1)
    limited = chunk_text(SAMPLE, 3, model=MODEL, level=1)
    check_chunks(SAMPLE, limited, 3)
    assert {c.start_index for c in units} <= {c.start_index for c in limited}


def test_greedy_cuts_take_the_strongest_boundary_in_reach():
    text = SAMPLE * 3
    size = 50
    chunker = HNetChunker(MODEL, size, layout_weight=0.0, min_fraction=0.5, cutter="greedy")
    chunks = chunker.chunk(text)
    probs = chunker.signals(text.encode())
    edges = np.flatnonzero(char_edges(text.encode(), strict=False))
    per_char = np.maximum.reduceat(probs, edges, axis=1)
    strength = per_char.sum(axis=0)
    for c, nxt in zip(chunks, chunks[1:]):
        allowed = range(c.start_index + 25, c.start_index + size + 1)
        best = max(strength[j] for j in allowed if j < len(text))
        assert strength[nxt.start_index] == best


# ------------------------------------------------------------------------------------------------ optimal cutter
def cut_set_value(offsets, gains, cuts, size, min_len, adjacent=None):
    """Total gain of the cut set ``cuts`` (node indices, ending at the last node), or None if a chunk is too long."""
    total, previous = 0, 0
    for k in cuts:
        length = offsets[k] - offsets[previous]
        if length > size and not (adjacent and adjacent[k] and k == previous + 1):
            return None
        total += gains[k] - (SHORT_PENALTY if length < min_len and k != len(offsets) - 1 else 0)
        previous = k
    return total


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.integers(1, 5), min_size=1, max_size=11),
    gains=st.lists(st.integers(-6, 6), min_size=12, max_size=12),
    size=st.integers(1, 12),
    min_len=st.integers(0, 8),
    with_adjacent=st.booleans(),
)
def test_optimal_paths_find_the_best_of_all_cut_sets(steps, gains, size, min_len, with_adjacent):
    offsets = [0, *itertools.accumulate(steps)]
    n = len(offsets)
    gains = [0, *gains[1 : n - 1], 0]  # the start and the end (free) cost nothing
    adjacent = [k % 2 == 1 for k in range(n)] if with_adjacent else None
    best, parent = optimal_paths(offsets, gains, size, min_len, adjacent, free_end=True)
    values = [cut_set_value(offsets, gains, [*inner, n - 1], size, min_len, adjacent)
              for r in range(n - 1) for inner in itertools.combinations(range(1, n - 1), r)]  # fmt: skip
    feasible = [v for v in values if v is not None]
    if not feasible:
        return
    assert best[-1] == max(feasible)
    path, k = [], n - 1
    while k:
        path.append(k)
        k = parent[k]
    assert cut_set_value(offsets, gains, path[::-1], size, min_len, adjacent) == best[-1]


def unit_scores(chunker, text: str) -> np.ndarray:
    data = text.encode()
    edges = np.flatnonzero(char_edges(data, strict=False))
    strength = np.maximum.reduceat(chunker.signals(data), edges, axis=1).sum(axis=0)
    return chunker.model_weight * strength + chunker.layout_weight * layout_scores(data)[edges]


@pytest.mark.parametrize("size, min_fraction", [(7, 0.0), (7, 0.5), (30, 0.3)])
def test_optimal_cutter_reaches_the_best_score_of_any_cut_set(size, min_fraction):
    # chunk_size 7: every position is a candidate, so the cutter's optimum is the optimum over all cut sets
    text = SAMPLE[:120]
    chunker = HNetChunker(MODEL, size, min_fraction=min_fraction, cutter="optimal", cut_cost=1.5)
    chunks = chunker.chunk(text)
    check_chunks(text, chunks, size)
    gain = np.rint((unit_scores(chunker, text).astype(np.float64) - 1.5) * 1024).astype(np.int64)
    min_len = int(np.ceil(min_fraction * size))
    # each cut gains its score; the chunk it ends pays the penalty if short (the last chunk never does)
    ours = sum(int(gain[b.start_index]) - SHORT_PENALTY * (len(a.text) < min_len) for a, b in zip(chunks, chunks[1:]))
    # reference: the plain O(n^2) dynamic program over every character edge
    n = len(text)
    best = [0] + [None] * n
    for j in range(1, n + 1):
        for i in range(max(0, j - size), j):
            short = SHORT_PENALTY if j - i < min_len and j < n else 0
            value = best[i] - short + (int(gain[j]) if j < n else 0)
            best[j] = value if best[j] is None or value > best[j] else best[j]
    if size == 7:
        assert ours == best[n]
    else:  # fewer candidates (high scores and each block's best): at most the optimum, and close to it
        assert ours <= best[n]
        assert ours >= best[n] - 2 * 1024 * len(chunks)


@pytest.mark.parametrize("size, cost", [(40, 2.5), (150, 0.0)])  # cost 0: every position is a candidate
def test_optimal_cutter_streams_the_cuts_of_the_whole_text(monkeypatch, size, cost):
    import dynamic_chunker.segmentation as seg

    text = (SAMPLE * 12).encode()
    chunker = HNetChunker(MODEL, size, window=256, context=64, cutter="optimal", cut_cost=cost)
    whole = chunker.cut(text, chunker.signals(text))
    monkeypatch.setattr(seg, "BLOCK_BYTES", 256)
    assert chunker.chunk(text) == whole
    assert chunker.chunk(text.decode()) == chunker.cut(text.decode(), chunker.signals(text))


def test_optimal_cutter_commits_where_best_sets_never_meet(monkeypatch):
    import dynamic_chunker.segmentation as seg

    monkeypatch.setattr(seg, "BLOCK_BYTES", 256)
    monkeypatch.setattr(seg, "FORCE_BYTES", 600)  # one letter repeated: every cut scores the same
    text = b"a" * 5000
    chunker = HNetChunker(MODEL, 50, window=256, context=64, model_weight=0.0, cutter="optimal")
    chunks = chunker.chunk(text)
    check_chunks(text, chunks, 50)
    assert chunks == chunker.chunk(text)


def test_optimal_cutter_beats_greedy_on_its_own_objective():
    text = SAMPLE * 4
    for size in (40, 90):
        totals = {}
        for cutter in ("optimal", "greedy"):
            chunker = HNetChunker(MODEL, size, cutter=cutter, min_fraction=0.2, cut_cost=2.5)
            score = unit_scores(chunker, text)
            chunks = chunker.chunk(text)
            check_chunks(text, chunks, size)
            assert all(len(c.text) >= 0.2 * size for c in chunks[:-1])
            totals[cutter] = sum(score[c.start_index] - chunker.cut_cost for c in chunks[1:])
        assert totals["optimal"] >= totals["greedy"]


def test_layout_only_ablation_cuts_at_paragraphs():
    text = ("word " * 15 + "\n\n") * 10
    chunks = chunk_text(text, 100, model=MODEL, model_weight=0.0)
    check_chunks(text, chunks, 100)
    assert all(c.text.endswith("\n\n") for c in chunks[:-1])


def test_layout_scores():
    text = b"One. Two\nThree\n\nFour!x\r\n\r\nFive\xe3\x80\x82Six.\nSeven, eight;nine: ten,\nEleven"
    score = layout_scores(text)
    expected = np.zeros(len(text), dtype=np.float32)
    expected[text.index(b"Two")] = SENTENCE_END
    expected[text.index(b"Three")] = NEWLINE
    expected[text.index(b"Four")] = BLANK_LINE
    expected[text.index(b"Five")] = BLANK_LINE
    expected[text.index(b"Six")] = SENTENCE_END
    expected[text.index(b"Seven")] = SENTENCE_END  # a line break after a sentence end: the stronger of the two
    expected[text.index(b"eight")] = CLAUSE_END
    expected[text.index(b"ten")] = CLAUSE_END  # "nine" follows ";" without whitespace: not a clause end
    expected[text.index(b"Eleven")] = NEWLINE
    expected[text.index(b"\n\n") + 1] = NEWLINE  # between the two line breaks of a blank line
    expected[text.index(b"\r\n\r\n") + 2] = NEWLINE  # after the first \r\n
    np.testing.assert_array_equal(score, expected)
    wide = "中文，句子；结尾：好。完".encode()
    expected = np.zeros(len(wide), dtype=np.float32)
    for after, value in (("，", CLAUSE_END), ("；", CLAUSE_END), ("：", CLAUSE_END), ("。", SENTENCE_END)):
        expected[wide.index(after.encode()) + 3] = value
    np.testing.assert_array_equal(layout_scores(wide), expected)
    # context: the bytes before a block count
    np.testing.assert_array_equal(layout_scores(b"Next", context=b"end.\n\n"), [BLANK_LINE, 0, 0, 0])


# ------------------------------------------------------------------------------------------------ tokens
def test_chunk_size_in_tokens_of_a_callable():
    text = SAMPLE * 4
    chunks = chunk_text(text, 12, model=MODEL, tokenizer=str.split)
    check_chunks(text, chunks)
    for c in chunks:
        assert c.token_count == len(c.text.split()) <= 12 or len(c.text) == 1


def test_chunk_size_in_tokens_of_a_hugging_face_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    tokenizer.train_from_iterator([SAMPLE] * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))
    count = token_counter(tokenizer)
    text = SAMPLE * 4
    chunks = chunk_text(text, 20, model=MODEL, tokenizer=tokenizer)
    check_chunks(text, chunks)
    assert all(c.token_count == count(c.text) <= 20 for c in chunks)
    assert sum(c.token_count for c in chunks) >= count(text)


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_text("x", 0, model=MODEL)
    with pytest.raises(ValueError, match="level"):
        chunk_text("x", model=MODEL, level=2)
    with pytest.raises(TypeError, match="str or bytes"):
        chunk_text(["x"], model=MODEL)
    with pytest.raises(TypeError, match="tokenizer"):
        chunk_text("x", 5, model=MODEL, tokenizer=3)
    with pytest.raises(TypeError, match="model"):
        chunk_text("x", 5, model=3)


# ------------------------------------------------------------------------------------------------ long texts
def test_windows_with_discarded_context_agree_with_longer_windows():
    # The check is 1 MB with the default window against twice that; with this random model (whose Mamba
    # decays are as slow as a trained one's) 64 KB and windows of 2K / 4K bytes with 512 bytes of context run in
    # seconds; `python -m benchmarks.chunk_speed` measures the full-size check with the bundled model.
    rng = np.random.default_rng(0)
    words = [w.encode() for w in SAMPLE.split()]
    data = b" ".join(words[i] for i in rng.integers(0, len(words), 12000))[: 1 << 16]
    short = boundary_signals(MODEL, data, window=2048, overlap=512, batch_size=16) > 0.5
    long = boundary_signals(MODEL, data, window=4096, overlap=512, batch_size=16) > 0.5
    agreement = (short == long).mean(axis=1)
    assert (agreement >= 0.999).all(), agreement


def test_windows_are_exact_where_they_hold_the_whole_text():
    data = SAMPLE.encode()
    whole = MODEL.boundaries(torch.tensor([[254, *data]]))
    probs = boundary_signals(MODEL, data, window=len(data) + 10, overlap=1)  # the BOS before it
    torch.testing.assert_close(
        torch.from_numpy(probs[0]), whole.routing[0].boundary_prob[0, 1:].float(), rtol=0, atol=1e-6
    )


def test_windows_one_at_a_time_by_default_on_cpu_give_the_batched_signals():
    data = (SAMPLE * 8).encode()
    assert HNetChunker(MODEL).batch_size == 1  # CPU default (DEFAULT_BATCH): no fresh memory mapped per call
    one = boundary_signals(MODEL, data, window=300, overlap=64)
    batched = boundary_signals(MODEL, data, window=300, overlap=64, batch_size=5)
    np.testing.assert_allclose(one, batched, rtol=0, atol=1e-5)


def test_padding_rows_and_length_leaves_the_real_bytes_unchanged():
    rows = [SAMPLE.encode()[:150], SAMPLE.encode()[40:100]]
    plain = row_probs(MODEL, rows)
    padded = row_probs(MODEL, rows, min_rows=4, longest=512)
    assert padded.shape == (plain.shape[0], 4, 512)
    assert np.array_equal(padded[:, :2, : plain.shape[2]], plain)
    assert not padded[:, :, 150:].any() and not padded[:, 1, 60:].any()


def test_window_buckets_are_few_and_hold_the_rows():
    assert [window_bucket(n, 9216) for n in (1, 512, 513, 3000, 8192, 8193, 9216)] == [
        512, 512, 1024, 4096, 8192, 9216, 9216]  # fmt: skip
    assert window_bucket(100, 300) == 300 and window_bucket(700, 600) == 700
    assert len({window_bucket(n, 9216) for n in range(1, 9217)}) == 6


@pytest.mark.slow
def test_compiled_chunker_gives_the_eager_signals_and_chunks():
    import copy

    model = copy.deepcopy(MODEL)  # compiled in place: MODEL stays eager for the other tests
    eager = HNetChunker(MODEL, 40, window=256, context=64, batch_size=2)
    compiled = HNetChunker(model, 40, window=256, context=64, batch_size=2, compile=True)
    assert all(m._compiled_call_impl is not None for m in (model.backbone.encoder, model.backbone.routing_module))
    inner = [b for b in model.backbone.main_network.encoder.modules() if isinstance(b, Block)]
    assert inner and all(b.compiled is not None and b.compiled_inference for b in inner)
    text = SAMPLE * 4  # several windows, the last one short
    data = text.encode()
    np.testing.assert_allclose(compiled.signals(data), eager.signals(data), atol=1e-5)

    def same(a: list[Chunk], b: list[Chunk]) -> bool:  # scores (probabilities) to float32 rounding
        return [c.text for c in a] == [c.text for c in b] and [c.level for c in a] == [c.level for c in b] and \
            np.allclose([c.score for c in a], [c.score for c in b], atol=1e-5)

    assert same(compiled.chunk(text), eager.chunk(text))
    texts = [SAMPLE[:30], SAMPLE, SAMPLE[5:200]]
    assert all(map(same, compiled.chunk_batch(texts), eager.chunk_batch(texts)))


def test_windows_in_worker_threads_give_the_one_thread_results():
    text = SAMPLE * 6
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = HNetChunker(MODEL, 60, window=256, context=64, workers=1)
        expected = (one.signals(text.encode()), one.chunk(text), one.chunk_batch([SAMPLE, SAMPLE[9:], text]))
        torch.set_num_threads(2)
        three = HNetChunker(MODEL, 60, window=256, context=64, workers=3)
        np.testing.assert_array_equal(three.signals(text.encode()), expected[0])
        assert torch.get_num_threads() == 2  # restored after the threaded calls
        assert three.chunk(text) == expected[1]
        assert three.chunk_batch([SAMPLE, SAMPLE[9:], text]) == expected[2]
        assert HNetChunker(MODEL)._workers() == 2  # default on CPU: the torch thread count
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(InvalidArgument, match="workers"):
        HNetChunker(MODEL, workers=0)


def test_malloc_tuning_is_applied_on_cpu_unless_switched_off(monkeypatch):
    import dynamic_chunker.segmentation as segmentation

    calls = []
    monkeypatch.setattr(segmentation, "keep_freed_memory", lambda: calls.append(1))
    HNetChunker(MODEL, tune_malloc=False)
    assert calls == []
    HNetChunker(MODEL)
    assert calls == [1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings (Linux)")
def test_freed_tensors_are_reused_without_page_faults():
    import resource

    assert keep_freed_memory()
    pages = (24 << 20) // 4096  # a 24 MB tensor: above glibc's default mmap threshold, below HEAP_BLOCK_BYTES
    for _ in range(3):
        torch.ones(pages * 1024)  # the heap grows to hold it (faults), then keeps it
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        torch.ones(pages * 1024)  # reused from the heap: no fresh pages to fault in
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < pages // 4, faults


@pytest.mark.parametrize("cutter", ["greedy", "optimal"])
def test_chunk_batch_equals_chunking_one_by_one(cutter):
    chunker = HNetChunker(MODEL, 30, batch_size=3, window=256, context=64, cutter=cutter)
    texts = [SAMPLE, "", "short text", SAMPLE * 5, b"bytes \xff in", "中文" * 30]
    assert chunker.chunk_batch(texts) == [chunker.chunk(t) for t in texts]


@pytest.mark.parametrize("cutter", ["greedy", "optimal"])
def test_streaming_a_file_gives_the_chunks_of_the_whole(tmp_path, monkeypatch, cutter):
    import dynamic_chunker.segmentation as seg

    monkeypatch.setattr(seg, "BLOCK_BYTES", 512)  # many blocks, and chunks that span them
    data = (SAMPLE * 20).encode()
    path = tmp_path / "text.txt"
    path.write_bytes(data)
    chunker = HNetChunker(MODEL, 100, window=256, context=64, cutter=cutter, cut_cost=2.5)
    streamed = list(chunker.iter_chunks(path))
    check_chunks(data, streamed, 100)
    monkeypatch.setattr(seg, "BLOCK_BYTES", 1 << 18)
    assert streamed == chunker.chunk(data)


class SpaceRouter(torch.nn.Module):
    """Stands in for a model: stage 0 fires after spaces. Makes the bounded-memory check fast on many megabytes."""

    class config:  # noqa: N801 - mirrors HNetConfig's attribute
        num_stages = 2

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def boundaries(self, ids, mask=None):
        from dynamic_chunker.chunking import RoutingOutput
        from dynamic_chunker.model import BoundaryOutput

        prob = torch.nn.functional.pad((ids[:, :-1] == 32).float() * 0.8 + 0.1, (1, 0), value=1.0)
        routing = RoutingOutput(prob, prob > 0.5, torch.maximum(prob, 1 - prob), mask)
        return BoundaryOutput([routing], [torch.arange(ids.shape[1]).expand_as(ids)])


def test_streaming_memory_does_not_grow_with_the_file(tmp_path, monkeypatch, one_thread):
    from dynamic_chunker import segmentation as seg

    monkeypatch.setattr(seg, "load_chunking_model", lambda model, device, compile: model)
    monkeypatch.setattr(seg, "BLOCK_BYTES", 1 << 16)
    chunker = HNetChunker(SpaceRouter(), 200)
    peaks = []
    for blocks in (4, 16):
        path = tmp_path / f"{blocks}.txt"
        path.write_bytes((b"lorem ipsum dolor sit amet " * 3000 * blocks)[: blocks << 16])
        tracemalloc.start()
        total = sum(len(c.text) for c in chunker.iter_chunks(path))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert total == blocks << 16
    assert peaks[1] < peaks[0] * 1.25, peaks  # four times the file, about the same peak
    assert peaks[1] < 100 * seg.BLOCK_BYTES  # a few dozen bytes per byte of one block


# ------------------------------------------------------------------------------------------------ the bundled model
def test_bundled_model_chunks_the_samples():
    from importlib.resources import files

    samples = files("dynamic_chunker") / "samples"
    chunker = HNetChunker(chunk_size=200)  # the bundled model
    assert chunker.model.config.num_stages == 3
    for name in ("english.txt", "python.py", "chinese.txt"):
        text = (samples / name).read_text(encoding="utf-8")
        chunks = chunker.chunk(text)
        check_chunks(text, chunks, 200)
    english = (samples / "english.txt").read_text(encoding="utf-8")
    words = chunk_text(english, model=None, level=0)
    starts = [c.start_index for c in words[1:]]
    after_space = np.mean([english[i - 1].isspace() for i in starts])
    assert after_space > 0.6, after_space  # its stage 0 was warm-started on word starts (model card: 0.80 on val)
    assert 3 < len(english) / len(words) < 8  # about a word per unit


def threads_in_a_new_thread() -> int:
    """torch's thread count in a thread started now: the count the process gives new threads."""
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_overlapping_chunking_calls_leave_every_thread_count_as_it_was():
    """Model calls run side by side on one torch thread each; two chunking calls from two threads that overlap (the
    first ends while the second runs: a server chunking in several threads) leave the callers' counts and the count
    that new threads start with as they were."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inside = [threading.Event(), threading.Event()]
        release = [threading.Event(), threading.Event()]
        seen = {0: [], 1: [], "callers": []}

        def caller(i):
            own = torch.get_num_threads()  # the second caller starts during the first call: 1, given by torch

            def call(item):
                seen[i].append(torch.get_num_threads())
                inside[i].set()
                assert release[i].wait(10)
                return item

            assert list(map_calls(call, [1, 2, 3], workers=2)) == [1, 2, 3]
            seen["callers"].append(torch.get_num_threads() == own)

        first, second = (threading.Thread(target=caller, args=(i,)) for i in (0, 1))
        first.start()
        assert inside[0].wait(10)
        second.start()
        assert inside[1].wait(10)
        release[0].set()
        first.join(10)
        release[1].set()
        second.join(10)
        assert seen[0] == seen[1] == [1, 1, 1]
        assert seen["callers"] == [True, True]
        assert torch.get_num_threads() == 2
        assert threads_in_a_new_thread() == 2
    finally:
        torch.set_num_threads(before)
