"""Cached decoding: prefill + step against full forwards (official fixtures and random configs), batched rows."""

import pytest
import torch

from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.inference import BOS, encode, sample, utf8_pieces
from dynamic_chunker.reference import load_reference

from .conftest import OFFICIAL

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(chunking_stages: int) -> HNetConfig:
    """Small configs with every kind of stack and sliding windows (2-4 keys) much shorter than the test sequences."""
    layouts = {
        1: ["m1t1", ["T1m1"], "m1"],
        2: ["m1", ["t1m1", ["T1"], "m1t1"], "M1"],
        3: ["m1", ["t1", ["m1", ["T1"], "t1"], "m1"], "t1"],
    }
    widths = [32, 48, 48, 64][: chunking_stages + 1]
    n = chunking_stages + 1
    return HNetConfig.from_dict(
        {
            "arch_layout": layouts[chunking_stages],
            "d_model": widths,
            "d_intermediate": [64] * n,
            "ssm_cfg": {"d_state": 8, "d_conv": 4, "expand": 2, "chunk_size": 8, "headdim": 16},
            "attn_cfg": {"num_heads": [2] * n, "rotary_emb_dim": [8] * n, "window_size": [3, 2, 4, -1][:n]},
        }
    )


def random_model(chunking_stages: int, dtype=torch.float64, seed: int = 0, config=None) -> HNetForCausalLM:
    torch.manual_seed(seed)
    model = HNetForCausalLM(config or tiny_config(chunking_stages), dtype=dtype).eval()
    with torch.no_grad():  # random routers (the identity init puts every p near 0.5) and non-zero residual paths
        for name, param in model.named_parameters():
            if "q_proj_layer" in name or "k_proj_layer" in name or "residual_proj.weight" in name:
                param.copy_(torch.randn_like(param) / param.shape[1] ** 0.5)
    return model


def byte_decisions(routing, row: int, length: int) -> torch.Tensor:
    """(length, stages) per-byte boundary decisions of a full forward; -1 where a stage never saw the byte."""
    out = torch.full((length, len(routing)), -1, dtype=torch.long)
    positions = torch.arange(length)  # bytes behind the positions of the current stage
    for s, r in enumerate(routing):
        fired = r.boundary_mask[row, : len(positions)]
        out[positions, s] = fired.long()
        positions = positions[fired]
    return out


def prefill_then_step(model, ids: torch.Tensor, prefill_len: int, lengths=None):
    """Logits (B, L, 256) and decisions (B, L - prefill_len, stages) of a prefill followed by one step per byte.

    ``lengths`` (B,) right-pads the prefill: row b prefills ids[b, :lengths[b]] and then steps ids[b, lengths[b]:].
    Rows are then aligned by step index, so the comparison uses each row's own positions.
    """
    batch, L = ids.shape
    lengths = torch.full((batch,), prefill_len) if lengths is None else lengths
    P = int(lengths.max())
    cache = model.allocate_inference_cache(batch, P + L - int(lengths.min()))
    logits = torch.zeros(batch, L, 256, dtype=model.embeddings.weight.dtype)
    decisions = torch.full((batch, L, model.config.num_stages - 1), -2, dtype=torch.long)
    if P:
        mask = torch.arange(P)[None] < lengths[:, None]
        with torch.no_grad():
            out = model(ids[:, :P].masked_fill(~mask, 0), mask=mask, inference_params=cache)
        for b in range(batch):
            logits[b, : lengths[b]] = out.logits[b, : lengths[b]]
    rows = torch.arange(batch)
    for i in range(L - int(lengths.min())):
        t = (lengths + i).clamp(max=L - 1)  # rows that ran out of bytes repeat their last one (ignored below)
        out = model.step(ids[rows, t], cache)
        live = lengths + i < L
        logits[rows[live], t[live]] = out.logits[live]
        decisions[rows[live], t[live]] = out.boundary_mask[live]
    return logits, decisions


@pytest.mark.parametrize("name", ["tiny_1stage", "tiny_2stage"])
def test_step_matches_official_reference(name):
    model, exp, _ = load_reference(OFFICIAL / name)
    ids = exp["input_ids"][:1]
    P = int(exp["step.prefill_len"])
    logits, decisions = prefill_then_step(model, ids, P)
    assert (logits[0] - exp["step.logits"]).abs().max() < 1e-4
    assert torch.equal(decisions[0, P:], exp["step.boundary_mask"])


@pytest.mark.parametrize("stages", [1, 2, 3])
@pytest.mark.parametrize("prefill_len", [0, 1, 13])
def test_step_matches_forward(stages, prefill_len):
    model = random_model(stages)
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        full = model(ids)
    logits, decisions = prefill_then_step(model, ids, prefill_len)
    assert (logits - full.logits).abs().max() < 1e-10
    for b in range(2):
        expected = byte_decisions(full.routing, b, ids.shape[1])
        assert torch.equal(decisions[b, prefill_len:], expected[prefill_len:])
    inner = decisions[:, prefill_len:, -1]
    assert (inner == 1).any() and (inner != 1).any()  # the innermost network both ran and was skipped


