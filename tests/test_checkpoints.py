"""Checkpoint formats: official .pt, safetensors folders, Hub ids from a local cache, conversion, clear errors."""

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from dynamic_chunker import HNetConfig, HNetForCausalLM, cli
from dynamic_chunker.checkpoints import (
    OFFICIAL_CONFIGS,
    CheckpointError,
    convert,
    from_pretrained,
    load_state_dict,
    resolve,
)

from .conftest import FIXTURES, OFFICIAL

TINY = OFFICIAL / "tiny_2stage"


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(tie_embeddings: bool = False) -> HNetForCausalLM:
    config = json.loads((TINY / "config.json").read_text())
    config["tie_embeddings"] = tie_embeddings
    torch.manual_seed(0)
    return HNetForCausalLM(HNetConfig.from_dict(config))


def logits(model, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("name", ["tiny_1stage", "tiny_2stage"])
def test_official_pt_to_safetensors_round_trip(name, tmp_path):
    folder = OFFICIAL / name
    direct = HNetForCausalLM(HNetConfig.from_json(folder / "config.json"))
    direct.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    convert(folder / "model.pt", tmp_path / "converted", config=folder / "config.json")
    assert sorted(p.name for p in (tmp_path / "converted").iterdir()) == ["config.json", "model.safetensors"]
    loaded = from_pretrained(tmp_path / "converted")
    assert torch.equal(logits(loaded), logits(direct))
    convert(tmp_path / "converted", tmp_path / "back.pt")  # and back to the official format
    original = torch.load(folder / "model.pt", weights_only=True)
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert original.keys() == back.keys() and all(torch.equal(original[k], back[k]) for k in original)


def test_save_pretrained_keeps_tied_embeddings(tmp_path):
    model = tiny_model(tie_embeddings=True)
    model.save_pretrained(tmp_path)
    loaded = HNetForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.embeddings.weight
    assert torch.equal(logits(loaded), logits(model))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_load_in_any_dtype_keeps_fp32_parts(dtype, tmp_path):
    model = from_pretrained(TINY / "model.pt", config=TINY / "config.json", dtype=dtype, device="cpu")
    for name, param in model.named_parameters():
        fp32 = name.endswith("mixer.D") or ".residual_proj." in name
        assert param.dtype == (torch.float32 if fp32 else dtype), name
    out = logits(model)
    assert out.dtype == dtype and bool(out.isfinite().all())
    reference = logits(from_pretrained(TINY / "model.pt", config=TINY / "config.json"))
    assert (out.float() - reference).abs().max() < (1e-5 if dtype == torch.float32 else 0.5)


def test_config_resolution(tmp_path):
    weights = tmp_path / "hnet_2stage_XL.pt"
    weights.write_bytes(b"")
    _, config = resolve(weights)  # a released model's file name selects its official config
    assert config == HNetConfig.from_json(OFFICIAL_CONFIGS / "hnet_2stage_XL.json")
    shutil.copy(TINY / "model.pt", tmp_path / "weights.pt")
    with pytest.raises(FileNotFoundError, match="no config for .*weights.pt"):
        resolve(tmp_path / "weights.pt")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        from_pretrained(tmp_path / "missing")


def test_omegaconf_objects_load_as_inert_stubs():
    """The fixture was written with the real omegaconf (see tests/fixtures/checkpoints/README.md); it loads
    without omegaconf and with weights-only unpickling, keeping only the tensors."""
    state = load_state_dict(FIXTURES / "checkpoints" / "omegaconf_listconfig.pt")
    assert sorted(state) == ["embeddings.weight", "lm_head.weight"]
    assert state["embeddings.weight"].shape == (4, 3)
    assert "omegaconf" not in sys.modules


class Payload:
    def __reduce__(self):
        return (print, ("code from the checkpoint ran",))


def test_arbitrary_pickles_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused by safe .*Python object print\b"):
        load_state_dict(path)
    assert "code from the checkpoint ran" not in capsys.readouterr().out


def corrupt(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(random.Random(0).randbytes(len(data)))
    elif how == "header":
        path.write_bytes(b"\xff" * 16 + data[16:])


@pytest.mark.parametrize("how", ["truncated", "garbage", "header"])
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_corrupted_files_give_one_clear_error(fmt, how, tmp_path):
    if fmt == "pt":
        path = tmp_path / "model.pt"
        shutil.copy(TINY / "model.pt", path)
    else:
        tiny_model().save_pretrained(tmp_path)
        path = tmp_path / "model.safetensors"
    corrupt(path, how)
    with pytest.raises(CheckpointError, match=rf"{path.name}: .*(truncated or corrupted|refused)"):
        from_pretrained(path, config=TINY / "config.json")


def test_non_finite_weights_are_reported(tmp_path):
    state = torch.load(TINY / "model.pt", weights_only=True)
    state["lm_head.weight"][3, 4] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"nan\.pt: tensor lm_head\.weight contains NaN"):
        from_pretrained(tmp_path / "nan.pt", config=TINY / "config.json")


def test_mismatched_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"(?s)tiny_1stage/model\.pt: state dict does not match .*missing keys"):
        from_pretrained(OFFICIAL / "tiny_1stage" / "model.pt", config=TINY / "config.json")
    config = json.loads((TINY / "config.json").read_text())
    config["d_intermediate"] = [0, 256, 256]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"(?s)model\.pt: state dict shapes do not match .*fc1\.weight"):
        from_pretrained(TINY / "model.pt", config=tmp_path / "config.json")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"note": "no tensors"}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match=r"empty\.pt: holds no tensors"):
        load_state_dict(tmp_path / "empty.pt")


