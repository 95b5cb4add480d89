"""Prepared corpora and byte windows: format, validation, split rule, packing, shuffling, resume and sharding."""

import gzip
import hashlib
import json
import shutil
import subprocess
import time

import numpy as np
import pytest
import torch

from dynamic_chunker.cli import main
from dynamic_chunker.data import (
    BOS,
    EOS,
    ByteWindows,
    CorpusError,
    Document,
    PreparedCorpus,
    Source,
    file_source,
    hf_source,
    prepare_corpus,
)
from dynamic_chunker.data.debian import DebianPart, debian_part_source, fortunes, man_page
from dynamic_chunker.data.prepare import split_hash
from dynamic_chunker.data.sources import fasta_records, split_fortunes, strip_ansi, strip_roff
from dynamic_chunker.errors import OutputFolderError


def documents_of(split) -> list[bytes]:
    """The documents of a split, cut at its BOS offsets."""
    data = bytes(split.data)
    ends = [*split.doc_starts[1:], len(data)]
    return [data[start + 1 : end] for start, end in zip(split.doc_starts, ends)]


def memory_source(docs: dict[str, bytes], name: str = "mem") -> Source:
    return Source(name=name, info={"kind": "test"}, documents=[Document(p, d) for p, d in docs.items()])


def sample_docs(n: int = 30) -> dict[str, bytes]:
    return {
        f"doc{i:02d}.txt": f"document {i}: ".encode() + "héllo wörld 你好 ".encode() * (i % 5 + 1) for i in range(n)
    }


@pytest.fixture
def text_folder(tmp_path):
    folder = tmp_path / "texts"
    for path, data in sample_docs().items():
        (folder / "sub" if path.endswith("7.txt") else folder).mkdir(parents=True, exist_ok=True)
        (folder / "sub" / path if path.endswith("7.txt") else folder / path).write_bytes(data)
    (folder / "skip.md").write_bytes(b"# not a .txt file\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD.txt").write_bytes(b"hidden, never read from a folder\n")
    return folder


# ---------------------------------------------------------------------------------------- preparing from files


