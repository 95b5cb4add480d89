"""HNetConfig: official schema I/O and validation with clear messages."""

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamic_chunker import HNetConfig
from dynamic_chunker.config import OFFICIAL_CONFIGS, parse_layout
from dynamic_chunker.errors import ConfigError

CONFIG_FILES = sorted(OFFICIAL_CONFIGS.glob("*.json"))


def base_config() -> dict:
    return {
        "arch_layout": ["m1", ["T1m1", ["t1"], "m1T1"], "M1"],
        "d_model": [32, 48, 64],
        "d_intermediate": [64, 96, 128],
        "vocab_size": 256,
        "ssm_cfg": {"chunk_size": 16, "d_conv": 4, "d_state": 16, "expand": 2, "headdim": 16},
        "attn_cfg": {"num_heads": [2, 3, 4], "rotary_emb_dim": [8, 8, 8], "window_size": [7, 3, -1]},
        "tie_embeddings": False,
    }


def with_change(path: str, value) -> dict:
    """base_config() with the dotted key ``path`` set to ``value``."""
    data = copy.deepcopy(base_config())
    *parents, last = path.split(".")
    target = data
    for key in parents:
        target = target[key]
    target[last] = value
    return data


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_official_configs_round_trip(path, tmp_path):
    config = HNetConfig.from_json(path)
    assert config.to_dict() == json.loads(path.read_text())  # the official schema, no extension keys added
    out = tmp_path / "config.json"
    config.to_json(out)
    assert HNetConfig.from_json(out) == config


def test_round_trip_keeps_extension_keys(tmp_path):
    config = HNetConfig.from_dict(base_config())
    text = config.to_json(tmp_path / "c.json")
    assert json.loads(text) == base_config()
    again = HNetConfig.from_json(tmp_path / "c.json")
    assert again == config and again.ssm_cfg.headdim == 16
    assert config.num_stages == 3
    assert config.stacks(1) == {"encoder": ["T", "m"], "decoder": ["m", "T"]}
    assert config.stacks(2) == {"main": ["t"]}


def test_from_json_on_broken_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"arch_layout": ["m4", ["T22"], "m4"], "d_model": [1024, ')
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        HNetConfig.from_json(path)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        HNetConfig.from_json(tmp_path / "missing.json")
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        HNetConfig.from_json(path)


def test_from_json_error_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(with_change("d_model", [32, 48])))
    with pytest.raises(ValueError, match=r"bad\.json.*d_model has 2 entries but arch_layout has 3 stages"):
        HNetConfig.from_json(path)


