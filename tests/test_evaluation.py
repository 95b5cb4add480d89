"""Evaluation metrics with known answers: bits per byte, continuation log-likelihoods, compression, task scoring,
perturbations, robustness score, boundary F1 and reports."""

import json
import math
import random
import re

import pytest
import torch

from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.data.corpus import CorpusSplit
from dynamic_chunker.evaluation import ByteLM, TokenLM, bits_per_byte, compression, continuation_logliks
from dynamic_chunker.evaluation.boundaries import BoundaryScore
from dynamic_chunker.evaluation.loglik import Loglik
from dynamic_chunker.evaluation.perturb import PERTURBATIONS, perturb
from dynamic_chunker.evaluation.report import load_average, write_report
from dynamic_chunker.evaluation.robustness import above_chance, perturbed_task, robustness_score
from dynamic_chunker.evaluation.tasks import TASKS, Item, Task, load_task, score

ONE_STAGE = {
    "arch_layout": ["m1", ["T1"], "m1"],
    "d_model": [32, 48],
    "d_intermediate": [0, 64],
    "ssm_cfg": {"d_state": 8, "chunk_size": 16, "d_conv": 4, "expand": 2, "headdim": 16},
    "attn_cfg": {"num_heads": [2, 2], "rotary_emb_dim": [8, 8], "window_size": [-1, -1]},
}
ISOTROPIC = {  # the same model code with one stage: LlamaByte-like, or a token model with another vocab_size
    **ONE_STAGE,
    "arch_layout": ["m1T1"],
    "d_model": [32],
    "d_intermediate": [64],
    "attn_cfg": {"num_heads": [2], "rotary_emb_dim": [8], "window_size": [-1]},
}
TEXT = "The model reads bytes. It learns where words start, and chunks them.\nA second line of text."


def model(config=ONE_STAGE, seed=0, **changes) -> HNetForCausalLM:
    torch.manual_seed(seed)
    return HNetForCausalLM(HNetConfig.from_dict({**config, **changes}), dtype=torch.float64).eval()


def uniform(m: HNetForCausalLM) -> HNetForCausalLM:
    with torch.no_grad():
        m.lm_head.weight.zero_()  # logits 0: every id equally likely
    return m