def test_step_matches_forward_float32():
    model = random_model(2, dtype=torch.float32)
    ids = torch.randint(0, 256, (1, 48), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
    logits, decisions = prefill_then_step(model, ids, 5)
    assert (logits - full.logits).abs().max() < 1e-4
    assert torch.equal(decisions[0, 5:], byte_decisions(full.routing, 0, 48)[5:])


@pytest.mark.parametrize("stages", [1, 3])
def test_padded_batch_decodes_like_single_rows(stages):
    """Prompts of lengths 1..23 prefilled together (right padding), then stepped together: every row equals itself
    decoded alone, although rows fire their routers at different steps."""
    model = random_model(stages)
    ids = torch.randint(0, 256, (4, 36), generator=torch.Generator().manual_seed(3))
    lengths = torch.tensor([7, 1, 23, 12])
    logits, decisions = prefill_then_step(model, ids, 0, lengths)
    for b in range(4):
        alone_logits, alone_decisions = prefill_then_step(model, ids[b : b + 1], int(lengths[b]))
        assert (logits[b] - alone_logits[0]).abs().max() < 1e-10
        assert torch.equal(decisions[b, lengths[b] :], alone_decisions[0, lengths[b] :])


def test_cache_dtype_can_differ_from_model():
    model = random_model(2)
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(4))
    cache = model.allocate_inference_cache(1, 20, dtype=torch.float32)
    with torch.no_grad():
        full = model(ids).logits
        model(ids[:, :10], inference_params=cache)
    stepped = torch.stack([model.step(ids[:, t], cache).logits[0] for t in range(10, 20)])
    assert (stepped[:-1] - full[0, 10:-1]).abs().max() < 1e-4


def test_cache_errors():
    model = random_model(1)
    ids = torch.randint(0, 256, (2, 6))
    cache = model.allocate_inference_cache(2, 7)
    with pytest.raises(ValueError, match="allocated for 2"):
        model(ids[:1], inference_params=cache)
    with pytest.raises(ValueError, match="document_ids"):
        model(ids, document_ids=torch.zeros_like(ids), inference_params=cache)
    with pytest.raises(ValueError, match="max_seqlen=7"):
        model(torch.zeros(2, 8, dtype=torch.long), inference_params=cache)
    model(ids, inference_params=cache)
    with pytest.raises(ValueError, match="fresh one"):
        model(ids, inference_params=cache)
    with pytest.raises(ValueError, match="allocated for 2"):
        model.step(ids[:1, 0], cache)
    with pytest.raises(ValueError, match="one byte per row"):
        model.step(ids[:, :2], cache)
    with pytest.raises(ValueError, match="0..255"):
        model.step(torch.tensor([1, 300]), cache)
    model.step(ids[:, 0], cache)
    with pytest.raises(ValueError, match="cache is full"):
        model.step(ids[:, 0], cache)
    with pytest.raises(TypeError, match="allocate_inference_cache"):
        model.step(ids[:, 0], {})
    with pytest.raises(ValueError, match="batch_size"):
        model.allocate_inference_cache(0, 5)


# ---------------------------------------------------------------------------------------------- generation
def naive_greedy(model, prompt: bytes, n: int) -> bytes:
    """Greedy decoding by recomputing the full forward for every new byte."""
    ids = [BOS, *prompt]
    for _ in range(n):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return bytes(ids[len(prompt) + 1 :])


def test_greedy_generation_matches_full_recompute():
    model = random_model(2, dtype=torch.float32)
    (out,) = model.generate(b"Hello", max_new_bytes=20, greedy=True, stop_bytes=())
    assert out == naive_greedy(model, b"Hello", 20)


def test_batched_generation_equals_single_prompts():
    model = random_model(3, dtype=torch.float32)
    prompts = ["", "a", "The quick brown fox", "x = 1\n"]  # BOS makes "" a one-byte prompt
    batched = model.generate(prompts, max_new_bytes=24, greedy=True, stop_bytes=())
    assert [len(b) for b in batched] == [24] * 4
    assert batched == [model.generate(p, max_new_bytes=24, greedy=True, stop_bytes=())[0] for p in prompts]


def test_stop_bytes_end_each_row_without_the_stop_byte():
    model = random_model(1, dtype=torch.float32)
    free = model.generate(["ab", "cde"], max_new_bytes=12, greedy=True, stop_bytes=())
    stop = free[0][5]
    stopped = model.generate(["ab", "cde"], max_new_bytes=12, greedy=True, stop_bytes=[stop])
    assert stopped == [row.split(bytes([stop]))[0] for row in free]


