"""Reference boundary sets (evaluation/targets.py) on constructed texts, multi-byte UTF-8 and Chinese included."""

import re

import pytest
import torch

from dynamic_chunker.evaluation.targets import (
    bpe_starts,
    stage_targets,
    target_bytes,
    train_bpe,
    word_starts,
)


def ids_of(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode("utf-8")))


def byte_offsets(text: str, char_offsets) -> list[int]:
    return sorted(len(text[:i].encode("utf-8")) for i in char_offsets)


def flagged(mask: torch.Tensor) -> list[int]:
    return mask.reshape(-1).nonzero().flatten().tolist()


def test_whitespace_conventions():
    ids = ids_of("ab cd\t\nx")
    assert flagged(target_bytes("after_whitespace", ids)) == [3, 6, 7]
    assert flagged(target_bytes("at_whitespace", ids)) == [2, 5, 6]


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! foo_bar(3) == 4 ...",
        "añb café  naïve—ok «quoted» 3.14",
        "中文分词 很难。Mixed 中英 text,没有空格",
        "emoji 😀😀 x\U0001f600y 𝔘𝔫𝔦",
    ],
)
def test_words_follow_the_regex_definition_on_decoded_text(text):
    # reference: first characters of \w+ runs and of single characters that are neither \w nor whitespace
    expected = byte_offsets(text, [m.start() for m in re.finditer(r"\w+|[^\w\s]", text)])
    assert flagged(word_starts(ids_of(text))) == expected


def test_words_hand_made_and_batched():
    text = "Hi, 中文 ok"  # H i , _ 中(3 bytes) 文(3 bytes) _ o k
    assert flagged(word_starts(ids_of(text))) == [0, 2, 4, 11]  # 中文 is one \w run; continuation bytes never
    batch = torch.stack([ids_of("ab cd"), ids_of("é, xy")[:5]])  # second row: é(2) , space x
    assert word_starts(batch).tolist() == [[True, False, False, True, False], [True, False, True, False, True]]
    # a window cut inside a character: the orphan continuation byte is never a target
    cut = ids_of("中a b")[2:]  # last byte of 中, then "a b"
    assert flagged(word_starts(cut)) == [1, 3]


def test_bpe_token_starts_map_characters_to_bytes():
    texts = ["the cat sat on the mat. 中文分词很难 the cats" for _ in range(20)] + ["thematic cathedral"] * 5
    tokenizer = train_bpe(texts, vocab_size=300)
    text = "the cathedral, 中文分词 mat"
    encoding = tokenizer.encode(text)
    expected = byte_offsets(text, {start for start, _ in encoding.offsets})
    got = bpe_starts(ids_of(text), tokenizer)
    assert flagged(got) == expected
    assert 0 in expected and len(expected) < len(text.encode())  # merges happened
    # pieces carry their trailing whitespace: every position after whitespace starts a token
    assert not (target_bytes("after_whitespace", ids_of(text)) & ~got).any()
    assert not (got & ((ids_of(text) & 0xC0) == 0x80)).any()  # never on a continuation byte
    # an invalid byte (the BOS 254) and a cut character keep the byte offsets right
    raw = torch.cat([torch.tensor([0xA0, 254]), ids_of(text)])
    shifted = bpe_starts(raw, tokenizer)
    assert flagged(shifted)[-len(expected) :] == [i + 2 for i in expected]
    assert torch.equal(target_bytes("bpe", ids_of(text), tokenizer), got)


def test_stage_targets_take_the_byte_each_position_starts_at():
    targets = torch.tensor([[True, False, False, True, False, True]])
    positions = torch.tensor([[0, 2, 3, 5]])  # stage-1 positions = stage-0 chunk starts
    assert stage_targets(targets, positions).tolist() == [[True, False, True, True]]


def test_unknown_target_and_missing_tokenizer_are_errors():
    with pytest.raises(ValueError, match="unknown boundary target 'letters'"):
        target_bytes("letters", ids_of("x"))
    with pytest.raises(ValueError, match="needs a tokenizer"):
        target_bytes("bpe", ids_of("x"))
