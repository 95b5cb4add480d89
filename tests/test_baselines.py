"""Baselines in the same model code and trainer: fixed boundary rules (space, pool:N), isotropic byte models, the
BPE token model, and sizing to a FLOPs-per-byte budget."""

import json
import math

import pytest
import torch

from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.chunking import fixed_boundaries
from dynamic_chunker.evaluation import load_lm
from dynamic_chunker.evaluation.sizing import flops_per_byte, rule_compression, size_to_flops, with_width
from dynamic_chunker.layers.segments import Segments
from dynamic_chunker.training import train
from dynamic_chunker.training.config import config_from_dict

from .test_evaluation import ISOTROPIC, ONE_STAGE
from .test_training import corpus, tiny_config  # noqa: F401  (corpus is a fixture)


def test_space_rule_starts_a_chunk_after_each_run_of_space_like_bytes():
    text = b"Hi, you  there!\xc3\xa9x"
    ids = torch.tensor([list(text)])
    got = fixed_boundaries("space", Segments(), 1, len(text), ids.device, ids)[0]
    starts = [i for i, flag in enumerate(got.tolist()) if flag]
    assert starts == [0, 4, 9, 15]  # "Hi, " | "you  " | "there!" | "\xc3\xa9x" (UTF-8 bytes count as letters)


def test_pool_rule_restarts_at_document_starts():
    starts = torch.zeros(1, 10, dtype=torch.bool)
    starts[0, 5] = True
    got = fixed_boundaries("pool:3", Segments(starts=starts), 1, 10, torch.device("cpu"), None)[0]
    assert [i for i, flag in enumerate(got.tolist()) if flag] == [0, 3, 5, 8]


def test_model_with_a_fixed_rule_routes_by_the_rule_in_forward_and_boundaries():
    config = HNetConfig.from_dict({**ONE_STAGE, "boundary_rule": ["space"]})
    model = HNetForCausalLM(config).eval()
    text = b"the cat sat on the mat"
    ids = torch.tensor([list(text)])
    out = model(ids)
    expected = fixed_boundaries("space", Segments(), 1, len(text), ids.device, ids)
    assert torch.equal(out.routing[0].boundary_mask, expected)
    assert torch.equal(out.routing[0].boundary_prob, expected.float())
    assert torch.equal(model.boundaries(ids).chunk_starts(0), expected)
    out.logits.sum().backward()  # trains: gradients reach the encoder through the chunks
    assert model.backbone.encoder.layers[0].mixer.in_proj.weight.grad.abs().sum() > 0
    with pytest.raises(NotImplementedError, match="fixed boundary rule"):
        model.generate(["the"], max_new_bytes=2)


@pytest.mark.parametrize(
    "rules, message",
    [(["spaces"], "must be learned, space or pool:N"), (["pool:0"], "pool:N"), (["space", "space"], "one rule per")],
)
def test_boundary_rule_errors(rules, message):
    with pytest.raises(ValueError, match=message):
        HNetConfig.from_dict({**ONE_STAGE, "boundary_rule": rules})


def test_boundary_rule_stays_out_of_official_json_when_learned():
    assert "boundary_rule" not in HNetConfig.from_dict(ONE_STAGE).to_dict()
    assert HNetConfig.from_dict({**ONE_STAGE, "boundary_rule": ["pool:4"]}).to_dict()["boundary_rule"] == ["pool:4"]


def test_size_to_flops_picks_the_closest_width():
    reference = HNetConfig.from_dict(ONE_STAGE)
    target = flops_per_byte(reference, 256, [6.0])
    sized, flops = size_to_flops(HNetConfig.from_dict(ISOTROPIC), target, 256, step=16)
    widths = [w for w in range(16, 4097, 16)]
    others = []
    for w in widths:
        try:
            others.append(abs(flops_per_byte(with_width(sized, w), 256) - target))
        except ValueError:
            continue
    assert abs(flops - target) == min(others)
    assert flops == flops_per_byte(sized, 256)
    token_sized, token_flops = size_to_flops(HNetConfig.from_dict({**ISOTROPIC, "vocab_size": 300}), target, 64, None,
                                             bytes_per_token=4.0, step=16)
    assert token_flops == pytest.approx(flops_per_byte(token_sized, 64) / 4.0)


def test_rule_compression_measures_fixed_rules():
    assert rule_compression(HNetConfig.from_dict({**ONE_STAGE, "boundary_rule": ["pool:4"]}), b"x" * 40) == [4.0]
    space = HNetConfig.from_dict({**ONE_STAGE, "boundary_rule": ["space"]})
    assert rule_compression(space, b"ab cd ef gh") == [11 / 4]
    assert rule_compression(HNetConfig.from_dict(ONE_STAGE), b"abc") is None


def test_isotropic_and_bpe_models_train_in_the_same_trainer(corpus, tmp_path, one_thread):  # noqa: F811
    byte_run = tiny_config(corpus, tmp_path / "llamabyte", model=ISOTROPIC, ratio={"targets": []})
    byte_run["optimizer"]["lr_multipliers"] = [1.0]
    result = train(config_from_dict(byte_run), progress=False)
    assert result.evals[-1]["val_bpb"] < 8.5
    bpe_run = tiny_config(corpus, tmp_path / "bpe", model={**ISOTROPIC, "vocab_size": 300}, ratio={"targets": []})
    bpe_run["data"].update(tokenizer="bpe:300", seq_len=32)
    bpe_run["optimizer"]["lr_multipliers"] = [1.0]
    result = train(config_from_dict(bpe_run), progress=False)
    folder = tmp_path / "bpe"
    assert (folder / "tokenizer.json").is_file() and (folder / "tokens_val.npy").is_file()
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 300
    lm = load_lm(folder)
    first_eval = result.evals[0]["val_bpb"]  # untrained: about log2(300) bits per token over bytes per token
    assert 0 < result.evals[-1]["val_bpb"] < first_eval
    assert type(lm).__name__ == "TokenLM"
    last = result.history[-1]  # bits per byte, not per token: several bytes per target
    assert last["bpb"] < last["ce"] / math.log(2)
    with pytest.raises(ValueError, match="must be bpe:V with V = the model's vocab_size"):
        config_from_dict({**bpe_run, "data": {**bpe_run["data"], "tokenizer": "bpe:512"}})


def test_space_rule_model_trains(corpus, tmp_path, one_thread):  # noqa: F811
    run = tiny_config(corpus, tmp_path / "space", model={**ONE_STAGE, "boundary_rule": ["space"]})
    result = train(config_from_dict(run), progress=False)
    assert result.evals[-1]["val_compression_0"] > 2  # words and spaces: several bytes per chunk