def test_sampling_options():
    model = random_model(2, dtype=torch.float32)
    greedy = model.generate("hi", max_new_bytes=10, greedy=True, stop_bytes=())
    for options in ({"top_k": 1}, {"top_p": 1e-6}, {"temperature": 0.0}):
        assert model.generate("hi", max_new_bytes=10, seed=0, stop_bytes=(), **options) == greedy
    first = model.generate("hi", max_new_bytes=32, seed=1, stop_bytes=())
    assert model.generate("hi", max_new_bytes=32, seed=1, stop_bytes=()) == first
    assert model.generate("hi", max_new_bytes=32, seed=2, stop_bytes=()) != first
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).log_softmax(-1).repeat(2000, 1)
    drawn = sample(logits, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {2, 3}
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(2000, 1)  # nucleus 0.7 = {0, 1}
    assert set(sample(probs, top_p=0.7, generator=torch.Generator().manual_seed(0)).tolist()) == {0, 1}


def test_stream_yields_whole_characters():
    data = "héllo wörld 日本 🙂".encode() + b"\xff!"
    pieces = list(utf8_pieces(iter(data)))
    assert "".join(pieces) == data.decode("utf-8", errors="replace")  # a split character would add U+FFFD
    assert "日" in pieces and "🙂" in pieces  # multi-byte characters arrive whole


def test_stream_equals_generate():
    model = random_model(2, dtype=torch.float32)
    (full,) = model.generate("€", max_new_bytes=40, seed=5, stop_bytes=())
    assert "".join(model.generate_stream("€", max_new_bytes=40, seed=5, stop_bytes=())) == full.decode(
        "utf-8", errors="replace"
    )


def test_generation_errors():
    model = random_model(1, dtype=torch.float32)
    assert encode("ab") == [BOS, 97, 98] and encode(b"\x00") == [BOS, 0]
    with pytest.raises(ValueError, match="temperature"):
        model.generate("a", temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        model.generate("a", top_p=0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate("a", top_k=0)
    with pytest.raises(ValueError, match="stop_bytes"):
        model.generate("a", stop_bytes=[256])
    with pytest.raises(TypeError, match="str or bytes"):
        model.generate([1, 2])
    with pytest.raises(TypeError, match="one prompt"):
        list(model.generate_stream(["a", "b"]))
    assert model.generate(["a", "b"], max_new_bytes=0) == [b"", b""]



def global_attention_model(chunking_stages: int) -> HNetForCausalLM:
    """random_model's config with global attention everywhere: its KV buffers are as long as the cache."""
    data = tiny_config(chunking_stages).to_dict()
    data["attn_cfg"]["window_size"] = [-1] * (chunking_stages + 1)
    return random_model(chunking_stages, torch.float32, config=HNetConfig.from_dict(data))


def recording_allocations(model, monkeypatch) -> list:
    """Patch ``model.allocate_inference_cache`` to record every cache it returns."""
    caches = []
    allocate = model.allocate_inference_cache
    def record(*args, **kwargs):
        caches.append(allocate(*args, **kwargs))
        return caches[-1]

    monkeypatch.setattr(model, "allocate_inference_cache", record)
    return caches


@pytest.mark.parametrize("chunking_stages", [1, 2])
@pytest.mark.parametrize("attention", ["global", "sliding"])
def test_cache_grows_with_the_output_and_decodes_identically(chunking_stages, attention, monkeypatch):
    import dynamic_chunker.inference as inference

    model = global_attention_model(chunking_stages) if attention == "global" else random_model(chunking_stages)
    model.float()
    prompts = ["Hello", "A much longer prompt here"]
    whole = model.generate(prompts, max_new_bytes=40, greedy=True, stop_bytes=())
    caches = recording_allocations(model, monkeypatch)
    monkeypatch.setattr(inference, "CACHE_STEP", 3)
    grown = model.generate(prompts, max_new_bytes=40, greedy=True, stop_bytes=())
    assert grown == whole
    width = len("A much longer prompt here") + 1
    sizes = [c.max_seqlen for c in caches]
    assert sizes[0] == width + 3 and sizes[-1] == width + 40 and len(sizes) >= 3  # doubled until all 40 fit


def test_memory_does_not_follow_max_new_bytes(monkeypatch):
    model = global_attention_model(1)
    caches = recording_allocations(model, monkeypatch)
    pieces = model.generate_stream("Hi", max_new_bytes=10**12, stop_bytes=(), seed=0)
    assert len([next(pieces) for _ in range(5)]) == 5
    (cache,) = caches
    keys = [t for t in _tensors(cache.stages) if t.dim() == 4]  # KV buffers (B, S, heads, head_dim)
    assert cache.max_seqlen == max(k.shape[1] for k in keys) == 3 + 1024  # BOS + prompt + CACHE_STEP, not 10**12


def _tensors(value):
    import dataclasses

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _tensors(v)
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _tensors(getattr(value, f.name))


def test_batched_sampling_is_reproducible_and_greedy_batches_equal_single_prompts():
    """What the README promises: a seeded batch repeats itself; only greedy decoding matches prompts run alone."""
    model = random_model(1, dtype=torch.float32)
    prompts = ["Hello", "A longer prompt"]
    sampled = model.generate(prompts, max_new_bytes=24, seed=3, stop_bytes=())
    assert model.generate(prompts, max_new_bytes=24, seed=3, stop_bytes=()) == sampled
    greedy = model.generate(prompts, max_new_bytes=24, greedy=True, stop_bytes=())
    assert greedy == [model.generate(p, max_new_bytes=24, greedy=True, stop_bytes=())[0] for p in prompts]
