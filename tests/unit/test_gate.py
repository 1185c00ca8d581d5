"""The pairwise protocol's counting rules, the bootstrap, reports, and the gate's decisions,
with hand-made judgments and measurements."""

import json

import pytest

from dynalign.config import GateConfig, load_config
from dynalign.errors import ConfigError
from dynalign.evaluate import (a_share, approval, balanced_outcome, bootstrap_ci, headline,
                               judge_pair, length_controlled, markdown, outcome, pairwise,
                               parse_verdict, tally, wilson, write_report)
from dynalign.gate import decide, drift_flags, last_good


@pytest.mark.parametrize("text, verdict", [
    ("A", "A"), ("b", "B"), ("Tie", "tie"), ("**A**", "A"), ("Response B.", "B"),
    ("Assistant A is better", "A"), ('"B"', "B"), ("tie.", "tie"),
    ("", None), ("Both are good", None), ("Answer: maybe", None), ("A1", None), ("About A", None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize("a_first, a_second, result", [
    ("A", "B", "win"),  # A preferred first, and preferred again when shown second
    ("B", "A", "loss"),
    ("tie", "tie", "tie"),
    ("A", "A", "inconsistent"),  # position bias: the first answer wins both times
    ("B", "B", "inconsistent"),
    ("A", "tie", "inconsistent"),
    ("tie", "A", "inconsistent"),
    (None, "B", "unreadable"),
    ("A", None, "unreadable"),
])
def test_outcome_needs_the_same_preference_in_both_orders(a_first, a_second, result):
    assert outcome(a_first, a_second) == result


def test_tally_excludes_inconsistent_and_unreadable_and_counts_ties_as_judged():
    t = tally(["win", "win", "loss", "tie", "inconsistent", "inconsistent", "unreadable"])
    assert (t["win"], t["loss"], t["tie"], t["inconsistent"], t["unreadable"]) == (2, 1, 1, 2, 1)
    assert t["n"] == 7 and t["judged"] == 4 and t["win_rate"] == 0.5
    assert tally(["inconsistent"])["win_rate"] is None


def test_bootstrap_interval_brackets_the_rate_and_is_seeded():
    outcomes = ["win"] * 30 + ["loss"] * 10 + ["inconsistent"] * 50
    low, high = bootstrap_ci(outcomes, resamples=2000, seed=1)
    assert low < 0.75 < high and 0.55 < low and high < 0.92
    assert bootstrap_ci(outcomes, resamples=2000, seed=1) == (low, high)
    assert bootstrap_ci(["win"] * 5) == (1.0, 1.0)
    assert bootstrap_ci(["inconsistent", "unreadable"]) is None


def test_length_controlled_win_rate_keeps_only_pairs_of_similar_length():
    words = lambda n: " ".join(["w"] * n)  # noqa: E731
    items = [{"a": words(100), "b": words(10), "outcome": "win"},  # 10x longer: left out
             {"a": words(60), "b": words(50), "outcome": "win"},  # 1.2x: kept
             {"a": words(50), "b": words(60), "outcome": "loss"},  # kept, either way round
             {"a": words(61), "b": words(50), "outcome": "win"},  # 1.22x: left out
             {"a": "", "b": words(3), "outcome": "loss"},  # empty vs not: left out
             {"a": words(5), "b": words(5), "outcome": "inconsistent"}]  # kept, not judged
    lc = length_controlled(items, tolerance=0.2)
    assert (lc["n"], lc["win"], lc["loss"], lc["inconsistent"]) == (3, 1, 1, 1)
    assert lc["win_rate"] == 0.5 and lc["tolerance"] == 0.2
    assert length_controlled(items[:1])["win_rate"] is None and length_controlled(items[:1])["n"] == 0


def _judge_preferring(word: str):
    """A judge that prefers whichever response contains `word`; records what it was asked."""
    asked = []

    def chat(messages):
        text = messages[0]["content"]
        asked.append(text)
        first = text.split("Response A\n\n", 1)[1].split("Response B\n\n", 1)[0]
        return "A" if word in first else "B"
    chat.asked = asked
    return chat


def test_judge_pair_asks_both_orders_and_skips_identical_answers():
    chat = _judge_preferring("kind")
    item = judge_pair(chat, "[Prompt] Response A\n\n[Response A]\nResponse B\n\n[Response B]",
                      "def", "q", "a kind answer", "a curt answer")
    assert item["outcome"] == "win" and item["verdicts"] == ["A", "B"] and len(chat.asked) == 2
    assert chat.asked[0].index("kind") < chat.asked[0].index("curt")
    assert chat.asked[1].index("curt") < chat.asked[1].index("kind")
    same = judge_pair(chat, "x", "def", "q", "same ", "same")
    assert same["outcome"] == "tie" and same["identical"] and len(chat.asked) == 2


def test_pairwise_report_and_files(tmp_path):
    chat = _judge_preferring("kind")
    template = load_config().prompts.pairwise
    report = pairwise(["p1", "p2", "p3"], ["kind a", "curt b", "same"], ["curt a", "kind b", "same"],
                      chat, template, "definition", workers=2, resamples=200)
    assert [i["outcome"] for i in report["items"]] == ["win", "loss", "tie"]
    assert report["judged"] == 3 and report["win_rate"] == pytest.approx(1 / 3)
    folder = write_report(tmp_path, "pairwise", {"a": "dynalign-v2", "b": "base", **report})
    saved = json.loads((folder / "report.json").read_text())
    assert saved["items"][0]["prompt"] == "p1" and folder.parent == tmp_path / "reports" / "eval"
    summary = (folder / "summary.md").read_text()
    assert "| win_rate | 0.333 |" in summary and "`dynalign-v2`" in summary
    assert "items" not in markdown("pairwise", report)


def _first_biased_weigher(word: str, bias: float = 0.3):
    """A judge that prefers the response containing `word` by 0.1 of probability, and whichever
    is shown first by `bias` more: its greedy verdict is always "A"."""
    def weigh(messages):
        text = messages[0]["content"]
        first = text.split("Response A\n\n", 1)[1].split("Response B\n\n", 1)[0]
        lean = 0.1 if word in first else -0.1
        p_a = 0.5 + bias + lean
        return "A", {"A": p_a * 0.9, "B": (1 - p_a) * 0.9}
    return weigh


def test_a_position_biased_judge_is_inconsistent_but_its_balanced_reading_still_tells():
    weigh = _first_biased_weigher("kind")
    report = pairwise(["p1", "p2", "p3"], ["kind a", "curt b", "same"], ["curt a", "kind b", "same"],
                      None, "Response A\n\n[Response A]\nResponse B\n\n[Response B]", "def",
                      workers=1, resamples=200, weigh=weigh)
    assert [i["outcome"] for i in report["items"]] == ["inconsistent", "inconsistent", "tie"]
    assert report["judged"] == 1  # the paper's rule: the bias leaves only the identical pair
    assert [i["balanced"] for i in report["items"]] == ["win", "loss", "tie"]
    assert report["items"][0]["a_share"] == pytest.approx([0.9, 0.3])
    assert report["balanced"]["win_rate"] == pytest.approx(1 / 3)
    assert headline(report)["balanced_win_rate"] == pytest.approx(1 / 3)
    assert length_controlled(report["items"], key="balanced")["win"] == 1


def test_balanced_reading_edges():
    assert a_share({"A": 0.03, "B": 0.02}, True) is None  # the judge was not answering A or B
    assert a_share({"A": 0.3, "B": 0.1}, False) == pytest.approx(0.25)  # A shown second is "B"
    assert balanced_outcome([0.6, None]) == "unreadable" and balanced_outcome([0.7, 0.3]) == "tie"


# the gate's decisions

def _report(win=6, loss=1, tie=0, inconsistent=1, ifeval=(0.5, 0.5), drift=None):
    judged = win + loss + tie
    return {"pairwise": {"n": judged + inconsistent, "judged": judged, "win": win, "loss": loss,
                         "tie": tie, "inconsistent": inconsistent, "unreadable": 0,
                         "win_rate": win / judged if judged else None},
            "capabilities": {"ifeval": {"active": {"prompt_strict": ifeval[0]},
                                        "candidate": {"prompt_strict": ifeval[1]}}},
            "drift": drift or {"top_share": 0.1, "kl": 0.05, "length_ratio": 1.1}}


def test_a_balanced_gate_reads_the_balanced_tally_when_the_judge_weighed():
    biased = _report(win=0, loss=0, tie=0, inconsistent=8)  # a first-position-biased judge
    biased["pairwise"]["balanced"] = _report(win=6, loss=2, inconsistent=0)["pairwise"]
    assert not decide(GateConfig(reading="both_orders"), biased).promote  # cannot tell
    d = decide(GateConfig(), biased)  # the default reads the balanced tally where there is one
    assert d.promote and d.reasons[0].startswith("win rate 0.75 >= 0.5 (balanced over both "
                                                 "orders: 6 wins, 2 losses")
    unweighed = _report(win=0, loss=0, tie=0, inconsistent=8)  # an endpoint judge: no balanced
    assert not decide(GateConfig(), unweighed).promote


def test_gate_promotes_a_better_candidate_and_says_why():
    d = decide(GateConfig(), _report())
    assert d.promote and not d.rollback
    assert d.reasons[0].startswith("win rate 0.86 >= 0.5 (6 wins, 1 losses")
    assert "ifeval prompt_strict 0.500 -> 0.500" in d.reasons


@pytest.mark.parametrize("report, reason", [
    (_report(win=1, loss=4), "win rate 0.20 < 0.5"),
    (_report(win=2, loss=0, inconsistent=6), "consistent on 2 of 8 pairs"),
    (_report(win=0, loss=0, tie=0, inconsistent=8), "cannot tell these apart"),
    (_report(win=2, loss=1, tie=3), "win rate 0.33 < 0.5"),  # ties are judged, not wins
    (_report(ifeval=(0.6, 0.45)), "ifeval prompt_strict 0.600 -> 0.450: fell by more than 0.1"),
    (_report(drift={"top_share": 0.9}), "drift: 90% of self-scores saturate"),
    (_report(drift={"kl": 3.2}), "drift: KL to the base model 3.200 > 1.0"),
    (_report(drift={"length_ratio": 0.3}), "drift: answers are 0.30x the base model's length"),
])
def test_gate_rejects_with_the_reason(report, reason):
    d = decide(GateConfig(), report)
    assert not d.promote
    assert any(reason in r for r in d.reasons), d.reasons


def test_a_capability_drop_within_the_margin_passes():
    assert decide(GateConfig(), _report(ifeval=(0.6, 0.51))).promote


def test_drift_action_flag_records_but_promotes_and_rollback_asks_for_one():
    drifting = _report(drift={"top_share": 1.0, "kl": 0.1, "length_ratio": 1.0})
    flag = decide(GateConfig(on_drift="flag"), drifting)
    assert flag.promote and flag.report["drift_flags"] and "drift (flag only)" in flag.reasons[-1]
    back = decide(GateConfig(on_drift="rollback"), drifting)
    assert not back.promote and back.rollback
    assert not decide(GateConfig(on_drift="rollback"), _report()).rollback


def test_drift_flags_limits_are_inclusive_and_missing_figures_are_not_flags():
    gate = GateConfig()
    assert drift_flags(gate, {"top_share": 0.5, "kl": 1.0, "length_ratio": 2.0}) == []
    assert drift_flags(gate, {"length_ratio": 0.5}) == []
    assert drift_flags(gate, {"top_share": None, "kl": None, "length_ratio": None}) == []


def test_last_good_walks_back_the_active_versions_lineage():
    adapters = [{"version": 1, "status": "retired", "parent": None},
                {"version": 2, "status": "retired", "parent": 1},
                {"version": 3, "status": "retired", "parent": 2},  # rolled back from by hand
                {"version": 4, "status": "active", "parent": 2},
                {"version": 5, "status": "rejected", "parent": 4}]
    assert last_good(adapters, flagged=set()) == 4
    assert last_good(adapters, flagged={4, 5}) == 2  # not 3: it is not an ancestor
    assert last_good(adapters, flagged={1, 2, 4}) is None  # the base model
    assert last_good([{"version": 1, "status": "retired", "parent": None}], set()) is None


@pytest.mark.parametrize("key, value, message", [
    ("on_drift", "ignore", "learn.gate.on_drift must be one of flag, reject, rollback"),
    ("reading", "greedy", "learn.gate.reading must be one of both_orders, balanced"),
    ("min_win_rate", 1.5, "learn.gate.min_win_rate must be between 0 and 1"),
    ("max_length_ratio", 0.5, "learn.gate.max_length_ratio must be at least 1"),
    ("prompts", 0, "learn.gate.prompts must be at least 1"),
])
def test_bad_gate_settings_are_config_errors(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, {f"learn.gate.{key}": value})


def test_wilson_interval_matches_known_values_and_stays_in_bounds():
    low, high = wilson(5, 10)
    assert abs(low - 0.2366) < 1e-3 and abs(high - 0.7634) < 1e-3  # the textbook example
    assert wilson(0, 4)[0] == 0.0 and wilson(4, 4)[1] == 1.0 and wilson(0, 0) is None
    assert approval(2, 1) == {"ratings": 3, "up": 2, "down": 1, "approval": 2 / 3,
                              "interval": list(wilson(2, 3))}
    assert approval()["approval"] is None and approval()["interval"] is None


def _with_aspects(knowledge: tuple, benevolence: tuple) -> dict:
    report = _report()
    report["aspects"] = {"means": {
        "holistic": {"active": 3.0, "candidate": 1.0, "base": 3.0},  # not an aspect: no rule
        "knowledge": dict(zip(("active", "candidate"), knowledge)),
        "benevolence": dict(zip(("active", "candidate"), benevolence))}}
    return report


def test_no_aspect_may_fall_by_more_than_max_aspect_drop():
    d = decide(GateConfig(), _with_aspects(knowledge=(3.0, 3.4), benevolence=(3.0, 2.4)))
    assert not d.promote
    assert "aspect benevolence 3.00 -> 2.40: fell by more than 0.5" in d.reasons
    assert "aspect knowledge 3.00 -> 3.40" in d.reasons
    ok = decide(GateConfig(), _with_aspects(knowledge=(3.0, 3.4), benevolence=(3.0, 2.6)))
    assert ok.promote and "aspect benevolence 3.00 -> 2.60" in ok.reasons
    assert decide(GateConfig(max_aspect_drop=1.0),
                  _with_aspects(knowledge=(3.0, 3.4), benevolence=(3.0, 2.4))).promote
    unread = _with_aspects(knowledge=(3.0, None), benevolence=(None, 1.0))  # no judge could read
    assert decide(GateConfig(), unread).promote