@pytest.mark.parametrize(
    "path,value,error,message",
    [
        # unknown keys, at the top and inside the nested objects
        ("d_modle", [32], TypeError, r"unknown key\(s\) in config: d_modle"),
        ("ssm_cfg.dstate", 16, TypeError, r"unknown key\(s\) in ssm_cfg: dstate"),
        ("attn_cfg.heads", [1], TypeError, r"unknown key\(s\) in attn_cfg: heads"),
        ("ssm_cfg", [4, 2], TypeError, "ssm_cfg must be a JSON object"),
        ("attn_cfg", "none", TypeError, "attn_cfg must be a JSON object"),
        # wrong list lengths
        ("d_model", [32, 48], ValueError, "d_model has 2 entries but arch_layout has 3 stages"),
        ("d_intermediate", [64, 96, 128, 1], ValueError, "d_intermediate has 4 entries"),
        ("attn_cfg.num_heads", [2, 3], ValueError, r"attn_cfg\.num_heads has 2 entries"),
        ("attn_cfg.rotary_emb_dim", [8], ValueError, r"attn_cfg\.rotary_emb_dim has 1 entries"),
        ("attn_cfg.window_size", [7, 3, -1, 2], ValueError, r"attn_cfg\.window_size has 4 entries"),
        ("d_model", [32, 48.0, 64], TypeError, "d_model must be a list of non-negative integers"),
        # width not monotone
        ("d_model", [32, 64, 48], ValueError, r"d_model must not shrink.*stage 2 is narrower than stage 1"),
        # head dims not dividing
        ("attn_cfg.num_heads", [2, 5, 4], ValueError, "stage 1: d_model 48 is not divisible by num_heads 5"),
        ("attn_cfg.num_heads", [2, 3, 0], ValueError, "stage 2: d_model 64 is not divisible by num_heads 0"),
        ("attn_cfg.rotary_emb_dim", [8, 7, 8], ValueError, "stage 1: rotary_emb_dim 7 must be even"),
        ("attn_cfg.rotary_emb_dim", [8, 8, 32], ValueError, "at most the head dim 16"),
        ("attn_cfg.window_size", [7, 0, -1], ValueError, "stage 1: window_size must be -1"),
        # Mamba inner width not divisible by the Mamba head dim
        ("ssm_cfg.headdim", 40, ValueError, r"stage 0: Mamba inner width expand\*d_model = 64 is not divisible"),
        ("ssm_cfg.d_state", 0, ValueError, r"ssm_cfg\.d_state must be a positive integer"),
        ("ssm_cfg.expand", 1.5, ValueError, r"ssm_cfg\.expand must be a positive integer"),
        # MLP layers without an MLP width
        ("d_intermediate", [0, 96, 128], ValueError, r"d_intermediate\[0\] must be positive"),
        # malformed layouts
        ("arch_layout", ["m4x", ["T1"], "m1"], ValueError, "malformed stack layout 'm4x'"),
        ("arch_layout", ["x4", ["T1"], "m1"], ValueError, "malformed stack layout 'x4'"),
        ("arch_layout", ["m1", ["T1", ["t"], "m1"], "m1"], ValueError, "malformed stack layout 't'"),
        ("arch_layout", ["m1", ["T1m1", [""], "m1T1"], "M1"], ValueError, "malformed stack layout ''"),
        ("arch_layout", ["m1", ["T1m1", ["t1"]], "M1"], ValueError, r"\[encoder, inner, decoder\] or \[main\], got 2"),
        ("arch_layout", ["m1", "T1", "m1"], ValueError, "arch_layout must be a non-empty nested list"),
        ("arch_layout", [], ValueError, "arch_layout must be a non-empty nested list"),
        ("arch_layout", ["m1", ["T1m1", [["t1"]], "m1T1"], "M1"], TypeError, "a stack layout must be a string"),
        ("vocab_size", 512, ValueError, "vocab_size must be 256"),
        ("tie_embeddings", "false", TypeError, "tie_embeddings must be true or false"),
    ],
)
def test_config_violations_raise_clear_errors(path, value, error, message):
    with pytest.raises(error, match=message):
        HNetConfig.from_dict(with_change(path, value))


def test_unknown_key_message_lists_allowed_keys():
    with pytest.raises(TypeError, match="allowed: .*arch_layout.*d_model"):
        HNetConfig.from_dict(with_change("d_modle", [32]))


def test_from_dict_requires_a_dict():
    with pytest.raises(TypeError, match="must be a JSON object, got list"):
        HNetConfig.from_dict([base_config()])


def test_mlp_width_rounds_up_to_128():
    config = HNetConfig.from_dict(with_change("d_intermediate", [1, 128, 129]))
    assert [config.mlp_width(s) for s in range(3)] == [128, 128, 256]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("mMtT"), st.integers(1, 30)), min_size=1, max_size=6))
def test_parse_layout_expands_tokens(tokens):
    layout = "".join(f"{letter}{count}" for letter, count in tokens)
    assert parse_layout(layout) == [letter for letter, count in tokens for _ in range(count)]


@pytest.mark.parametrize("layout", ["m0", "T1m0", "m00"])
def test_empty_stacks_are_refused(layout):
    with pytest.raises(ValueError, match="counts must be at least 1"):
        parse_layout(layout)
    with pytest.raises(ValueError, match="counts must be at least 1"):
        HNetConfig.from_dict(with_change("arch_layout", [layout, ["T1"], "m1"]))


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet="mMtTx4 -", min_size=1, max_size=8))
def test_parse_layout_accepts_only_letter_count_tokens(layout):
    import re

    if re.fullmatch(r"([mMtT]\d+)+", layout):
        assert len(parse_layout(layout)) == sum(int(c) for c in re.findall(r"\d+", layout))
    else:
        with pytest.raises(ValueError, match="malformed stack layout"):
            parse_layout(layout)