def test_files_corpus_holds_every_document_once_with_manifest(tmp_path, text_folder, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths: the same split on every run
    out = tmp_path / "corpus"
    manifest = prepare_corpus("mini", out, [file_source(["texts/**/*.txt"])], val_fraction=0.2, progress=False)
    corpus = PreparedCorpus(out)
    assert corpus.name == "mini" and corpus.splits == ("train", "val")
    found = documents_of(corpus.split("train")) + documents_of(corpus.split("val"))
    assert sorted(found) == sorted(sample_docs().values())
    for split in ("train", "val"):
        info = manifest["splits"][split]
        data = (out / f"{split}.bin").read_bytes()
        assert data[0] == BOS and len(corpus.split(split)) == info["bytes"] == len(data)
        assert info["files"][f"{split}.bin"]["sha256"] == hashlib.sha256(data).hexdigest()
        idx = np.frombuffer((out / f"{split}.idx").read_bytes(), dtype="<i8")
        assert np.array_equal(idx, corpus.split(split).doc_starts) and len(idx) == info["documents"]
    # The hash rule decides every document (no fallback was needed here: both splits got documents by hash).
    paths = [p.relative_to(tmp_path) for p in text_folder.rglob("*.txt") if ".git" not in p.parts]
    val_paths = {p for p in paths if split_hash(0, "files", p.as_posix()) < 0.2}
    assert len(paths) == 30 and 0 < len(val_paths) < 30
    assert sorted(documents_of(corpus.split("val"))) == sorted(p.read_bytes() for p in val_paths)
    source = manifest["sources"][0]
    assert source["kind"] == "files" and source["documents"] == 30
    assert source["bytes"] == sum(len(d) for d in sample_docs().values())
    assert json.loads((out / "manifest.json").read_text())["split_rule"]["val_fraction"] == 0.2
    assert (BOS, EOS) == (254, 255)


def test_split_depends_only_on_paths_not_order(tmp_path):
    docs = sample_docs()
    reversed_docs = dict(reversed(list(docs.items())))
    for name, source_docs in (("a", docs), ("b", reversed_docs)):
        prepare_corpus(name, tmp_path / name, [memory_source(source_docs)], val_fraction=0.3, progress=False)
    a, b = PreparedCorpus(tmp_path / "a"), PreparedCorpus(tmp_path / "b")
    for split in ("train", "val"):
        assert sorted(documents_of(a.split(split))) == sorted(documents_of(b.split(split)))
    # a different seed gives a different split
    prepare_corpus("c", tmp_path / "c", [memory_source(docs)], val_fraction=0.3, seed=1, progress=False)
    assert sorted(documents_of(PreparedCorpus(tmp_path / "c").split("val"))) != sorted(documents_of(a.split("val")))


def test_each_split_gets_at_least_the_nearest_document(tmp_path):
    docs = sample_docs(5)
    positions = {p: split_hash(0, "mem", p) for p in docs}
    prepare_corpus("tiny_val", tmp_path / "v", [memory_source(docs)], val_fraction=1e-12, progress=False)
    assert documents_of(PreparedCorpus(tmp_path / "v").split("val")) == [docs[min(positions, key=positions.get)]]
    prepare_corpus("tiny_train", tmp_path / "t", [memory_source(docs)], val_fraction=1 - 1e-12, progress=False)
    assert documents_of(PreparedCorpus(tmp_path / "t").split("train")) == [docs[max(positions, key=positions.get)]]
    with pytest.raises(ValueError, match="at least 2 documents"):
        prepare_corpus("one", tmp_path / "one", [memory_source({"a": b"alone"})], progress=False)
    with pytest.raises(ValueError, match="no documents"):
        prepare_corpus("none", tmp_path / "none", [memory_source({})], progress=False)


@pytest.mark.parametrize("policy", ["replace", "drop"])
def test_invalid_utf8_is_replaced_or_dropped_and_counted(tmp_path, policy):
    docs = {"good": b"plain text", "latin1": b"caf\xe9 cr\xe8me", "other": b"more text", "empty": b""}
    manifest = prepare_corpus(
        "utf", tmp_path / "c", [memory_source(docs)], invalid_utf8=policy, val_fraction=0.3, progress=False
    )
    corpus = PreparedCorpus(tmp_path / "c")
    found = documents_of(corpus.split("train")) + documents_of(corpus.split("val"))
    expected = [b"plain text", b"more text"] + (["caf\ufffd cr\ufffdme".encode()] if policy == "replace" else [])
    assert sorted(found) == sorted(expected)
    assert manifest["text"] == {"invalid_utf8": policy, "documents_with_invalid_utf8": 1, "empty_documents_dropped": 1}
    assert all(BOS not in doc and EOS not in doc for doc in found)


def test_max_bytes_stops_early(tmp_path):
    docs = {f"d{i}": b"x" * 100 for i in range(50)}
    manifest = prepare_corpus("cap", tmp_path / "c", [memory_source(docs)], max_bytes=1000, progress=False)
    assert sum(s["documents"] for s in manifest["splits"].values()) == 10


def test_interrupted_prepare_keeps_the_previous_corpus(tmp_path):
    out = tmp_path / "c"
    prepare_corpus("ok", out, [memory_source(sample_docs())], progress=False)
    before = (out / "manifest.json").read_bytes()

    def broken():
        yield Document("a", b"first")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_corpus("broken", out, [Source("mem", {}, broken())], progress=False)
    assert (out / "manifest.json").read_bytes() == before
    PreparedCorpus(out)  # still valid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no partial folder left behind


# ----------------------------------------------------------------------------------------------------- validation


@pytest.fixture
def corpus_dir(tmp_path):
    out = tmp_path / "corpus"
    prepare_corpus("mini", out, [memory_source(sample_docs())], val_fraction=0.2, progress=False)
    return out


def test_missing_folder_and_manifest(tmp_path, corpus_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PreparedCorpus(tmp_path / "nowhere")
    (corpus_dir / "manifest.json").unlink()
    with pytest.raises(CorpusError, match="manifest.json is missing"):
        PreparedCorpus(corpus_dir)


def test_broken_manifest(corpus_dir):
    manifest_path = corpus_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text("{not json")
    with pytest.raises(CorpusError, match="not valid JSON"):
        PreparedCorpus(corpus_dir)
    manifest_path.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(CorpusError, match="format_version 99"):
        PreparedCorpus(corpus_dir)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.unlink(), "train.bin is missing"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(p.read_bytes()[:-5]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"Z"), "sha256"),
    ],
    ids=["missing", "empty", "truncated", "corrupt"],
)
def test_damaged_data_file(corpus_dir, damage, message):
    damage(corpus_dir / "train.bin")
    with pytest.raises(CorpusError, match=message):
        PreparedCorpus(corpus_dir)


