"""The HTML view of chunks (checked in a real headless Chromium) and the `hnet chunk` command."""

import json
import shutil
import subprocess

import matplotlib.image
import numpy as np
import pytest

from dynamic_chunker.chunk_view import CHUNK_BACKGROUNDS, STAGE_COLOURS, render_html
from dynamic_chunker.cli import main
from dynamic_chunker.segmentation import HNetChunker

from .test_segmentation import MODEL, SAMPLE


def page(text, size=60):
    chunker = HNetChunker(MODEL, size)
    chunks = chunker.chunk(text)
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return chunks, render_html(text, chunks, chunker.signals(data), title="test <page>")


def test_html_holds_the_text_every_chunk_and_every_boundary():
    import html
    import re

    chunks, doc = page(SAMPLE)
    body = doc.split("<div class='text'>")[1].split("</div>")[0]
    without_badges = re.sub(r'<span class="badge">\d+</span>', "", body)
    assert html.unescape(re.sub(r"</?span[^>]*>", "", without_badges)) == SAMPLE  # the text, nothing lost or added
    assert body.count('class="chunk"') == len(chunks)
    assert "test &lt;page&gt;" in doc  # escaped
    stage1 = sum(c.level == 1 for c in chunks)
    assert body.count('class="u s1"') >= stage1 - 1


def test_html_of_invalid_utf8_bytes():
    chunks, doc = page(b"abc \xff\xfe def " * 10, size=9)
    assert doc.count('class="chunk"') == len(chunks)
    assert "\ufffd" in doc


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Chromium is needed for this test: `make chromium` (Debian: apt-get install chromium)")
    return path


def test_html_renders_in_headless_chromium(tmp_path):
    _, doc = page(SAMPLE * 3)
    source = tmp_path / "chunks.html"
    source.write_text(doc, encoding="utf-8")
    shot = tmp_path / "chunks.png"
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}", "--window-size=1000,800", "--hide-scrollbars", source.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.exists(), result.stderr[-2000:]
    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)
    colours = {tuple(p) for p in pixels.reshape(-1, 3)[::7]}

    def seen(hex_colour: str) -> bool:
        rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
        return any(np.abs(np.array(c) - rgb).max() <= 3 for c in colours)

    assert all(seen(c) for c in CHUNK_BACKGROUNDS), "the chunk backgrounds are not on the screenshot"
    assert seen(STAGE_COLOURS[0]) and seen(STAGE_COLOURS[1]), "the stage boundary colours are not on the screenshot"
    shutil.copy(shot, tmp_path / "kept.png")


# ------------------------------------------------------------------------------------------------ hnet chunk
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    MODEL.save_pretrained(folder)
    return folder


def test_hnet_chunk_jsonl(model_dir, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text(SAMPLE, encoding="utf-8")
    assert main(["chunk", str(source), "--model", str(model_dir), "--chunk-size", "40", "--format", "jsonl"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "".join(r["text"] for r in records) == SAMPLE
    assert all(SAMPLE[r["start_index"] : r["end_index"]] == r["text"] and len(r["text"]) <= 40 for r in records)
    args = ["chunk", str(source), "--model", str(model_dir), "--chunk-size", "40", "--format", "jsonl"]
    assert main([*args, "--cutter", "optimal", "--cut-cost", "2"]) == 0
    optimal = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "".join(r["text"] for r in optimal) == SAMPLE and all(len(r["text"]) <= 40 for r in optimal)


def test_hnet_chunk_text_html_and_stream(model_dir, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text(SAMPLE, encoding="utf-8")
    assert main(["chunk", str(source), "--model", str(model_dir), "--chunk-size", "50", "--separator", "|\\n"]) == 0
    assert capsys.readouterr().out.replace("|\n", "") == SAMPLE
    out = tmp_path / "view.html"
    assert main(["chunk", str(source), "--model", str(model_dir), "--format", "html", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert main(["chunk", str(source), "--model", str(model_dir), "--stream", "--format", "jsonl"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[-1]["end_byte"] == len(SAMPLE.encode())


def test_hnet_chunk_errors_are_one_line(model_dir, tmp_path, capsys):
    assert main(["chunk", str(tmp_path / "missing.txt"), "--model", str(model_dir)]) == 2
    assert main(["chunk", "-", "--model", str(model_dir), "--chunk-size", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("hnet chunk: error:") for line in err)


def test_hnet_chunk_compile_without_a_compiler_says_what_to_install(model_dir, tmp_path, capsys, monkeypatch):
    source = tmp_path / "in.txt"
    source.write_text(SAMPLE, encoding="utf-8")
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert main(["chunk", str(source), "--model", str(model_dir), "--compile"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hnet chunk: error:") and "C++ compiler" in err and "\n" not in err


# ------------------------------------------------------------------------------------------------ LangChain
def test_langchain_splitter_gives_exact_start_indices():
    from dynamic_chunker.langchain import HNetTextSplitter

    splitter = HNetTextSplitter(30, model=MODEL)
    text = "same words again. " * 20  # repeated chunks: a text.find() would get their offsets wrong
    assert "".join(splitter.split_text(text)) == text
    docs = splitter.create_documents([text, SAMPLE], metadatas=[{"source": "a"}, {"source": "b"}])
    for doc in docs:
        source = text if doc.metadata["source"] == "a" else SAMPLE
        start = doc.metadata["start_index"]
        assert source[start : start + len(doc.page_content)] == doc.page_content
        assert len(doc.page_content) <= 30
    assert [d.metadata["start_index"] for d in docs if d.metadata["source"] == "a"][1] > 0