def byte_tokenizer():
    """A byte-level BPE without merges: id 0 is <bos>, ids 1..256 are the 256 bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=257, special_tokens=["<bos>"], initial_alphabet=alphabet)
    tokenizer.train_from_iterator([TEXT], trainer=trainer)
    return tokenizer


def byte_level_chars() -> list[str]:
    """The character byte-level BPE spells each byte with (GPT-2's table): printable Latin-1 bytes as themselves,
    the others as chr(256 + n) in byte order."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(others)) for b in range(256)]


# ----------------------------------------------------------------------------------------------- bits per byte


def test_uniform_byte_model_has_8_bits_per_byte():
    lm = ByteLM(uniform(model()))
    result = bits_per_byte(lm, [TEXT, "second document"], window=16, batch_size=3)
    assert result.bpb == pytest.approx(8.0, abs=1e-12)
    assert result.bytes == len(TEXT.encode()) + len("second document")  # every byte after each BOS, once


def test_bpb_is_the_mean_next_byte_nll_of_one_forward():
    m = model()
    ids = torch.tensor([[254, *TEXT.encode()]])
    logp = torch.log_softmax(m(ids[:, :-1]).logits, -1).gather(2, ids[:, 1:, None])
    expected = -logp.mean().item() / math.log(2)
    assert bits_per_byte(ByteLM(m), TEXT, window=len(TEXT) + 5).bpb == pytest.approx(expected, rel=1e-10)


def test_bpb_windows_restart_state_at_document_starts():
    """Two documents packed in one window score as the two documents alone (per-document resets)."""
    m = ByteLM(model())
    a, b = "first document here", "and the second one"
    together = bits_per_byte(m, [a, b], window=200)
    alone = [bits_per_byte(m, t, window=200) for t in (a, b)]
    total_bits = sum(r.bpb * r.bytes for r in alone)
    assert together.bpb == pytest.approx(total_bits / together.bytes, rel=1e-10)


def test_bpb_of_a_corpus_split_uses_its_bos_bytes():
    m = ByteLM(model())
    data = torch.tensor([254, *b"abc def", 254, *b"ghi"], dtype=torch.uint8).numpy()
    split = CorpusSplit("val", data, torch.tensor([0, 8]).numpy())
    assert bits_per_byte(m, split, window=8).bpb == pytest.approx(bits_per_byte(m, ["abc def", "ghi"], 8).bpb)


def test_token_model_bpb_equals_the_byte_level_computation():
    """A BPE without merges reads exactly the bytes. Give the token model the byte model's weights (embedding and
    head rows moved to the byte tokens' ids, <bos> a copy of byte 254's), so its softmax is the byte model's with
    the BOS entry counted twice: log p_tok(byte) = log p(byte) - log(1 + p(254)) at each position. Its BPB must be
    that, summed over the text's bytes from one byte-model forward, divided by the byte count."""
    tokenizer = byte_tokenizer()
    id_of = torch.tensor([tokenizer.token_to_id(c) for c in byte_level_chars()])
    assert sorted(id_of.tolist()) == list(range(1, 257))
    byte_model, token_model = model(ISOTROPIC), model(ISOTROPIC, vocab_size=257)
    rows = torch.empty(257, dtype=torch.long)
    rows[id_of], rows[0] = torch.arange(256), 254  # token id -> byte-model row
    state = byte_model.state_dict()
    state["embeddings.weight"] = state["embeddings.weight"][rows]
    state["lm_head.weight"] = state["lm_head.weight"][rows]
    token_model.load_state_dict(state)
    text = "Bytes and tokens: caf\u00e9 \u4e2d\u6587, the same text."
    lm = TokenLM(token_model, tokenizer)
    data = text.encode()
    assert lm.encode(text) == id_of[list(data)].tolist()
    ids = torch.tensor([[254, *data]])
    logp = torch.log_softmax(byte_model(ids[:, :-1]).logits[0], -1)
    nats = -logp.gather(1, ids[0, 1:, None]).sum() + torch.log1p(logp[:, 254].exp()).sum()
    expected = nats.item() / math.log(2) / len(data)
    result = bits_per_byte(lm, text, window=128)  # one window, as the forward above
    assert result.bytes == len(data) and result.tokens == len(data)
    assert result.bpb == pytest.approx(expected, rel=1e-10)
    assert result.bpb != pytest.approx(bits_per_byte(ByteLM(byte_model), text, window=128).bpb, rel=1e-6)


def test_uniform_token_model_bpb_is_tokens_times_log2_vocab_over_bytes():
    from dynamic_chunker.data.tokens import documents, train_bpe

    data = torch.tensor([254, *(TEXT * 3).encode()], dtype=torch.uint8).numpy()
    tokenizer = train_bpe(documents(CorpusSplit("train", data, torch.tensor([0]).numpy())), vocab_size=300)
    lm = TokenLM(uniform(model(ISOTROPIC, vocab_size=300)), tokenizer)
    result = bits_per_byte(lm, TEXT, window=32)
    tokens = len(lm.encode(TEXT))
    assert tokens < len(TEXT)  # merges happened
    assert result.tokens == tokens and result.bytes == len(TEXT.encode())
    assert result.bpb == pytest.approx(tokens * math.log2(300) / len(TEXT.encode()), rel=1e-12)


# ------------------------------------------------------------------------------------------- log-likelihoods


def test_continuation_logliks_equal_one_forward_per_request():
    m = model()
    requests = [("The cat", " sat"), ("A", " longer continuation here"), ("Some context that is longer", "!")]
    got = continuation_logliks(ByteLM(m), requests, batch_size=2)
    for (context, continuation), result in zip(requests, got):
        ids = torch.tensor([[254, *context.encode(), *continuation.encode()]])
        logp = torch.log_softmax(m(ids[:, :-1]).logits, -1)[0]
        n = len(continuation.encode())
        picked = logp[-n:].gather(1, ids[0, -n:, None])
        assert result.logprob == pytest.approx(picked.sum().item(), rel=1e-9)
        assert result.greedy == bool((logp[-n:].argmax(-1) == ids[0, -n:]).all())
        assert result.ids == n


def test_continuation_logliks_keep_the_continuation_when_truncating():
    m = model()
    cut = continuation_logliks(ByteLM(m), [("x" * 50 + "abc", "de")], max_length=4)[0]
    ids = torch.tensor([list(b"abcde")])  # the last 4 inputs (BOS and the x's dropped) and their targets
    logp = torch.log_softmax(m(ids[:, :-1]).logits, -1)[0, -2:].gather(1, ids[0, -2:, None])
    assert cut.ids == 2 and cut.logprob == pytest.approx(logp.sum().item(), rel=1e-9)


def test_compression_counts_chunks_per_stage():
    m = model(boundary_rule=["pool:4"])
    rows = compression(m, b"x" * 40, window=20)
    assert rows == [{"stage": 0, "chunks": 10, "bytes_per_chunk": 4.0, "positions_per_chunk": 4.0}]
    assert compression(model(ISOTROPIC), b"abc") == []


# -------------------------------------------------------------------------------------------------- tasks


def test_acc_and_acc_norm_on_a_toy_task_with_known_logliks():
    task = Task(
        "toy",
        [
            Item(["q"] * 2, [" a", " bbbbbbb"], gold=1),  # raw: -2 > -4 picks 0; per char: -1 < -0.5 picks 1
            Item(["q"] * 2, [" a", " bbbbbbbbb"], gold=0),  # raw: -1.5 > -4 picks 0; per char: -0.75 < -0.4 picks 1
            Item(["q"] * 3, [" x", " y", " z"], gold=2),  # same lengths: both pick 2
            Item(["q"] * 2, [" a", " bbbbbbbbb"], gold=0),  # as the second
        ],
    )
    lls = [-2.0, -4.0, -1.5, -4.0, -5.0, -4.0, -1.0, -1.5, -4.0]
    result = score(task, [Loglik(v, False, 1) for v in lls])
    assert result == {"acc": 3 / 4, "acc_norm": 2 / 4, "items": 4}
    greedy = Task("g", [Item(["c"], [" w"]), Item(["c"], [" v"])], greedy=True, metrics=("acc",))
    assert score(greedy, [Loglik(-1.0, True, 1), Loglik(-0.1, False, 1)]) == {"acc": 0.5, "items": 2}


def test_acc_norm_divides_by_the_characters_of_the_choice_without_the_delimiter():
    """The harness: completion_len = len(choice) for the choice strings, while the request's continuation is
    target_delimiter + choice. " a" -1.0 vs " bb" -1.9: -1.0 / 1 < -1.9 / 2 picks " bb" (dividing by the
    continuations' 2 and 3 characters would pick " a"); " é" is one character (two UTF-8 bytes)."""
    task = Task("toy", [Item(["q"] * 2, [" a", " bb"], gold=1), Item(["q"] * 2, [" é", " bb"], gold=1)])
    result = score(task, [Loglik(v, False, 1) for v in (-1.0, -1.9, -1.0, -1.9)])
    assert result["acc_norm"] == 1.0 and result["acc"] == 0.0
    assert Task("t", [], delimiter="\n").choice("\nx y") == "x y"


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_loads_with_valid_items(name):
    task = load_task(name)
    assert task.items and all(0 <= item.gold < len(item.continuations) for item in task.items)
    assert all(len(item.contexts) == len(item.continuations) and all(item.continuations) for item in task.items)
    assert len(load_task(name, limit=3).items) == min(3, len(task.items))


def test_task_formats_follow_the_harness():
    assert load_task("arc_easy", 1).items[0].contexts[0].endswith("\nAnswer:")
    assert load_task("piqa", 1).items[0].contexts[0].startswith("Question: ")
    hella = load_task("hellaswag", 1).items[0]
    assert hella.contexts[0] == "Roof shingle removal: A man is sitting on a roof. he"
    assert hella.continuations[3] == " starts pulling up roofing on a roof."
    wino = load_task("xwinograd_en", 1).items[0]
    assert wino.contexts == ["The city councilmen refused the demonstrators a permit because The city councilmen",
                             "The city councilmen refused the demonstrators a permit because the demonstrators"]
    assert wino.continuations[0] == " feared violence." and wino.gold == 0
    zh = load_task("xwinograd_zh", 1).items[0]  # the harness adds its delimiter in every language
    assert zh.continuations == [" 担心暴力事件。"] * 2
    assert zh.contexts[0] == "市政府拒绝给示威者颁发游行许可证，因市政府"
    grande = load_task("winogrande", 1).items[0]
    assert grande.contexts[1] == "Sarah was a much better surgeon than Maria so Maria"
    assert grande.continuations == [" always got the easier cases."] * 2 and grande.gold == 1
    assert load_task("lambada", 1).items[0].continuations == [" signs"]


def test_partial_scoring_ranks_contexts_by_the_shared_continuation():
    m = ByteLM(model())
    task = load_task("winogrande", 2)
    requests = [r for item in task.items for r in item.requests()]
    lls = continuation_logliks(m, requests)
    expected = [max(range(2), key=lambda k: lls[2 * i + k].logprob) == it.gold for i, it in enumerate(task.items)]
    assert score(task, lls)["acc"] == sum(expected) / 2


class MemorisingLM(ByteLM):
    """A hand-made byte model with known log-likelihoods: next-byte logits 10 * ln(1 + count) of each byte seen after
    the same ``order`` previous ids in ``texts`` (0 for unseen bytes); ``texts=[]`` makes it uniform."""

    device = torch.device("cpu")

    def __init__(self, texts: list[str], order: int = 6):
        from collections import Counter, defaultdict

        from dynamic_chunker.evaluation.lm import token_byte_table

        self.order, self.token_bytes = order, token_byte_table(256)
        self.seen = defaultdict(Counter)
        for text in texts:
            ids = [self.bos, *text.encode()]
            for i in range(1, len(ids)):
                self.seen[tuple(ids[max(0, i - order) : i])][ids[i]] += 1

    def logits(self, ids, mask=None, document_ids=None):
        out = torch.zeros(*ids.shape, 256, dtype=torch.float64)
        for b, row in enumerate(ids.tolist()):
            for t in range(len(row)):
                for following, count in self.seen.get(tuple(row[max(0, t + 1 - self.order) : t + 1]), {}).items():
                    out[b, t, following] = 10 * math.log(1 + count)
        return out


def salad(seed: int, documents: int = 12, words: int = 120) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 8))) for _ in range(300)]
    return [" ".join(rng.choice(vocabulary) for _ in range(words)) + "." for _ in range(documents)]


