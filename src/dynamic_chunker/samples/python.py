import json
from pathlib import Path


def load_settings(path: str | Path) -> dict:
    """Read a JSON settings file; a missing file gives the defaults."""
    path = Path(path)
    if not path.exists():
        return {"threads": 2, "verbose": False}
    with path.open(encoding="utf-8") as file:
        return json.load(file)


class Counter:
    """Counts how often each word occurs."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def add(self, text: str) -> None:
        for word in text.split():
            self.counts[word] = self.counts.get(word, 0) + 1

    def most_common(self, n: int = 10) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda item: -item[1])[:n]
