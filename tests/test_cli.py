"""The ``hnet`` command: its structure, and expected failures as one line with exit status 2 (bugs keep tracebacks)."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
import torch

from dynamic_chunker import __version__, cli
from dynamic_chunker.checkpoints import from_pretrained, load_state_dict
from dynamic_chunker.data import Document, Source, prepare_corpus
from dynamic_chunker.errors import ConfigError, UserError

from .conftest import OFFICIAL

TINY = OFFICIAL / "tiny_2stage"


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny"
    assert cli.main(["convert", str(TINY / "model.pt"), str(out), "--config", str(TINY / "config.json")]) == 0
    return out


# --------------------------------------------------------------------------------------------------- structure
def test_every_subcommand_is_one_add_parser_function_with_a_description(capsys):
    parser = cli.build_parser()
    names = [a for a in parser._subparsers._group_actions[0].choices]
    assert len(names) == len(cli.SUBCOMMANDS) and all(f.__name__.startswith("add_") for f in cli.SUBCOMMANDS)
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        assert sub.description, f"hnet {name} --help has no description"
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"hnet {__version__}"


def test_main_turns_user_errors_and_os_errors_into_one_line(monkeypatch, capsys):
    def failing(error):
        def command(args):
            raise error

        return command

    for error, text in [
        (ConfigError("train.steps must be >= 1"), "hnet info: error: train.steps must be >= 1"),
        (OSError(errno.ENOSPC, "No space left on device", "runs/x/checkpoint.pt"), "error: no space left on device"),
        (PermissionError(errno.EACCES, "Permission denied", "/data"), "Permission denied: /data"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "notes"), "Is a directory: notes"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB"), "error: out of memory (CUDA out of"),
        (RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried"), "out of memory"),
        (MemoryError(), "error: out of memory (MemoryError): use a smaller batch"),
    ]:
        monkeypatch.setattr(cli, "cmd_info", failing(error))
        code, _, err = run(["info", "x"], capsys)
        assert_one_line_error(code, err, text)
    monkeypatch.setattr(cli, "cmd_info", failing(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # a bug keeps its traceback
        cli.main(["info", "x"])
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)


# ------------------------------------------------------------------------------------------- expected failures
def test_files_and_folders_in_the_wrong_place(tmp_path, model_dir, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("hello")
    assert_one_line_error(*run(["data", "info", a_file], capsys)[::2], "is a file, not a corpus folder")
    assert_one_line_error(*run(["train", tmp_path], capsys)[::2], "is a folder; give a training config file")
    code, _, err = run(["boundaries", "--model", model_dir, "--file", tmp_path], capsys)
    assert_one_line_error(code, err, "Is a directory")
    code, _, err = run(["data", "prepare", "x", "--files", a_file, "--out", "/sys/hnet_corpus"], capsys)
    assert_one_line_error(code, err, "/sys")  # a location nobody may write to


def test_manifest_without_val_split(tmp_path, capsys):
    docs = [Document(f"d{i}", b"some text " * 30) for i in range(10)]
    corpus = tmp_path / "c"
    prepare_corpus("c", corpus, [Source("m", {}, docs)], progress=False)
    manifest = json.loads((corpus / "manifest.json").read_text())
    del manifest["splits"]["val"]
    (corpus / "manifest.json").write_text(json.dumps(manifest))
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {TINY / 'config.json'}\ndata: {{corpus: {corpus}, seq_len: 32}}\nratio: {{targets: [3, 3]}}\n"
        f"optimizer: {{lr: 0.001}}\ntrain: {{steps: 1, batch_size: 1}}\nout: {tmp_path / 'run'}\n"
    )
    code, _, err = run(["train", config, "--no-progress"], capsys)
    assert_one_line_error(code, err, "has no split 'val'")
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    code, _, err = run(["train", config, "--no-progress", "--out", a_file], capsys)
    assert_one_line_error(code, err, "is a file, not a folder")
    if not torch.cuda.is_available():
        code, _, err = run(["train", config, "--no-progress", "train.device=cuda"], capsys)
        assert_one_line_error(code, err, "train.device is 'cuda' but no CUDA device is available")


def test_devices_that_do_not_exist(model_dir, capsys):
    code, _, err = run(["generate", "--model", model_dir, "--prompt", "x", "--device", "warp9"], capsys)
    assert_one_line_error(code, err, "unknown device 'warp9'")
    if not torch.cuda.is_available():
        code, _, err = run(["generate", "--model", model_dir, "--prompt", "x", "--device", "cuda"], capsys)
        assert_one_line_error(code, err, "device 'cuda' is not available")
    else:
        index = torch.cuda.device_count()
        code, _, err = run(["generate", "--model", model_dir, "--prompt", "x", "--device", f"cuda:{index}"], capsys)
        assert_one_line_error(code, err, "does not exist")


def test_a_missing_local_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub must not be asked")

    monkeypatch.setattr("dynamic_chunker.checkpoints._hub_snapshot", no_hub)
    code, _, err = run(["generate", "--model", "runs/tiny_1stage", "--prompt", "x"], capsys)
    assert_one_line_error(code, err, "runs/tiny_1stage: no such file or folder")


def test_options_out_of_range(model_dir, capsys):
    base = ["boundaries", "--model", model_dir, "--text", "hello world"]
    assert_one_line_error(*run([*base, "--show", "-1"], capsys)[::2], "--show must be >= 0")
    assert_one_line_error(*run([*base, "--window", "0"], capsys)[::2], "--window must be at least 1")
    gen = ["generate", "--model", model_dir, "--prompt", "x"]
    assert_one_line_error(*run([*gen, "--top-p", "2"], capsys)[::2], "top_p must be in (0, 1]")
    assert_one_line_error(*run([*gen, "--max-bytes", "-5"], capsys)[::2], "--max-bytes must be >= 0")


# ------------------------------------------------------------------------------------------------- info, convert
def test_info_takes_configs_folders_and_released_names(model_dir, capsys):
    code, out, _ = run(["info", TINY / "config.json", model_dir, "hnet_2stage_XL", "cartesia-ai/hnet_1stage_L"], capsys)
    assert code == 0
    assert out.count("GFLOPs per byte") == 4 and "hnet_2stage_XL:" in out and "hnet_1stage_L:" in out
    assert_one_line_error(*run(["info", "hnet_9stage_Z"], capsys)[::2], "not a released model (hnet_1stage_L")


def test_convert_never_replaces_without_overwrite_and_pt_keeps_its_config(tmp_path, model_dir, capsys):
    pt = tmp_path / "out" / "tiny.pt"
    assert run(["convert", model_dir, pt], capsys)[0] == 0
    assert (pt.parent / "config.json").is_file()  # so that it converts and loads back without --config
    back = tmp_path / "back"
    assert run(["convert", pt, back], capsys)[0] == 0
    original, again = from_pretrained(model_dir), from_pretrained(back)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in original.state_dict().items())

    weights = (back / "model.safetensors").read_bytes()
    code, _, err = run(["convert", model_dir, back, "--dtype", "bfloat16"], capsys)
    assert_one_line_error(code, err, "already exists; pass --overwrite")
    assert (back / "model.safetensors").read_bytes() == weights
    assert run(["convert", model_dir, back, "--dtype", "bfloat16", "--overwrite"], capsys)[0] == 0
    assert load_state_dict(back / "model.safetensors")["embeddings.weight"].dtype == torch.bfloat16

    shutil.copy(pt, tmp_path / "lonely.pt")
    code, _, err = run(["convert", tmp_path / "lonely.pt", tmp_path / "x"], capsys)
    assert_one_line_error(code, err, "pass the config JSON with --config")