def test_continuation_task_is_built_from_the_corpus_and_seeded():
    from dynamic_chunker.evaluation.tasks.continuation import continuation_task

    texts = salad(0)
    task = continuation_task(texts, items=30, context=50, length=20, seed=1)
    assert task == continuation_task(texts, items=30, context=50, length=20, seed=1)
    assert task != continuation_task(texts, items=30, context=50, length=20, seed=2)
    assert {item.gold for item in task.items} == {0, 1, 2, 3}
    for item in task.items:
        true = item.continuations[item.gold]
        assert any(item.contexts[0] + true in t for t in texts) and len(item.contexts[0]) == 50
        assert all(len(c) == 20 and any(c in t for t in texts) for c in item.continuations)
        assert not any(item.contexts[0] + c in t for c in item.continuations if c != true for t in texts)
    with pytest.raises(ValueError, match="at least 2 documents"):
        continuation_task(["short", "x" * 500], context=50, length=20)


def test_the_pipeline_scores_a_model_that_knows_the_text_far_above_chance():
    """Sanity check of loglik + scoring: a model that has memorised the corpus picks the true continuation; a uniform
    one ties everywhere, so it picks choice 0 and scores the share of items whose gold is 0 (chance)."""
    from dynamic_chunker.evaluation.tasks import evaluate
    from dynamic_chunker.evaluation.tasks.continuation import continuation_task

    texts = salad(3)
    task = continuation_task(texts, items=40, context=40, length=16, seed=0)
    knows = evaluate(MemorisingLM(texts), task)
    assert knows["acc"] >= 0.95 and knows["acc_norm"] == knows["acc"]
    uniform = evaluate(MemorisingLM([]), task)
    assert uniform["acc"] == sum(item.gold == 0 for item in task.items) / len(task.items) < 0.5