def test_damaged_index_is_refused(corpus_dir):
    idx = corpus_dir / "val.idx"
    idx.write_bytes(idx.read_bytes()[:-1] + b"\x01")  # last offset no longer points at a BOS
    with pytest.raises(CorpusError, match="sha256"):
        PreparedCorpus(corpus_dir)
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    manifest["splits"]["val"]["files"]["val.idx"]["sha256"] = hashlib.sha256(idx.read_bytes()).hexdigest()
    (corpus_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorpusError, match="offsets|BOS"):
        PreparedCorpus(corpus_dir)


def test_unknown_split_name(corpus_dir):
    with pytest.raises(CorpusError, match="no split 'test'"):
        PreparedCorpus(corpus_dir).split("test")


# ------------------------------------------------------------------------------------------------------- windows


@pytest.fixture
def corpus(corpus_dir):
    return PreparedCorpus(corpus_dir)


def test_windows_cover_the_concatenation_sharing_one_byte(corpus):
    split = corpus.split("train")
    seq_len = 16
    windows = ByteWindows(split, seq_len=seq_len)
    assert len(windows) == (len(split) - 1) // seq_len
    data = torch.tensor(np.asarray(split.data), dtype=torch.int64)
    for i in (0, 1, len(windows) - 1, -1):
        input_ids, document_ids = windows[i]
        start = (i % len(windows)) * seq_len
        assert input_ids.dtype == document_ids.dtype == torch.int64
        assert input_ids.shape == document_ids.shape == (seq_len + 1,)
        assert torch.equal(input_ids, data[start : start + seq_len + 1])
    with pytest.raises(IndexError):
        windows[len(windows)]


def test_document_ids_change_exactly_at_bos(corpus):
    windows = ByteWindows(corpus.split("train"), seq_len=32)
    for i in range(len(windows)):
        input_ids, document_ids = windows[i]
        assert document_ids[0] == 0
        steps = document_ids[1:] - document_ids[:-1]
        assert torch.equal(steps != 0, input_ids[1:] == BOS) and steps.max() <= 1
    # the reference: document index of every byte, from a plain Python walk over the bytes
    data = bytes(corpus.split("train").data)
    owner, current = [], -1
    for byte in data:
        current += byte == BOS
        owner.append(current)
    _, document_ids = windows[3]
    expected = torch.tensor(owner[3 * 32 : 3 * 32 + 33])
    assert torch.equal(document_ids, expected - expected[0])


def test_short_split_and_bad_arguments(corpus):
    val = corpus.split("val")
    with pytest.raises(ValueError, match=rf"has {len(val)} bytes.*seq_len below"):
        ByteWindows(val, seq_len=len(val))
    ByteWindows(val, seq_len=len(val) - 1)  # exactly one window fits
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        ByteWindows(val, seq_len=0)
    windows = ByteWindows(corpus.split("train"), seq_len=8)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        windows.batches(batch_size=len(windows), world_size=2)
    with pytest.raises(ValueError, match="rank must be in"):
        windows.batches(batch_size=2, rank=2, world_size=2)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_batches_are_deterministic_permutations_per_epoch(corpus):
    windows = ByteWindows(corpus.split("train"), seq_len=8, seed=3)
    batch_size = 4
    steps = windows.steps_per_epoch(batch_size)
    run = _take(windows.batches(batch_size), 2 * steps)
    again = _take(ByteWindows(corpus.split("train"), seq_len=8, seed=3).batches(batch_size), 2 * steps)
    other_seed = _take(ByteWindows(corpus.split("train"), seq_len=8, seed=4).batches(batch_size), steps)
    assert [s for s, _ in run] == list(range(2 * steps))
    for (_, a), (_, b) in zip(run, again):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["document_ids"], b["document_ids"])
    assert any(not torch.equal(a["input_ids"], b["input_ids"]) for (_, a), (_, b) in zip(run, other_seed))
    # epoch e's batches are the windows of one permutation of all window indices, in order
    for epoch in range(2):
        order = windows.epoch_order(epoch)
        assert sorted(order.tolist()) == list(range(len(windows)))
        rows = torch.cat([b["input_ids"] for _, b in run[epoch * steps : (epoch + 1) * steps]])
        expected = torch.stack([windows[int(i)][0] for i in order[: steps * batch_size]])
        assert torch.equal(rows, expected)
    assert not torch.equal(windows.epoch_order(0), windows.epoch_order(1))


