"""The six released configs build exactly the official state-dict keys, shapes and parameter counts."""

import re

import pytest
import torch

from dynamic_chunker import HNetConfig, HNetForCausalLM
from dynamic_chunker.config import OFFICIAL_CONFIGS

from .conftest import OFFICIAL

CONFIGS = sorted(p.stem for p in OFFICIAL_CONFIGS.glob("*.json"))


def read_listing(name):
    lines = (OFFICIAL / "state_dicts" / f"{name}.tsv").read_text().splitlines()
    header = lines[0]
    tensors, params = re.search(r"(\d+) tensors, ([\d,]+) params", header).groups()
    entries = {}
    for line in lines:
        if line.startswith("#") or line.startswith(" ") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        entries[key] = (tuple(int(x) for x in re.findall(r"\d+", shape)), dtype)
    return entries, int(tensors), int(params.replace(",", ""))


def test_all_six_configs_present():
    assert len(CONFIGS) == 6


@pytest.mark.parametrize("name", CONFIGS)
def test_meta_build_matches_official_state_dict(name):
    expected, n_tensors, n_params = read_listing(name)
    config = HNetConfig.from_json(OFFICIAL_CONFIGS / f"{name}.json")
    model = HNetForCausalLM(config, device="meta", dtype=torch.bfloat16)
    state = model.state_dict()
    assert list(state) == list(expected), "keys or their order differ"
    for key, tensor in state.items():
        shape, dtype = expected[key]
        assert tuple(tensor.shape) == shape, key
        assert str(tensor.dtype).removeprefix("torch.") == dtype, key
    assert len(state) == n_tensors
    assert sum(p.numel() for p in model.parameters()) == n_params