# -------------------------------------------------------------------------------------------- robustness


def test_perturbations_on_a_fixed_seed():
    text = "Hello world, this is a Test."
    assert perturb("uppercase", text, 0) == "HELLO WORLD, THIS IS A TEST."
    assert perturb("antspeak", "Hi you", 0) == "H I   Y O U"
    dropped = perturb("drop", text, 1)
    rng = random.Random(1)
    assert dropped == "".join(c for c in text if rng.random() >= 0.1)
    assert len(dropped) < len(text) and perturb("drop", text, 1) == dropped
    cased = perturb("random_case", text, 3)
    assert cased.lower() == text.lower() and cased != text and cased == perturb("random_case", text, 3)
    repeated = perturb("repeat", text, 2)
    assert len(repeated) > len(text) and "".join(dict.fromkeys(repeated)) == "".join(dict.fromkeys(text))
    assert perturb("repeat", "ab" * 200, 5) != perturb("repeat", "ab" * 200, 6)
    rng = random.Random(4)  # each character: with p 0.2, 2 to 4 copies in all
    assert perturb("repeat", text, 4) == "".join(c * rng.randint(2, 4) if rng.random() < 0.2 else c for c in text)
    rng = random.Random(5)
    assert perturb("random_case", text, 5) == "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)


def test_perturbation_rates_match_the_blt_definitions():
    text = "abcdefghij" * 2000
    assert abs(1 - len(perturb("drop", text, 0)) / len(text) - 0.1) < 0.01  # 10% of the characters dropped
    assert abs(sum(c.isupper() for c in perturb("random_case", text, 0)) / len(text) - 0.5) < 0.02
    runs = [len(m.group()) for m in re.finditer(r"(.)\1*", perturb("repeat", text, 0))]  # text: no doubled letters
    assert set(runs) == {1, 2, 3, 4} and abs(sum(r > 1 for r in runs) / len(text) - 0.2) < 0.015
    assert perturb("antspeak", "ab c", 0) == "A B   C" and perturb("uppercase", "straße", 0) == "STRASSE"
    assert set(PERTURBATIONS) == {"antspeak", "drop", "random_case", "repeat", "uppercase"}
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb("shout", text, 0)