def test_resume_from_start_step_equals_uninterrupted(corpus):
    windows = ByteWindows(corpus.split("train"), seq_len=8)
    steps = windows.steps_per_epoch(3)
    uninterrupted = _take(windows.batches(3), 3 * steps)
    resume_at = steps + 2  # mid-way through the second epoch
    resumed = _take(ByteWindows(corpus.split("train"), seq_len=8).batches(3, start_step=resume_at), 2 * steps - 2)
    for (step_a, a), (step_b, b) in zip(uninterrupted[resume_at:], resumed, strict=True):
        assert step_a == step_b
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["document_ids"], b["document_ids"])


def test_ranks_partition_the_global_batch(corpus):
    windows = ByteWindows(corpus.split("train"), seq_len=8)
    batch_size, world = 2, 3
    single = _take(windows.batches(batch_size * world), 4)
    shards = [_take(windows.batches(batch_size, rank=r, world_size=world), 4) for r in range(world)]
    for step in range(4):
        for key in ("input_ids", "document_ids"):
            joined = torch.cat([shards[r][step][1][key] for r in range(world)])
            assert torch.equal(joined, single[step][1][key])
            assert shards[0][step][1][key].shape == (batch_size, 9)


# ---------------------------------------------------------------------------------------- Hugging Face datasets


def test_hf_dataset_streamed_from_a_local_folder(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    records = [{"text": f"record {i} 数据", "meta": i} for i in range(12)] + [{"text": "", "meta": 99}]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records))
    manifest = prepare_corpus(
        "hf", tmp_path / "c", [hf_source(str(folder), licence="CC0-1.0")], val_fraction=0.25, progress=False
    )
    corpus = PreparedCorpus(tmp_path / "c")
    found = documents_of(corpus.split("train")) + documents_of(corpus.split("val"))
    assert sorted(found) == sorted(r["text"].encode() for r in records[:12])
    assert manifest["sources"][0]["kind"] == "huggingface" and manifest["sources"][0]["licence"] == "CC0-1.0"
    assert manifest["text"]["empty_documents_dropped"] == 1
    with pytest.raises(ValueError, match="no field 'body'.*'meta', 'text'"):
        prepare_corpus("hf", tmp_path / "d", [hf_source(str(folder), text_field="body")], progress=False)
    with pytest.raises(ValueError, match="holds int"):
        prepare_corpus("hf", tmp_path / "d", [hf_source(str(folder), text_field="meta")], progress=False)


