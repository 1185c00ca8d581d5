"""ROUGE-L between prompts, fast enough for every pair of a 1,000-prompt set.

Tokens as the `rouge_score` package makes them without stemming: lowercase, runs of [a-z0-9].
ROUGE-L F1 is 2*LCS/(len_a+len_b), which is exactly rapidfuzz's normalized Indel similarity, so
each token becomes one character of a private alphabet and rapidfuzz's C++ LCS does the work
(all 499,500 pairs of 1,000 prompts in about a second, against minutes in pure Python).
"""

from __future__ import annotations

import re

from rapidfuzz import process
from rapidfuzz.distance import Indel

_TOKEN = re.compile(r"[a-z0-9]+")
_FIRST_CODE_POINT = 0x10000  # beyond the surrogates: room for a million distinct tokens


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class RougeIndex:
    """Texts encoded over one shared token alphabet; ROUGE-L of a new text against all of them."""

    def __init__(self, texts=()):
        self._alphabet: dict[str, str] = {}
        self.encoded: list[str] = []
        for text in texts:
            self.add(text)

    def encode(self, text: str) -> str:
        alphabet = self._alphabet
        return "".join(alphabet.setdefault(t, chr(_FIRST_CODE_POINT + len(alphabet)))
                       for t in tokens(text))

    def add(self, text: str) -> None:
        self.encoded.append(self.encode(text))

    def nearest(self, text: str) -> tuple[float, int | None]:
        """(highest ROUGE-L F1 against the indexed texts, its position), (0.0, None) if empty."""
        if not self.encoded:
            return 0.0, None
        _, score, position = process.extractOne(self.encode(text), self.encoded,
                                                scorer=Indel.normalized_similarity)
        return float(score), position

    def matrix(self):
        """The full symmetric ROUGE-L F1 matrix (numpy float32), on all cores."""
        return process.cdist(self.encoded, self.encoded, scorer=Indel.normalized_similarity,
                             workers=-1)


def rouge_l(a: str, b: str) -> float:
    index = RougeIndex([a])
    return index.nearest(b)[0]


def pairwise(texts: list[str]):
    """ROUGE-L F1 of every unordered pair, as a flat numpy array."""
    import numpy as np

    matrix = RougeIndex(texts).matrix()
    return matrix[np.triu_indices(len(texts), k=1)]
