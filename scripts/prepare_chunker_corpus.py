"""The bundled chunking model's training corpus: all of `english`, plus the first CODE_MB of `code` (Python standard
library) and CHINESE_MB of `chinese`, so the model has seen source code and text without spaces.

    python scripts/prepare_chunker_corpus.py OUT_FOLDER [--code-mb 6] [--chinese-mb 6]

Uses the Debian packages of `hnet data prepare english|code|chinese` (downloaded once into the usual cache).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from dynamic_chunker.data import debian_sources, prepare_corpus
from dynamic_chunker.data.prepare import Document, Source


def capped(source: Source, max_bytes: int) -> Source:
    """The same source, stopping before the document that would take it past ``max_bytes``."""

    def documents() -> Iterator[Document]:
        total = 0
        for doc in source.documents:
            if total + len(doc.data) > max_bytes:
                return
            total += len(doc.data)
            yield doc

    info = {**source.info, "selection": f"{source.info.get('selection', '')}; first {max_bytes:,} bytes"}
    return Source(source.name, info, documents())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--code-mb", type=float, default=6)
    parser.add_argument("--chinese-mb", type=float, default=6)
    args = parser.parse_args()
    sources = debian_sources("english")
    sources += [capped(s, int(args.code_mb * 1e6)) for s in debian_sources("code")]
    chinese = debian_sources("chinese")
    share = int(args.chinese_mb * 1e6 / len(chinese))
    sources += [capped(s, share) for s in chinese]
    prepare_corpus("chunker_mix", args.out, sources)


if __name__ == "__main__":
    main()
