"""Document sources (local files, Hugging Face datasets) and the cleaners that turn packaged files into plain text."""

from __future__ import annotations

import glob
import os
import re
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument, UserError
from .prepare import Document, Source

# ---------------------------------------------------------------------------------------------------- local files


def expand_patterns(patterns: list[str]) -> list[Path]:
    """Files named by ``patterns`` (files, folders, globs with ``**``), sorted and deduplicated.

    Folders are walked recursively, leaving out hidden files and folders (``.git`` and the like).
    """
    found: set[Path] = set()
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            matches = [
                p
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
        elif path.is_file():
            matches = [path]
        else:
            matches = [Path(p) for p in glob.glob(str(path), recursive=True) if os.path.isfile(p)]
        if not matches:
            raise FileNotFoundError(f"{pattern!r} matches no files (quote globs so the shell leaves them to us)")
        found.update(Path(os.path.normpath(p)) for p in matches)
    return sorted(found)


def file_source(patterns: list[str], licence: str = "unspecified") -> Source:
    """One document per file; the path as matched (relative when the pattern is) decides its split."""
    files = expand_patterns(patterns)

    def documents() -> Iterator[Document]:
        for path in files:
            yield Document(path.as_posix(), path.read_bytes())

    info = {"kind": "files", "patterns": list(patterns), "files": len(files), "licence": licence}
    return Source(name="files", info=info, documents=documents())


# ------------------------------------------------------------------------------------------ Hugging Face datasets


def hf_source(
    dataset: str, config: str | None = None, split: str = "train", text_field: str = "text", licence: str | None = None
) -> Source:
    """Stream ``dataset`` (a hub name or a local folder/file understood by ``datasets.load_dataset``).

    Each record's ``text_field`` is one document, named by its position in the stream.
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError("Hugging Face datasets need `pip install 'dynamic_chunker[hf]'`") from err
    if not Path(dataset).exists():
        _check_hub_reachable(dataset)
    stream = datasets.load_dataset(dataset, config, split=split, streaming=True)
    info_licence = getattr(getattr(stream, "info", None), "license", None)

    def documents() -> Iterator[Document]:
        for index, record in enumerate(stream):
            if text_field not in record:
                raise InvalidArgument(
                    f"dataset {dataset!r} has no field {text_field!r}; its fields are {sorted(record)}: "
                    f"pass --text-field with one of them"
                )
            text = record[text_field]
            if not isinstance(text, str):
                raise InvalidArgument(
                    f"field {text_field!r} of dataset {dataset!r} holds {type(text).__name__}, not text"
                )
            yield Document(str(index), text.encode("utf-8", errors="surrogatepass"))

    info: dict[str, Any] = {
        "kind": "huggingface",
        "dataset": dataset,
        "config": config,
        "split": split,
        "text_field": text_field,
        "licence": licence or info_licence or "unspecified",
    }
    return Source(name=f"hf:{dataset}", info=info, documents=documents())


def _check_hub_reachable(dataset: str, timeout: float = 5.0) -> None:
    """Fail at once when the Hub cannot be reached, instead of after the datasets library's retries.

    Skipped when the datasets library is told to work offline (it then reads its local cache).
    """
    offline = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    if any(os.environ.get(name, "").lower() in ("1", "true", "yes") for name in offline):
        return
    url = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError as err:
        raise UserError(
            f"cannot stream {dataset!r}: the Hugging Face Hub at {url.geturl()} is not reachable ({err}). Without "
            "network, give a local dataset folder, use --files, or set HF_DATASETS_OFFLINE=1 to read the local cache"
        ) from None


# ------------------------------------------------------------------------------------------------------- cleaners

_ANSI = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")


def strip_ansi(data: bytes) -> bytes:
    """Remove ANSI terminal escapes (colours, cursor moves), also escapes broken by another nested inside them."""
    while (stripped := _ANSI.sub(b"", data)) != data:
        data = stripped
    return data


def split_fortunes(data: bytes) -> list[bytes]:
    """The fortunes of a strfile-format file: texts separated by lines holding only ``%``."""
    pieces = re.split(rb"(?m)^%\r?(?:\n|\Z)", data)
    return [piece for piece in pieces if piece.strip()]


def _fasta_table() -> bytes:
    table = bytearray(b"N" * 256)
    for base in b"ACGTN":
        table[base] = table[base | 0x20] = base
    return bytes(table)


_FASTA_TABLE = _fasta_table()


def fasta_records(data: bytes) -> list[bytes]:
    """The sequences of a FASTA file, headers and line breaks removed, as upper-case A/C/G/T (anything else -> N)."""
    records = []
    for record in re.split(rb"(?m)^>.*$", data):
        lines = [line for line in record.splitlines() if not line.startswith(b";")]
        sequence = b"".join(lines).translate(None, b" \t\r\n").translate(_FASTA_TABLE)
        if sequence:
            records.append(sequence)
    return records


# Named roff glyphs that carry text; any other named glyph is dropped.
_GLYPHS = {
    "em": "—", "en": "–", "hy": "-", "mi": "-", "bu": "•", "co": "©", "rg": "®", "tm": "™", "lq": "“", "rq": "”",
    "oq": "‘", "cq": "’", "aq": "'", "dq": '"', "ti": "~", "ha": "^", "rs": "\\", "sl": "/", "ga": "`", "aa": "´",
    "de": "°", "mu": "×", "di": "÷", "+-": "±", "<=": "≤", ">=": "≥", "!=": "≠", "->": "→", "<-": "←", "Tm": "™",
    "R": "®",
}  # fmt: skip
_ROFF_ESCAPE = re.compile(
    r"""\\(?:
        [fFsSn*mM]?\[[^\]]*\]             # \f[B] \s[+2] \n[reg] \*[str] \[glyph]
      | [fFn*mM]\(..                      # \f(CW \n(xx \*(lq
      | [fFn*mM].                         # \fB \nx \*R
      | s[-+]?\d\d?                       # \s-1 \s0
      | \(..                              # \(em
      | [hvwlLoXZDNbBCAR]'[^']*'          # \h'...' and other quoted-argument escapes
      | ".*                               # comment to the end of the line
      | .                                 # \- \e \& \| \^ \~ and friends
    )""",
    re.VERBOSE,
)
_SINGLE = {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "`": "`", "'": "´", ".": ".", "t": "\t"}
_HEADING_MACROS = {"SH", "SS"}
_TEXT_MACROS = {"B", "I", "SM", "SB"}  # their arguments are running text
_PARAGRAPH_MACROS = {"PP", "LP", "P", "sp", "TP", "HP", "IP"}  # a blank line; .IP also prints its tag
_JOINED_MACROS = {"BR", "RB", "IR", "RI", "BI", "IB"}  # alternating fonts: arguments join without spaces


def _roff_escape(match: re.Match[str]) -> str:
    token = match.group(0)[1:]
    if token.startswith("(") and len(token) == 3:
        return _GLYPHS.get(token[1:], "")
    if token.startswith("[") and token.endswith("]"):
        return _GLYPHS.get(token[1:-1], "")
    if token.startswith("*"):
        name = token[1:].strip("([]")
        return _GLYPHS.get(name, "")
    return _SINGLE.get(token, "") if len(token) == 1 else ""


def _roff_args(rest: str) -> list[str]:
    return [a[1:-1] if a.startswith('"') else a for a in re.findall(r'"[^"]*"?|\S+', rest)]


def strip_roff(text: str) -> str:
    """Plain text of a man page: requests and font/size escapes removed, headings and paragraph breaks kept.

    A page that is only a ``.so`` redirect to another page comes out empty.
    """
    out: list[str] = []
    lines = iter(text.splitlines())
    for line in lines:
        if not line.startswith((".", "'")):
            out.append(_ROFF_ESCAPE.sub(_roff_escape, line))
            continue
        macro, _, rest = line[1:].lstrip().partition(" ")
        if macro in ("de", "ig"):  # definitions and ignored blocks run until a line ".."
            for inner in lines:
                if inner.strip() == "..":
                    break
            continue
        words = _roff_args(rest)
        if macro in _HEADING_MACROS or macro in _PARAGRAPH_MACROS:
            out.append("")
        if macro == "IP":
            words = words[:1]
        elif macro not in _HEADING_MACROS and macro not in _TEXT_MACROS and macro not in _JOINED_MACROS:
            continue  # every other request (.TH .br .nf .fi .RS .RE .so .in .ft .if ...) carries no running text
        joined = ("" if macro in _JOINED_MACROS else " ").join(words)
        if joined:
            out.append(_ROFF_ESCAPE.sub(_roff_escape, joined))
    plain = re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n")
    return plain + "\n" if plain.strip() else ""