def test_cli_prepare_from_hf_and_files(tmp_path, text_folder, capsys):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "data.jsonl").write_text("\n".join(json.dumps({"body": f"line {i}"}) for i in range(40)))
    args = ["data", "prepare", "hfmini", "--hf-dataset", str(folder), "--text-field", "body", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "h"), "--max-bytes", "60"]) == 0
    assert sum(PreparedCorpus(tmp_path / "h").manifest["splits"][s]["documents"] for s in ("train", "val")) == 10
    out = tmp_path / "f"
    pattern = str(text_folder / "**" / "*.txt")
    assert main(["data", "prepare", "mini", "--files", pattern, "--out", str(out), "--no-progress"]) == 0
    assert main(["data", "info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "corpus 'mini'" in printed and "source files: 30 documents" in printed
    folder_out = tmp_path / "folder"
    assert (
        main(["data", "prepare", "mini", "--files", str(text_folder), "--out", str(folder_out), "--no-progress"]) == 0
    )
    assert PreparedCorpus(folder_out).manifest["sources"][0]["documents"] == 31  # 30 .txt + skip.md, not .git/
    assert main(["data", "prepare", "mini", "--files", str(tmp_path / "nothing*"), "--out", str(out)]) == 2
    assert main(["data", "prepare", "klingon", "--out", str(out)]) == 2
    assert "matches no files" in capsys.readouterr().err


# ------------------------------------------------------------------------------ never replacing the user's files


def folder_contents(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_refuses_a_folder_of_user_files_even_the_ones_it_reads(tmp_path, text_folder, capsys):
    before = folder_contents(text_folder)
    args = ["data", "prepare", "notes", "--files", str(text_folder), "--no-progress"]
    assert main([*args, "--out", str(text_folder)]) == 2  # the documents themselves
    err = capsys.readouterr().err
    assert f"{text_folder} is not a corpus written by hnet data prepare" in err and "nothing was changed" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert folder_contents(text_folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts"]  # no partial or renamed folder either


def test_prepare_refuses_an_existing_file_as_output(tmp_path, text_folder, capsys):
    target = tmp_path / "report.pdf"
    target.write_bytes(b"%PDF precious")
    assert main(["data", "prepare", "notes", "--files", str(text_folder), "--out", str(target), "--no-progress"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert target.read_bytes() == b"%PDF precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.pdf", "texts"]


def test_prepare_replaces_only_its_own_corpus(tmp_path):
    out = tmp_path / "c"
    prepare_corpus("first", out, [memory_source(sample_docs())], progress=False)
    assert json.loads((out / "manifest.json").read_text())["created_by"] == "dynamic_chunker"
    prepare_corpus("second", out, [memory_source(sample_docs(10))], progress=False)  # ours: replaced
    assert PreparedCorpus(out).name == "second"
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["created_by"]  # written before the mark existed: still recognised by its fields
    (out / "manifest.json").write_text(json.dumps(manifest))
    prepare_corpus("third", out, [memory_source(sample_docs(10))], progress=False)
    assert PreparedCorpus(out).name == "third"
    (out / "my_notes.txt").write_bytes(b"keep me")  # a corpus folder the user put a file into
    with pytest.raises(OutputFolderError, match="holds files that are not part of its corpus .my_notes.txt"):
        prepare_corpus("fourth", out, [memory_source(sample_docs(10))], progress=False)
    assert (out / "my_notes.txt").read_bytes() == b"keep me" and PreparedCorpus(out).name == "third"
    (out / "my_notes.txt").unlink()
    (out / "manifest.json").write_text(json.dumps({"name": "something else"}))  # a manifest of another tool
    with pytest.raises(OutputFolderError, match="is not a corpus written by hnet data prepare"):
        prepare_corpus("fifth", out, [memory_source(sample_docs(10))], progress=False)


def test_a_builtin_name_with_own_files_is_refused(tmp_path, text_folder, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "prepare", "english", "--files", str(text_folder), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'english' is the name of a built-in corpus" in err and "hnet data prepare my_english --files" in err
    assert not (tmp_path / "data").exists()


def test_offline_hub_dataset_fails_fast(tmp_path, monkeypatch, capsys):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: like a machine without network
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    start = time.monotonic()
    code = main(["data", "prepare", "web", "--hf-dataset", "someone/some-dataset", "--out", str(tmp_path / "w")])
    assert code == 2 and time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert "Hugging Face Hub at http://127.0.0.1:9 is not reachable" in err and "--files" in err


# ----------------------------------------------------------------------------------- Debian source extractors


def test_strip_roff_keeps_text_and_drops_markup():
    page = "\n".join(
        [
            '.\\" a comment',
            '.TH LS 1 "2022" "GNU coreutils"',
            ".SH 名称",
            "ls \\- 列出目录内容",
            ".SH 概述",
            "\\fBls\\fP [\\fI\\,选项\\/\\fP]...",
            ".PP",
            ".BR grep (1),",
            '.B "bold words"',
            ".IP \\(bu 2",
            "item \\(em dash \\*(lqquoted\\*(rq \\s-1small\\s0 \\e",
            ".de XX",
            "macro body is not text",
            "..",
            ".nf",
            "tail",
        ]
    )
    assert strip_roff(page) == (
        "名称\nls - 列出目录内容\n\n概述\nls [选项]...\n\ngrep(1),\nbold words\n\n•\n"
        "item — dash “quoted” small \\\ntail\n"
    )
    assert strip_roff(".so man1/other.1\n") == ""
    name, text = next(man_page("page.1.gz", gzip.compress(b".SH NAME\nfoo \\- bar\n")))
    assert (name, text) == ("page.1.gz", b"NAME\nfoo - bar\n")


def test_fortunes_split_and_lose_ansi_colours():
    raw = "\x1b[33m第一\x1b[m 条\n%\n第二条\n  -- \x1b[32;1m作者\x1b[;\x1b[34;1mm\n%\n%\n".encode()
    assert strip_ansi(b"\x1b[1;31mred\x1b[0m plain") == b"red plain"
    assert split_fortunes(strip_ansi(raw)) == ["第一 条\n".encode(), "第二条\n  -- 作者\n".encode()]
    assert list(fortunes("f", raw)) == [("f#0", "第一 条\n".encode()), ("f#1", "第二条\n  -- 作者\n".encode())]


def test_fasta_records_without_headers_in_upper_case():
    raw = b">chr1 some header\nacgtn\nACGT\r\n;comment\nRYkm\n>plasmid\nggcc\n\n>empty\n"
    assert fasta_records(raw) == [b"ACGTNACGTNNNN", b"GGCC"]
    assert fasta_records(b"ACGT\nTT\n") == [b"ACGTTT"]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs Debian's dpkg-deb")
def test_debian_part_from_a_cached_package(tmp_path):
    # a tiny package built here stands in for one fetched by `apt-get download` (already in the cache: no apt call)
    package = tmp_path / "pkg"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "DEBIAN" / "control").write_text(
        "Package: dc-test\nVersion: 1.2-3\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: test\n"
    )
    fortunes_dir = package / "usr" / "share" / "games" / "fortunes"
    fortunes_dir.mkdir(parents=True)
    (fortunes_dir / "zh").write_bytes("甲\n%\n\x1b[31m乙\x1b[m\n".encode())
    (fortunes_dir / "zh.dat").write_bytes(b"\x00\x01binary")
    (fortunes_dir / "alias").symlink_to("zh")
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(
        ["dpkg-deb", "-b", str(package), str(cache / "dc-test_1.2-3_all.deb")], check=True, capture_output=True
    )
    part = DebianPart("dc-test", "GPL-3.0+", "fortunes", lambda p: not p.endswith(".dat"), fortunes)
    source = debian_part_source(part, cache)
    assert source.info["version"] == "1.2-3" and source.info["licence"] == "GPL-3.0+"
    docs = list(source.documents)
    assert [(d.path, d.data) for d in docs] == [
        ("usr/share/games/fortunes/zh#0", "甲\n".encode()),
        ("usr/share/games/fortunes/zh#1", "乙\n".encode()),
    ]
    assert (cache / "unpacked" / "dc-test_1.2-3_all").is_dir()
    prepare_corpus("deb", tmp_path / "c", [debian_part_source(part, cache)], progress=False)  # reuses the unpacked tree
    assert PreparedCorpus(tmp_path / "c").manifest["sources"][0]["documents"] == 2


def test_bpe_pre_tokens_are_capped_so_text_without_spaces_trains():
    import random
    import time

    from dynamic_chunker.data.tokens import MAX_PIECE, train_bpe

    rng = random.Random(0)
    small = train_bpe(["ACGT" * 500], vocab_size=300)
    pieces = small.pre_tokenizer.pre_tokenize_str("ACGT" * 200)
    assert [len(p) for p, _ in pieces] == [MAX_PIECE, MAX_PIECE, MAX_PIECE, 800 - 3 * MAX_PIECE]
    # prose keeps GPT-2's split (the cap only cuts runs longer than MAX_PIECE)
    prose = small.pre_tokenizer.pre_tokenize_str("Hello world, it's  fine")
    assert [p for p, _ in prose] == ["Hello", "Ġworld", ",", "Ġit", "'s", "Ġ", "Ġfine"]
    dna = ["".join(rng.choice("ACGT") for _ in range(200_000)) for _ in range(2)]  # one 200 kB word per document
    start = time.perf_counter()
    tokenizer = train_bpe(dna, vocab_size=400)
    assert time.perf_counter() - start < 60  # uncapped, tokenizers does not finish this in minutes
    assert tokenizer.decode(tokenizer.encode(dna[0][:5000]).ids) == dna[0][:5000]
