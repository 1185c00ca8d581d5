"""The operator console's four charts, drawn with matplotlib (gr.Plot shows them as images):
the reward per step of each recent round, each version's scores from the evaluation gate, each
version's win rate against the base model from its scoreboard, and each version's score on each
aspect of CA from its scoreboard.

matplotlib's object API (`Figure`, no pyplot): every call draws its own figure, so two operators'
sessions drawing at once share nothing. The data comes from ui/console_views.py.
"""

from __future__ import annotations

REWARD_SCALE = (0.0, 5.0)  # every reward kind (self, rule, judge) scores 0-5
METRICS = {"win_rate": "win rate vs the active version", "ifeval": "IFEval prompt-level strict",
           "math": "math accuracy", "mc": "multiple-choice accuracy"}
SIZE = (6.4, 3.6)
MAX_TICKS = 10
SCOREBOARD_EMPTY = "no scoreboard yet: `dynalign eval scoreboard` or eval.scoreboard"
READING_STYLES = {"pointwise": {"marker": "o", "linestyle": "-"},
                  "balanced": {"marker": "s", "linestyle": "--"}}
DODGE = 0.06  # series side by side within a version, so their error bars do not hide each other


def _figure(title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE, layout="constrained")
    ax = fig.subplots()
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return fig, ax


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)
    ax.set_xticks([])


def reward_figure(series: dict[str, list[tuple[int, float]]]):
    """Mean reward per step, a line with markers per round (one-step rounds show as a point)."""
    fig, ax = _figure("Reward per step")
    values = [r for points in series.values() for _, r in points]
    ax.set_ylim(min([REWARD_SCALE[0], *values]) - 0.1, max([REWARD_SCALE[1], *values]) + 0.1)
    ax.set_ylabel("mean reward of the step's answers")
    if not series:
        _empty(ax, "no round has finished a step yet")
        return fig
    for label, points in series.items():
        steps, rewards = zip(*points)
        ax.plot(steps, rewards, marker="o", label=label)
    last = max(step for points in series.values() for step, _ in points)
    ax.set_xlabel("step")
    ax.set_xlim(0.5, last + 0.5)
    ax.set_xticks(range(1, last + 1, -(-last // MAX_TICKS)))  # whole steps, at most MAX_TICKS
    ax.legend(loc="best", fontsize="small")
    return fig


def _label(row: dict) -> str:
    if row["version"] is None:
        return "base"
    return f"v{row['version']}\n{row['status']}" if row.get("status") else f"v{row['version']}"


def _bars(ax, rows: list[dict], metric: str, offset: float, width: float) -> None:
    """One metric's bars, shifted by `offset` within each version's group, values on top; "n/a"
    where the judge gave a candidate no verdict."""
    xs = [n + offset for n in range(len(rows))]
    values = [row.get(metric) for row in rows]
    bars = ax.bar([x for x, v in zip(xs, values) if v is not None],
                  [v for v in values if v is not None], width, label=METRICS[metric])
    ax.bar_label(bars, fmt="%.2f", fontsize="x-small")
    for x, row, value in zip(xs, rows, values):
        if value is None and metric == "win_rate" and row["version"] is not None:
            ax.text(x, 0.01, "n/a", ha="center", va="bottom", fontsize="x-small")


def eval_figure(rows: list[dict]):
    """Grouped bars: each version's win rate and capability scores (0-1), as the gate measured them."""
    fig, ax = _figure("Evaluation gate: scores per version")
    ax.set_ylim(0, 1.25)  # room for the legend above 1
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    metrics = [m for m in METRICS if any(row.get(m) is not None for row in rows)]
    if not metrics:
        _empty(ax, "no version was measured by the evaluation gate yet\n([learn.gate] enabled)")
        return fig
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        _bars(ax, rows, metric, (i - (len(metrics) - 1) / 2) * width, width)
    ax.set_xticks(range(len(rows)), [_label(row) for row in rows])
    ax.set_ylabel("score (0-1)")
    ax.legend(loc="upper left", fontsize="small", ncols=2)
    return fig


def _error_bars(ax, xs: list[float], points: list[tuple], color: str) -> None:
    """The 95 % intervals of the points that have one, as error bars."""
    bars = [(x, rate, low, high) for x, (_, rate, low, high) in zip(xs, points) if low is not None]
    if not bars:
        return
    bx, rates, lows, highs = zip(*bars)
    below = [max(0.0, rate - low) for rate, low in zip(rates, lows)]
    above = [max(0.0, high - rate) for rate, high in zip(rates, highs)]
    ax.errorbar(bx, rates, yerr=[below, above], fmt="none", ecolor=color, capsize=3, alpha=0.7)


def scoreboard_figure(data: dict):
    """Each version's win rate against the base model (ui/console_views.scoreboard_series): per
    judge, the pointwise reading as points joined by a line with its 95 % interval as error bars,
    the balanced pairwise reading dashed in the same colour; the dotted line at 0.5 is even."""
    fig, ax = _figure("Win rate vs base (scoreboard)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("win rate against the base (0-1)")
    versions = data.get("versions") or []
    if not versions:
        _empty(ax, SCOREBOARD_EMPTY)
        return fig
    at = {version: i for i, version in enumerate(versions)}
    series = data.get("series") or []
    ax.axhline(0.5, color="0.4", linestyle=":", linewidth=1, label="even with the base")
    for i, one in enumerate(series):
        shift = (i - (len(series) - 1) / 2) * DODGE
        xs = [at[version] + shift for version, *_ in one["points"]]
        color = f"C{one['group'] % 10}"
        ax.plot(xs, [rate for _, rate, _, _ in one["points"]], color=color, label=one["label"],
                **READING_STYLES.get(one["reading"], READING_STYLES["pointwise"]))
        _error_bars(ax, xs, one["points"], color)
    drawn = {version for one in series for version, *_ in one["points"]}
    for version in versions:
        if version not in drawn:
            ax.text(at[version], 0.02, "n/a", ha="center", va="bottom", fontsize="x-small")
    _versions_axis(ax, versions, "version")
    return fig


def _versions_axis(ax, versions: list[int], label: str) -> None:
    """One tick per version ("v3"), a label, and the legend."""
    ax.set_xticks(range(len(versions)), [f"v{version}" for version in versions])
    ax.set_xlim(-0.5, len(versions) - 0.5)
    ax.set_xlabel(label)
    ax.legend(loc="best", fontsize="small")


def aspect_figure(data: dict):
    """Each version's mean 0-5 score on each aspect of CA (ui/console_views.aspect_series): a
    line per aspect, the base's score on it dotted in the same colour."""
    fig, ax = _figure("Aspects of CA per version (scoreboard)")
    ax.set_ylim(*REWARD_SCALE)
    ax.set_ylabel("mean score (0-5)")
    versions = data.get("versions") or []
    if not versions:
        _empty(ax, SCOREBOARD_EMPTY)
        return fig
    at = {version: i for i, version in enumerate(versions)}
    for i, (name, points) in enumerate(data["aspects"].items()):
        color = f"C{i % 10}"
        ax.plot([at[v] for v, _ in points], [y for _, y in points], marker="o", color=color,
                label=name)
        if name in data["base"]:
            ax.axhline(data["base"][name], color=color, linestyle=":", linewidth=1)
    _versions_axis(ax, versions, "version (dotted: the base)")
    return fig
