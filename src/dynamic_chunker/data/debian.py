"""The built-in corpora, cut from Debian packages fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``.

Nothing is installed: each .deb is kept in a cache folder (downloaded once) and unpacked next to it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgument
from .prepare import Document, Source
from .sources import fasta_records, split_fortunes, strip_ansi, strip_roff

LINUX_DOC = "usr/share/doc/linux-doc-6.1/Documentation/"
ZH_TRANSLATIONS = (LINUX_DOC + "translations/zh_CN/", LINUX_DOC + "translations/zh_TW/")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dynamic_chunker" / "debian"


def _gunzip(path: str, data: bytes) -> bytes:
    return gzip.decompress(data) if path.endswith(".gz") else data


def whole_file(path: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    yield path, _gunzip(path, data)


def man_page(path: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    # surrogateescape carries any invalid byte through to the corpus's UTF-8 policy instead of deciding here
    yield path, strip_roff(_gunzip(path, data).decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")


def fortunes(path: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    for index, text in enumerate(split_fortunes(strip_ansi(data))):
        yield f"{path}#{index}", text


def fasta(path: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    for index, sequence in enumerate(fasta_records(_gunzip(path, data))):
        yield f"{path}#{index}", sequence


@dataclass(frozen=True)
class DebianPart:
    """Which files of one package make documents, and how. ``select`` sees paths relative to the package root."""

    package: str
    licence: str
    selection: str
    select: Callable[[str], bool]
    extract: Callable[[str, bytes], Iterator[tuple[str, bytes]]] = whole_file


RECIPES: dict[str, tuple[DebianPart, ...]] = {
    "english": (
        DebianPart(
            "linux-doc-6.1",
            "GPL-2",
            f"{LINUX_DOC}**/*.rst.gz outside translations/",
            lambda p: p.startswith(LINUX_DOC) and p.endswith(".rst.gz") and "/translations/" not in p,
        ),
        DebianPart(
            "python3.11-doc",
            "PSF-2.0",
            "usr/share/doc/python3.11/html/_sources/**/*.rst.txt (the reStructuredText sources of the HTML pages)",
            lambda p: p.startswith("usr/share/doc/python3.11/html/_sources/") and p.endswith(".rst.txt"),
        ),
        DebianPart(
            "perl-doc", "GPL-1+ or Artistic", "**/*.pod, **/*.pod.gz", lambda p: p.endswith((".pod", ".pod.gz"))
        ),
    ),
    "code": (
        DebianPart(
            "libpython3.11-stdlib",
            "PSF-2.0",
            "usr/lib/python3.11/**/*.py",
            lambda p: p.startswith("usr/lib/python3.11/") and p.endswith(".py"),
        ),
    ),
    "chinese": (
        DebianPart(
            "linux-doc-6.1",
            "GPL-2",
            f"{ZH_TRANSLATIONS[0]}** and {ZH_TRANSLATIONS[1]}** (gunzipped)",
            lambda p: p.startswith(ZH_TRANSLATIONS),
        ),
        DebianPart(
            "manpages-zh",
            "GFDL-1.2+",
            "usr/share/man/zh_CN/** and usr/share/man/zh_TW/** with roff requests and escapes stripped",
            lambda p: p.startswith(("usr/share/man/zh_CN/", "usr/share/man/zh_TW/")),
            man_page,
        ),
        DebianPart(
            "fortunes-zh",
            "GPL-3.0+",
            "usr/share/games/fortunes/{chinese,song100,tang300}, one document per fortune, ANSI escapes stripped",
            lambda p: p.startswith("usr/share/games/fortunes/") and not p.endswith(".dat"),
            fortunes,
        ),
    ),
    "dna": (
        DebianPart(
            "ragout-examples",
            "BSD-3-clause (package); public NCBI RefSeq genome sequences",
            "usr/share/doc/ragout/examples/*/references/*.fasta.gz: one document per FASTA record, header and line "
            "breaks removed, upper-case A/C/G/T with every other symbol as N",
            lambda p: "/references/" in p and p.endswith((".fasta", ".fasta.gz")),
            fasta,
        ),
    ),
}


def _run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which(command[0]) is None:
        raise FileNotFoundError(
            f"`{command[0]}` not found: the built-in corpora need Debian's apt-get and dpkg-deb; on other systems "
            f"prepare your own text with --files or --hf-dataset"
        )
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


def download_deb(package: str, cache_dir: Path) -> Path:
    """The cached .deb of ``package``, fetched with ``apt-get download`` (after ``apt-get update`` if needed)."""
    cached = sorted(cache_dir.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
    if cached:
        return cached[-1]
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".download-{package}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    result = _run(["apt-get", "download", package], cwd=staging)
    if result.returncode != 0:  # usually stale or missing package lists
        _run(["apt-get", "update"])
        result = _run(["apt-get", "download", package], cwd=staging)
    debs = list(staging.glob(f"{package}_*.deb"))
    if result.returncode != 0 or len(debs) != 1:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"`apt-get download {package}` failed:\n{result.stderr.strip()}")
    target = cache_dir / debs[0].name
    debs[0].rename(target)  # a .deb appears in the cache only once complete
    shutil.rmtree(staging, ignore_errors=True)
    return target


def unpack_deb(deb: Path) -> Path:
    """``dpkg-deb -x`` of ``deb`` into ``<cache>/unpacked/<deb name>``, once."""
    root = deb.parent / "unpacked" / deb.stem
    if root.is_dir():
        return root
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    result = _run(["dpkg-deb", "-x", str(deb), str(partial)])
    if result.returncode != 0:
        raise RuntimeError(f"`dpkg-deb -x {deb}` failed (delete it to download again):\n{result.stderr.strip()}")
    partial.rename(root)
    return root


def deb_field(deb: Path, name: str) -> str:
    result = _run(["dpkg-deb", "-f", str(deb), name])
    if result.returncode != 0:
        raise RuntimeError(f"`dpkg-deb -f {deb} {name}` failed:\n{result.stderr.strip()}")
    return result.stdout.strip()


def part_documents(part: DebianPart, root: Path) -> Iterator[Document]:
    """Documents of ``part`` from an unpacked package: regular files only (symlinks are aliases), sorted by path."""
    files = sorted(
        path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file() and not path.is_symlink()
    )
    for relative in files:
        if part.select(relative):
            for name, data in part.extract(relative, (root / relative).read_bytes()):
                yield Document(name, data)


def debian_part_source(part: DebianPart, cache_dir: Path) -> Source:
    deb = download_deb(part.package, cache_dir)
    root = unpack_deb(deb)
    info = {
        "kind": "debian",
        "package": part.package,
        "version": deb_field(deb, "Version"),
        "deb": deb.name,
        "deb_sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
        "licence": part.licence,
        "copyright": f"/usr/share/doc/{part.package}/copyright",
        "selection": part.selection,
    }
    return Source(name=part.package, info=info, documents=part_documents(part, root))


def debian_sources(recipe: str, cache_dir: Path | None = None) -> list[Source]:
    """Sources of a built-in corpus (``english``, ``code``, ``chinese``, ``dna``); downloads what the cache lacks."""
    if recipe not in RECIPES:
        raise InvalidArgument(f"unknown built-in corpus {recipe!r}; choose one of {', '.join(RECIPES)} or pass --files")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return [debian_part_source(part, cache_dir) for part in RECIPES[recipe]]