def test_perturbed_task_is_seeded_per_item_and_keeps_golds():
    task = load_task("hellaswag", 3)
    noisy = perturbed_task(task, "drop", seed=7)
    assert [i.gold for i in noisy.items] == [i.gold for i in task.items]
    assert noisy.items[1].contexts == perturbed_task(load_task("hellaswag", 2), "drop", seed=7).items[1].contexts
    assert perturbed_task(task, "antspeak").items[0].continuations[0].startswith(" I S ")
    for name in PERTURBATIONS:  # the choices are noised, the delimiter in front of them is kept as it is
        for item in perturbed_task(task, name, seed=3).items:
            assert all(c.startswith(" ") and not c.startswith("  ") for c in item.continuations), (name, item)


def test_robustness_score():
    assert robustness_score(0.5, 0.75) == 50.0
    assert robustness_score(0.25, 0.6) == 0.0 and robustness_score(0.6, 0.6) == 100.0
    assert robustness_score(0.3, 0.25) is None and robustness_score(0.2, 0.24) is None
    # 200 items: two standard errors of chance are 0.061, so a clean 0.30 is noise and 0.32 is not
    assert robustness_score(0.2, 0.30, items=200) is None
    assert robustness_score(0.285, 0.32, items=200) == pytest.approx(50.0)
    assert above_chance(0.32, 200) and not above_chance(0.30, 200) and not above_chance(0.9, 0)


def test_boundary_f1_on_a_constructed_example():
    # 4 boundaries, 3 on reference positions; 6 reference positions: P = 3/4, R = 1/2, F1 = 2PR/(P+R) = 0.6
    assert BoundaryScore("after whitespace", 0.75, 0.5, 0.2).f1 == pytest.approx(0.6)
    assert BoundaryScore("x", 0.0, 0.0, 0.1).f1 == 0.0



def test_load_average_is_the_three_numbers_of_the_os(monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (1.234, 0.5, 12.0))
    assert load_average() == "1.23 0.50 12.00"

def test_report_writes_json_and_markdown(tmp_path):
    path = write_report(tmp_path, "tasks", "Zero-shot", {"tasks": {"piqa": {"acc": 0.5, "items": 2}}}, {"model": "m"})
    assert json.loads((tmp_path / "tasks.json").read_text())["results"]["tasks"]["piqa"]["acc"] == 0.5
    assert "| piqa | 0.5000 | 2 |" in path.read_text()
