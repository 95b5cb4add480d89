"""Writing a prepared corpus: documents from sources -> split by path hash -> ``{split}.bin/.idx`` + ``manifest.json``.

The directory is built next to its destination and swapped in only when complete and fsynced, so an interrupted
prepare leaves either the previous corpus or none, never a corrupt one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from ..errors import InvalidArgument, OutputFolderError
from ..files import atomic_write, fsync_dir
from .corpus import BOS, FORMAT_VERSION, IDX_DTYPE, MANIFEST

SPLITS = ("train", "val")
INVALID_UTF8_POLICIES = ("replace", "drop")
CREATED_BY = "dynamic_chunker"  # the manifest's mark of a corpus folder that prepare_corpus may replace
CORPUS_FILES = {MANIFEST, *(f"{split}.{ext}" for split in SPLITS for ext in ("bin", "idx"))}


@dataclass(frozen=True)
class Document:
    """One document: ``path`` names it stably inside its source (the split hashes it); ``data`` is its raw bytes."""

    path: str
    data: bytes


@dataclass
class Source:
    """An origin of documents. ``info`` goes to the manifest (kind, package, version, licence, what was selected).

    ``documents`` is usually a generator: a Source is read once.
    """

    name: str
    info: dict[str, Any]
    documents: Iterable[Document]


def split_hash(seed: int, source: str, path: str) -> float:
    """A document's position in [0, 1): sha256 of ``seed:source:path``; it goes to validation below the fraction."""
    digest = hashlib.sha256(f"{seed}:{source}:{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class _SplitWriter:
    """Streams documents of one split into ``{split}.bin``, remembering BOS offsets and the running sha256."""

    def __init__(self, folder: Path, name: str) -> None:
        self.name = name
        self.bin_path = folder / f"{name}.bin"
        self.idx_path = folder / f"{name}.idx"
        self.file: BinaryIO = open(self.bin_path, "wb")
        self.digest = hashlib.sha256()
        self.offsets: list[int] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self.offsets.append(self.size)
        for piece in (bytes([BOS]), data):
            self.file.write(piece)
            self.digest.update(piece)
        self.size += 1 + len(data)

    def close(self) -> dict[str, Any]:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        idx = np.asarray(self.offsets, dtype=IDX_DTYPE).tobytes()
        atomic_write(self.idx_path, idx)
        return {
            "documents": len(self.offsets),
            "bytes": self.size,
            "files": {
                self.bin_path.name: {"bytes": self.size, "sha256": self.digest.hexdigest()},
                self.idx_path.name: {"bytes": len(idx), "sha256": hashlib.sha256(idx).hexdigest()},
            },
        }


class _Splitter:
    """Assigns documents to train/val by hash, guaranteeing both splits at least one document.

    The train document with the smallest hash and the val document with the largest are held back until the end:
    if a split would be empty, the held document nearest the threshold moves into it. The rule depends only on the
    set of paths, never on their order.
    """

    def __init__(self, folder: Path, val_fraction: float) -> None:
        self.val_fraction = val_fraction
        self.writers = {name: _SplitWriter(folder, name) for name in SPLITS}
        self.held: dict[str, tuple[float, bytes] | None] = {"train": None, "val": None}

    def add(self, position: float, data: bytes) -> None:
        split = "val" if position < self.val_fraction else "train"
        held = self.held[split]
        # train holds its smallest position, val its largest: the documents closest to the other split.
        closer = held is None or (position < held[0] if split == "train" else position > held[0])
        if closer:
            if held is not None:
                self.writers[split].write(held[1])
            self.held[split] = (position, data)
        else:
            self.writers[split].write(data)

    def close(self) -> dict[str, dict[str, Any]]:
        held = dict(self.held)
        if held["train"] is None and held["val"] is None:
            raise InvalidArgument("no documents: every source was empty (check the paths, globs or dataset name)")
        for split, other in (("train", "val"), ("val", "train")):
            if self.held[split] is None:  # all documents fell into `other`: move its nearest one over
                if not self.writers[other].offsets:
                    raise InvalidArgument("a corpus needs at least 2 documents to have both a train and a val split")
                held[split], held[other] = held[other], None
        for split in SPLITS:
            if held[split] is not None:
                self.writers[split].write(held[split][1])
        return {split: self.writers[split].close() for split in SPLITS}


def _clean_utf8(data: bytes, policy: str) -> bytes | None:
    """The document's bytes if valid UTF-8; otherwise U+FFFD replacements (``replace``) or None (``drop``)."""
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace").encode("utf-8") if policy == "replace" else None


def check_replaceable(out: Path) -> None:
    """Refuse to write a corpus over anything but nothing, an empty folder, or a corpus folder this module wrote.

    A corpus folder is recognised by its manifest (``created_by``, or the fields of manifests written before that
    mark) and must hold nothing but the corpus files, so that no file of the user's is ever deleted.
    """
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise OutputFolderError(f"--out {out} is a file, not a folder; choose a new folder for the corpus")
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    ours = isinstance(manifest, dict) and (
        manifest.get("created_by") == CREATED_BY or {"format_version", "split_rule", "splits"} <= manifest.keys()
    )
    others = [name for name in names if name not in CORPUS_FILES]
    if not ours or others:
        shown = ", ".join((others or names)[:5]) + (" ..." if len(others or names) > 5 else "")
        what = "holds files that are not part of its corpus" if ours else "is not a corpus written by hnet data prepare"
        raise OutputFolderError(
            f"{out} {what} ({shown}); nothing was changed. Choose a new or empty folder with --out"
        )


def _replace_dir(built: Path, out: Path) -> None:
    """Swap ``built`` in as ``out``; the previous corpus is removed only after the new one is in place."""
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    built.rename(out)
    fsync_dir(out.parent)
    if old.exists():
        shutil.rmtree(old)


def prepare_corpus(
    name: str,
    out: str | Path,
    sources: list[Source],
    *,
    val_fraction: float = 0.01,
    seed: int = 0,
    invalid_utf8: str = "replace",
    max_bytes: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the documents of ``sources`` as a prepared corpus in ``out`` and return its manifest.

    Each document goes to ``val`` when ``split_hash(seed, source, path) < val_fraction`` (both splits get at least
    one document). Documents that are not valid UTF-8 are repaired with U+FFFD (``invalid_utf8="replace"``) or left
    out (``"drop"``); empty documents are left out. ``max_bytes`` stops after that many document bytes.
    """
    if not 0.0 < val_fraction < 1.0:
        raise InvalidArgument(f"val_fraction must be in (0, 1), got {val_fraction}")
    if invalid_utf8 not in INVALID_UTF8_POLICIES:
        raise InvalidArgument(f"invalid_utf8 must be one of {INVALID_UTF8_POLICIES}, got {invalid_utf8!r}")
    if max_bytes is not None and max_bytes < 1:
        raise InvalidArgument(f"max_bytes must be a positive number of bytes, got {max_bytes}")
    if not sources:
        raise InvalidArgument("no sources given")
    out = Path(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    building = out.with_name(f".{out.name}.partial")
    if building.exists():
        shutil.rmtree(building)
    building.mkdir()

    splitter = _Splitter(building, val_fraction)
    text = {"invalid_utf8": invalid_utf8, "documents_with_invalid_utf8": 0, "empty_documents_dropped": 0}
    counts = [{"documents": 0, "bytes": 0} for _ in sources]
    total = 0
    bar = tqdm(total=max_bytes, unit="B", unit_scale=True, desc=f"preparing {name}", disable=not progress)
    try:
        for index, document in _documents(sources):
            if max_bytes is not None and total >= max_bytes:
                break
            data = _clean_utf8(document.data, invalid_utf8)
            if data is not document.data:
                text["documents_with_invalid_utf8"] += 1
            if data is None:
                continue
            if not data:
                text["empty_documents_dropped"] += 1
                continue
            splitter.add(split_hash(seed, sources[index].name, document.path), data)
            counts[index]["documents"] += 1
            counts[index]["bytes"] += len(data)
            total += len(data)
            bar.update(len(data))
            bar.set_postfix_str(sources[index].name, refresh=False)
        splits = splitter.close()
    except BaseException:
        for writer in splitter.writers.values():
            writer.file.close()
        shutil.rmtree(building, ignore_errors=True)
        raise
    finally:
        bar.close()
    manifest = {
        "format_version": FORMAT_VERSION,
        "created_by": CREATED_BY,
        "name": name,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "bos": BOS,
        "sources": [{"name": s.name, **s.info, **c} for s, c in zip(sources, counts)],
        "split_rule": {
            "rule": "a document goes to val when the first 8 bytes of sha256(f'{seed}:{source}:{path}'), read as a "
            "big-endian integer / 2**64, are below val_fraction; if a split would be empty, the document of the "
            "other split nearest the threshold moves to it",
            "seed": seed,
            "val_fraction": val_fraction,
        },
        "text": text,
        "max_bytes": max_bytes,
        "splits": splits,
    }
    atomic_write(building / MANIFEST, (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
    _replace_dir(building, out)
    return manifest


def _documents(sources: list[Source]) -> Iterator[tuple[int, Document]]:
    for index, source in enumerate(sources):
        for document in source.documents:
            yield index, document
