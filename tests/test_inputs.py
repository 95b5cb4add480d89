"""Bad input gets a ValueError/TypeError that names the problem, never a deep shape error."""

import pytest
import torch

from dynamic_chunker import HNetForCausalLM

from .test_model import tiny_config, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(2, seed=0)


IDS = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "input_ids,error,message",
    [
        (torch.tensor([[1, 2, 256]]), ValueError, r"byte values in 0\.\.255, got values in 1\.\.256"),
        (torch.tensor([[-1, 2, 3]]), ValueError, r"byte values in 0\.\.255, got values in -1\.\.3"),
        (torch.tensor([[1.0, 2.0]]), TypeError, "input_ids must be an integer tensor, got torch.float32"),
        (torch.tensor([[True, False]]), TypeError, "must be an integer tensor, got torch.bool"),
        ([[1, 2, 3]], TypeError, "input_ids must be a torch.Tensor of byte ids, got list"),
        (b"abc", TypeError, "must be a torch.Tensor of byte ids, got bytes"),
        (torch.zeros(1, 0, dtype=torch.long), ValueError, r"input_ids is empty \(shape \(1, 0\)\)"),
        (torch.zeros(0, 4, dtype=torch.long), ValueError, r"input_ids is empty \(shape \(0, 4\)\)"),
        (torch.tensor([1, 2, 3]), ValueError, r"shape \(batch, length\), got \(3,\)"),
        (torch.zeros(1, 2, 3, dtype=torch.long), ValueError, r"shape \(batch, length\), got \(1, 2, 3\)"),
    ],
)
def test_bad_input_ids(model, input_ids, error, message):
    with pytest.raises(error, match=message):
        model(input_ids)


@pytest.mark.parametrize(
    "mask,error,message",
    [
        (torch.tensor([[True] * 6, [True, True, False, True, True, False]]), ValueError, "must be right-padded"),
        (torch.tensor([[True] * 6, [False] * 3 + [True] * 3]), ValueError, "padding must be on the right"),
        (torch.tensor([[True] * 6, [False] * 6]), ValueError, "every row needs at least one valid position"),
        (torch.ones(2, 5, dtype=torch.bool), ValueError, r"mask shape \(2, 5\) differs from input_ids shape \(2, 6\)"),
        (torch.ones(6, dtype=torch.bool), ValueError, r"mask shape \(6,\) differs"),
        (torch.ones(2, 6, dtype=torch.long), TypeError, "mask must be a bool tensor"),
        (torch.ones(2, 6), TypeError, "mask must be a bool tensor"),
        ([[True] * 6] * 2, TypeError, "mask must be a bool tensor"),
    ],
)
def test_bad_mask(model, mask, error, message):
    with pytest.raises(error, match=message):
        model(IDS, mask=mask)


def test_bad_document_ids(model):
    with pytest.raises(ValueError, match="document_ids must be a tensor with the same shape as input_ids"):
        model(IDS, document_ids=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="document_ids must be a tensor"):
        model(IDS, document_ids=[0] * 6)


def test_model_requires_a_config():
    with pytest.raises(TypeError, match="expected an HNetConfig, got dict"):
        HNetForCausalLM(tiny_config(2).to_dict())


def test_ratio_losses_needs_one_target_per_stage(model):
    out = model(IDS)
    with pytest.raises(ValueError, match=r"one ratio target per chunking stage \(1\)"):
        model.ratio_losses(out, [3.0, 2.0])


# ------------------------------------------------------------------------------------------- state dicts
def test_load_state_dict_lists_missing_and_unexpected_keys(model):
    state = model.state_dict()
    del state["backbone.residual_proj.bias"]
    del state["lm_head.weight"]
    state["backbone.extra.weight"] = torch.zeros(3)
    fresh = tiny_model(2, seed=1)
    with pytest.raises(ValueError) as info:
        fresh.load_state_dict(state)
    message = str(info.value)
    assert "missing keys (2): backbone.residual_proj.bias, lm_head.weight" in message
    assert "unexpected keys (1): backbone.extra.weight" in message
    assert "config matches the checkpoint" in message


def test_load_state_dict_of_another_config_names_the_differences(model):
    deeper = tiny_model(3, seed=0).state_dict()
    missing, unexpected = set(model.state_dict()) - set(deeper), set(deeper) - set(model.state_dict())
    with pytest.raises(ValueError) as info:
        model.load_state_dict(deeper)
    message = str(info.value)
    assert f"missing keys ({len(missing)}): {min(missing)}, " in message
    assert f"unexpected keys ({len(unexpected)}): {min(unexpected)}, " in message


def test_load_state_dict_wrong_shapes(model):
    state = model.state_dict()
    state["embeddings.weight"] = torch.zeros(256, 7)
    state["backbone.main_network.pad_dimension"] = torch.zeros(3)
    fresh = tiny_model(2, seed=1)
    with pytest.raises(ValueError, match="shapes do not match") as info:
        fresh.load_state_dict(state)
    assert "embeddings.weight: checkpoint (256, 7) vs model (256, 16)" in str(info.value)
    assert "backbone.main_network.pad_dimension: checkpoint (3,) vs model (8,)" in str(info.value)


def test_load_state_dict_rejects_non_mappings(model):
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        model.load_state_dict("model.pt")


def test_non_strict_load_reports_keys_like_torch(model):
    state = model.state_dict()
    del state["lm_head.weight"]
    result = tiny_model(2, seed=1).load_state_dict(state, strict=False)
    assert result.missing_keys == ["lm_head.weight"] and result.unexpected_keys == []