def hub_cache(root, repo_id: str, files: dict) -> None:
    """The on-disk layout huggingface_hub uses: blobs, a snapshot of symlinks, and refs/main naming it."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for i, (name, source) in enumerate(files.items()):
        shutil.copy(source, repo / "blobs" / f"blob{i}")
        (snapshot / name).symlink_to(f"../../blobs/blob{i}")


def test_hub_id_from_local_cache_offline(tmp_path):
    hub_cache(tmp_path / "hub", "someone/tiny-hnet", {"tiny_2stage.pt": TINY / "model.pt"})
    shutil.copy(TINY / "config.json", tmp_path / "config.json")
    hub_cache(tmp_path / "hub", "someone/with-config", {"config.json": TINY / "config.json", "x.pt": TINY / "model.pt"})
    script = textwrap.dedent(
        f"""
        import torch
        from dynamic_chunker.checkpoints import from_pretrained
        model = from_pretrained("someone/with-config")
        torch.save(model.state_dict(), {str(tmp_path / "from_hub.pt")!r})
        model = from_pretrained("someone/tiny-hnet", config={str(tmp_path / "config.json")!r})
        try:
            from_pretrained("someone/not-downloaded")
        except FileNotFoundError as err:
            print(err)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert "someone/not-downloaded" in message and str(tmp_path / "hub") in message
    assert "hf download someone/not-downloaded" in message
    original = torch.load(TINY / "model.pt", weights_only=True)
    from_hub = torch.load(tmp_path / "from_hub.pt", weights_only=True)
    assert all(torch.equal(original[k], from_hub[k]) for k in original)


def test_cli_convert_and_generate(tmp_path, capsys):
    assert (
        cli.main(["convert", str(TINY / "model.pt"), str(tmp_path / "m"), "--config", str(TINY / "config.json")]) == 0
    )
    assert (tmp_path / "m" / "model.safetensors").is_file()
    capsys.readouterr()
    args = ["generate", "--model", str(tmp_path / "m"), "--prompt", "Hi ", "--max-bytes", "12", "--greedy"]
    assert cli.main(args) == 0
    model = from_pretrained(tmp_path / "m")
    (expected,) = model.generate("Hi ", max_new_bytes=12, greedy=True)
    assert capsys.readouterr().out == "Hi " + expected.decode("utf-8", errors="replace") + "\n"
    assert cli.main(["generate", "--model", str(tmp_path / "nowhere"), "--prompt", "x"]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    from dynamic_chunker.files import TEMP_GLOB, atomic_write

    path = atomic_write(tmp_path / "sub" / "a.txt", "first")
    atomic_write(path, b"second")
    assert path.read_text() == "second" and (path.stat().st_mode & 0o777) == 0o644

    def crash(f):
        f.write(b"half")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert path.read_text() == "second" and not list(path.parent.glob(TEMP_GLOB))
