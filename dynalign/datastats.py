"""Diversity of a prompt set, as the paper's Figure 3 shows it: the distribution of pairwise
ROUGE-L between prompts and the distribution of prompt lengths, as numbers and as PNG plots."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from dynalign.dataset import NEAR_DUPLICATE, word_count
from dynalign.rouge import pairwise


def measure(rows: list[dict]):
    """(summary dict, pairwise ROUGE-L array, word counts array)."""
    import numpy as np

    scores = pairwise([row["prompt"] for row in rows])
    lengths = np.array([word_count(row["prompt"]) for row in rows])
    return {
        "rows": len(rows),
        "splits": dict(Counter(row.get("split", "none") for row in rows)),
        "areas": len({row.get("area") for row in rows if row.get("area")}),
        "rouge_l": {**_summary(scores), "pairs": int(scores.size),
                    f"pairs_at_or_above_{NEAR_DUPLICATE}": int((scores >= NEAR_DUPLICATE).sum())},
        "words": _summary(lengths),
    }, scores, lengths


def _summary(values) -> dict:
    import numpy as np

    if values.size == 0:
        return {}
    p10, median, p90, p99 = np.quantile(values, [0.1, 0.5, 0.9, 0.99])
    stats = {"min": values.min(), "p10": p10, "median": median, "mean": values.mean(),
             "p90": p90, "p99": p99, "max": values.max()}
    return {name: round(float(value), 4) for name, value in stats.items()}


def write_report(rows: list[dict], out_dir: Path) -> dict:
    """stats.json, rouge_l.png and lengths.png in out_dir; returns the stats."""
    summary, scores, lengths = measure(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stats.json").write_text(json.dumps(summary, indent=2) + "\n")
    _histogram(scores, out_dir / "rouge_l.png", bins=[i / 50 for i in range(51)],
               xlabel="ROUGE-L F1 between two prompts", title="Pairwise similarity",
               marker=NEAR_DUPLICATE)
    _histogram(lengths, out_dir / "lengths.png", bins=range(0, 106, 5),
               xlabel="words per prompt", title="Prompt length")
    return summary


def _histogram(values, path: Path, bins, xlabel: str, title: str, marker=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.hist(values, bins=bins, color="#4c72b0", edgecolor="white")
    if marker is not None:
        ax.axvline(marker, color="#c44e52", linestyle="--", linewidth=1,
                   label=f"near-duplicate threshold {marker}")
        ax.legend(loc="upper right", frameon=False)
    ax.set(xlabel=xlabel, ylabel="count", title=f"{title} (n={len(values):,})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_summary(summary: dict) -> str:
    r, w = summary["rouge_l"], summary["words"]
    near = r.get(f"pairs_at_or_above_{NEAR_DUPLICATE}", 0)
    return "\n".join([
        f"rows: {summary['rows']} ({', '.join(f'{k} {v}' for k, v in summary['splits'].items())})",
        f"pairwise ROUGE-L over {r.get('pairs', 0):,} pairs: median {r.get('median')}, "
        f"p90 {r.get('p90')}, p99 {r.get('p99')}, max {r.get('max')}; "
        f"pairs >= {NEAR_DUPLICATE}: {near}",
        f"words per prompt: min {w.get('min')}, median {w.get('median')}, "
        f"mean {w.get('mean')}, max {w.get('max')}",
    ])
