"""ROUGE-L through rapidfuzz equals the textbook LCS definition."""

import random

import pytest

from dynalign.rouge import RougeIndex, pairwise, rouge_l, tokens


def _reference(a: str, b: str) -> float:
    x, y = tokens(a), tokens(b)
    if not x or not y:
        return 0.0
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i, tx in enumerate(x):
        for j, ty in enumerate(y):
            table[i + 1][j + 1] = table[i][j] + 1 if tx == ty else max(table[i][j + 1],
                                                                        table[i + 1][j])
    lcs = table[-1][-1]
    precision, recall = lcs / len(y), lcs / len(x)
    return 0.0 if lcs == 0 else 2 * precision * recall / (precision + recall)


def test_tokens_match_rouge_score_without_stemming():
    assert tokens("Plan a 7-day trip, O'Hare!") == ["plan", "a", "7", "day", "trip", "o", "hare"]


def test_hand_computed():
    # LCS of "the cat sat on the mat" / "the cat lay on a mat" is "the cat on mat": 4 tokens.
    assert rouge_l("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(8 / 12)
    assert rouge_l("same words here", "Same, words here.") == 1.0
    assert rouge_l("alpha beta", "gamma delta") == 0.0


def test_matches_reference_on_random_texts():
    rng = random.Random(0)
    words = "we plan a trip for the family and our friends next week with old car".split()
    texts = [" ".join(rng.choices(words, k=rng.randint(3, 30))) for _ in range(40)]
    for a, b in zip(texts, texts[1:]):
        assert rouge_l(a, b) == pytest.approx(_reference(a, b), abs=1e-6)


def test_nearest_and_pairwise():
    texts = ["plan a trip to the coast", "choose a new job", "plan a trip to the mountains"]
    index = RougeIndex(texts[:2])
    score, position = index.nearest(texts[2])
    assert position == 0 and score == pytest.approx(_reference(texts[0], texts[2]))
    assert RougeIndex().nearest("anything") == (0.0, None)
    scores = pairwise(texts)
    assert len(scores) == 3
    assert max(scores) == pytest.approx(score)
