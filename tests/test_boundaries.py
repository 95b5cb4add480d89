"""model.boundaries: the routing of the full forward, computed from the encoders and routers alone."""

import pytest
import torch

from dynamic_chunker import HNetConfig, HNetForCausalLM

from .conftest import OFFICIAL
from .test_model import random_bytes, tiny_model


def official_tiny_2stage() -> HNetForCausalLM:
    model = HNetForCausalLM(HNetConfig.from_json(OFFICIAL / "tiny_2stage" / "config.json"))
    model.load_state_dict(torch.load(OFFICIAL / "tiny_2stage" / "model.pt", weights_only=True))
    return model.eval()


def packed_ids(length: int, seed: int) -> torch.Tensor:
    """(2, length) document ids with a few documents per row, some of length 1."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.rand(2, length, generator=gen) < 0.1
    starts[:, 1] = True
    return starts.long().cumsum(dim=1)


def assert_routing_equal(fast, full):
    assert len(fast.routing) == len(full.routing)
    for s, (a, b) in enumerate(zip(fast.routing, full.routing)):
        assert (a.mask is None) == (b.mask is None), f"stage {s} masks differ"
        if a.mask is not None:
            assert torch.equal(a.mask, b.mask)
        assert torch.equal(a.boundary_mask, b.boundary_mask), f"stage {s} boundaries differ"
        torch.testing.assert_close(a.boundary_prob, b.boundary_prob, rtol=0, atol=1e-6)
        torch.testing.assert_close(a.selected_probs, b.selected_probs, rtol=0, atol=1e-6)


def assert_positions_follow_boundaries(out, length: int):
    """positions[0] is 0..L-1 and positions[s + 1] holds, in order, the bytes where stage s chunks start."""
    batch = out.positions[0].shape[0]
    assert torch.equal(out.positions[0], torch.arange(length).expand(batch, length))
    for s in range(len(out.routing)):
        starts = out.chunk_starts(s)
        assert starts.shape == (batch, length)
        for row in range(batch):
            valid = out.routing[s].mask[row] if out.routing[s].mask is not None else slice(None)
            expected = out.positions[s][row][valid][out.routing[s].boundary_mask[row][valid]]
            assert torch.equal(starts[row].nonzero().flatten(), expected)
            if s + 1 < len(out.routing):
                count = len(expected)
                assert torch.equal(out.positions[s + 1][row, :count], expected)
                inner_mask = out.routing[s + 1].mask
                assert inner_mask is not None and int(inner_mask[row].sum()) == count


@pytest.mark.parametrize("source", ["official", "random3"])
def test_boundaries_equal_full_forward_routing(source):
    model = official_tiny_2stage() if source == "official" else tiny_model(3, seed=4)
    ids = random_bytes(150, seed=1, batch=2)
    full = model(ids)
    fast = model.boundaries(ids)
    assert_routing_equal(fast, full)
    assert_positions_follow_boundaries(fast, 150)
    assert not fast.routing[0].boundary_prob.requires_grad


def test_boundaries_padded_batch_equal_full_forward():
    model = tiny_model(3, seed=5)
    ids = random_bytes(90, seed=2, batch=3)
    mask = torch.arange(90)[None] < torch.tensor([[90], [41], [1]])
    full = model(ids, mask=mask)
    fast = model.boundaries(ids, mask=mask)
    assert_routing_equal(fast, full)
    assert_positions_follow_boundaries(fast, 90)
    assert not fast.chunk_starts(0)[1, 41:].any() and not fast.chunk_starts(1)[2, 1:].any()


@pytest.mark.parametrize("source", ["official", "random3"])
def test_boundaries_packed_documents_equal_full_forward(source):
    model = official_tiny_2stage() if source == "official" else tiny_model(3, seed=6)
    ids = random_bytes(120, seed=3, batch=2)
    docs = packed_ids(120, seed=3)
    full = model(ids, document_ids=docs)
    fast = model.boundaries(ids, document_ids=docs)
    assert_routing_equal(fast, full)
    assert_positions_follow_boundaries(fast, 120)
    doc_starts = torch.nn.functional.pad(docs[:, 1:] != docs[:, :-1], (1, 0), value=True)
    assert torch.equal(fast.chunk_starts(0) & doc_starts, doc_starts)  # every document starts a chunk


def test_boundaries_run_no_decoder_innermost_network_or_head():
    model = tiny_model(3, seed=7)
    called = []
    skipped = [model.lm_head, model.backbone.decoder, model.backbone.residual_proj]
    stage = model.backbone
    while not stage.is_innermost:
        skipped += [stage.decoder, stage.residual_proj]
        stage = stage.main_network
    skipped.append(stage.main_network)
    hooks = [m.register_forward_hook(lambda *_: called.append(1)) for m in skipped]
    model.boundaries(random_bytes(40, seed=4))
    for hook in hooks:
        hook.remove()
    assert not called


def test_boundaries_bad_input_is_a_clear_error():
    model = tiny_model(2)
    with pytest.raises(ValueError, match="byte values"):
        model.boundaries(torch.tensor([[0, 300]]))
    with pytest.raises(ValueError, match="right-padded"):
        model.boundaries(torch.zeros(1, 3, dtype=torch.long), mask=torch.tensor([[True, False, True]]))


# ---------------------------------------------------------------- evaluation: find, score and mark boundaries
def test_find_boundaries_windows_equal_one_call_per_window():
    from dynamic_chunker.evaluation.boundaries import find_boundaries

    model = official_tiny_2stage()
    data = bytes(random_bytes(300, seed=3)[0].tolist())
    starts = find_boundaries(model, data, window=128, batch_size=2)  # two full windows batched, a 44-byte tail
    assert len(starts) == 2 and all(s.shape == (300,) and s.dtype == torch.bool for s in starts)
    for first in (0, 128, 256):
        piece = torch.tensor(list(data[first : first + 128])).unsqueeze(0)
        alone = model.boundaries(piece)
        for stage in range(2):
            assert torch.equal(starts[stage][first : first + 128], alone.chunk_starts(stage)[0])
    assert starts[1].sum() <= starts[0].sum()  # stage-1 chunks start at stage-0 chunk starts
    assert not (starts[1] & ~starts[0]).any()


def test_scores_against_word_starts_by_hand():
    from dynamic_chunker.evaluation.boundaries import forced_starts, score_boundaries

    data = b"ab cd  ef\ng"
    #        0123456789 10: after whitespace = {3, 6, 7, 10}; at whitespace = {2, 5, 6, 9}; word starts = {0, 3, 7, 10}
    starts = torch.zeros(len(data), dtype=torch.bool)
    starts[[0, 3, 5, 7]] = True
    scores = {s.reference: s for s in score_boundaries(data, starts, exclude=forced_starts(len(data), window=64))}
    after, at, word = scores["after_whitespace"], scores["at_whitespace"], scores["words"]
    assert (after.precision, after.recall, after.base_rate) == (2 / 3, 2 / 4, 4 / 10)
    assert (at.precision, at.recall) == (1 / 3, 1 / 4)
    assert (word.precision, word.recall) == (2 / 3, 2 / 3)
    # an inner stage chooses among the outer stage's chunk starts: recall and base rate count only those
    outer = torch.zeros(len(data), dtype=torch.bool)
    outer[[0, 2, 3, 5, 7, 8]] = True
    inner = {s.reference: s for s in score_boundaries(data, starts, forced_starts(len(data), 64), candidates=outer)}
    assert (inner["after_whitespace"].precision, inner["after_whitespace"].recall) == (2 / 3, 2 / 2)
    assert inner["after_whitespace"].base_rate == 2 / 5
    with pytest.raises(ValueError, match="one flag per byte"):
        score_boundaries(data, starts[:-1])


def test_marked_text_keeps_characters_whole():
    from dynamic_chunker.evaluation.boundaries import mark_boundaries

    data = "añb 中文".encode()
    starts = torch.zeros(len(data), dtype=torch.bool)
    starts[[0, 2, 4, 9]] = True  # 2: inside ñ, 4: the space, 9: inside 文 -> marks before ñ, the space and 文
    assert mark_boundaries(data, starts) == "a|ñb| 中|文"
    assert mark_boundaries(data, starts, marker="/") == "a/ñb/ 中/文"


def test_hnet_boundaries_command(tmp_path, capsys):
    from dynamic_chunker.cli import main

    model = official_tiny_2stage()
    model.save_pretrained(tmp_path / "model")
    text = tmp_path / "text.txt"
    text.write_text("The kernel schedules tasks. " * 20, encoding="utf-8")
    assert main(["boundaries", "--model", str(tmp_path / "model"), "--file", str(text), "--window", "100"]) == 0
    out = capsys.readouterr().out
    assert "stage 0:" in out and "stage 1:" in out and "| after_whitespace |" in out and "The" in out
    assert main(["boundaries", "--model", str(tmp_path / "model"), "--text", ""]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["boundaries", "--model", str(tmp_path / "model")]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert main(["boundaries", "--model", str(tmp_path / "model"), "--text", "x", "--max-bytes", "-1"]) == 2
    assert "--max-bytes must be at least 1" in capsys.readouterr().err
