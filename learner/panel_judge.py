"""A panel of judges (`[[eval.judges]]`, `[[learn.judges]]`) behind the one-judge interface of
learner/judge.py, so the gate, the scoreboard, `dynalign eval` and a round's reward take either.

Each member is opened like any judge (learner/judge.py), with its own reward and pairwise
prompts when it has them; in `learn.judges` a member may be the policy scoring its own answers
(the paper's self-reward). The numbers are combined by dynalign/panel.py's rules: a member that
fails or gives no readable score is reported and left out, never counted as 0. Every report
keeps each member's numbers beside the aggregate, and marks the items the members disagree on
(`review`) for a person.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynalign import panel as rules
from dynalign.errors import DynalignError


@dataclass
class Member:
    name: str
    weight: float
    judge: object  # learner.judge.Judge


def open_judges(cfg, role: str, reading: str = "expected", batch_size: int = 4, tokenizer=None):
    """The judge of `role` ("eval": the gate, the scoreboard, `dynalign eval`; "learn": a round's
    reward, `tokenizer` the policy's): its panel when one is configured, else the one judge, as
    before."""
    from learner.judge import open_judge

    section = cfg.eval if role == "eval" else cfg.learn
    if not section.judges:
        return open_judge(section.judge, cfg, reading, batch_size)
    members = [Member(j.name or f"judge {i + 1}: {j.model}", j.weight,
                      _member(j, cfg, reading, batch_size, tokenizer))
               for i, j in enumerate(section.judges)]
    return PanelJudge(members, cfg.panel)


def _member(judge, cfg, reading: str, batch_size: int, tokenizer):
    from learner.judge import Judge, open_judge

    if judge.url == "policy":
        from learner.self_reward import SelfReward

        reward = SelfReward(tokenizer, judge.reward or cfg.prompts.reward,
                            cfg.prompts.ca_definition, reading, batch_size)
        return Judge("the policy (self-reward)", None, reward, workers=1)
    opened = open_judge(judge, cfg, reading, batch_size, template=judge.reward)
    opened.pairwise_template = judge.pairwise
    return opened


class PanelJudge:
    """The members as one judge: `reward`, `pairwise`, `label`, like learner.judge.Judge."""

    weigh = None  # the members' own balanced readings are used inside `pairwise`
    workers = 1

    def __init__(self, members: list[Member], panel):
        self.members, self.panel = members, panel
        self.label = f"panel ({panel.aggregate}) of " + "; ".join(
            f"{m.name} = {m.judge.label} x{m.weight:g}" for m in members)
        self.reward = PanelReward(members, panel)

    @property
    def aspect_rewards(self) -> dict:
        """The aspects the members score (their names: the scores come from `aspects`)."""
        return {name: None for m in self.members for name in m.judge.aspect_rewards}

    def aspects(self, prompts: list, completions: list) -> dict[str, list[float | None]]:
        """Each aspect's scores (`aspect`)."""
        return {name: self.aspect(name, prompts, completions) for name in self.aspect_rewards}

    def aspect(self, name: str, prompts: list, completions: list) -> list[float | None]:
        """One aspect's scores, aggregated over the members that score aspects (the policy does
        not); None where too few of them could."""
        per_member = [self.reward.read_with(m, m.judge.aspect_rewards.get(name), prompts,
                                            completions) for m in self.members]
        weights = [m.weight for m in self.members]
        return [rules.aggregate(scores, weights, self.panel.aggregate, self.panel.min_judges)
                for scores in zip(*per_member)]

    def pairwise(self, cfg, prompts: list, answers_a: list[str], answers_b: list[str],
                 progress=None) -> dict:
        """Every member judges every pair (both orders, dynalign/evaluate.py); each pair's
        outcome is the aggregate of the members' preferences for A."""
        from dynalign.evaluate import summarise

        reports = [self._member_pairwise(m, cfg, prompts, answers_a, answers_b) for m in
                   self.members]
        weights = [m.weight for m in self.members]
        balanced = cfg.learn.gate.reading == "balanced"
        items = []
        for i, prompt in enumerate(prompts):
            prefs = [rules.preference(r["items"][i], balanced) if "items" in r else None
                     for r in reports]
            items.append({"prompt": prompt, "a": answers_a[i], "b": answers_b[i],
                          "outcome": rules.pair_outcome(prefs, weights, self.panel.aggregate,
                                                        self.panel.min_judges),
                          "members": [{"judge": m.name, "preference": p} for m, p in
                                      zip(self.members, prefs)],
                          "review": rules.pair_disagrees(prefs)})
            if progress:
                progress()
        summary = summarise(items, "outcome", cfg.eval.bootstrap, cfg.eval.level, cfg.eval.seed)
        return {**summary, "level": cfg.eval.level, "aggregate": self.panel.aggregate,
                "members": [_member_summary(m, r) for m, r in zip(self.members, reports)],
                "disagreements": sum(item["review"] for item in items), "items": items}

    @staticmethod
    def _member_pairwise(member: Member, cfg, prompts, answers_a, answers_b) -> dict:
        if member.judge.chat is None:
            return {"error": "the policy scores answers; it gives no pairwise verdicts"}
        try:
            return member.judge.pairwise(cfg, prompts, answers_a, answers_b)
        except DynalignError as e:  # an endpoint that failed: reported, left out
            return {"error": str(e)}


def _member_summary(member: Member, report: dict) -> dict:
    head = {"judge": member.name, "label": member.judge.label, "weight": member.weight}
    if "error" in report:
        return {**head, "error": report["error"]}
    keys = ("win", "loss", "tie", "inconsistent", "unreadable", "judged", "win_rate", "ci")
    out = {**head, **{k: report[k] for k in keys}}
    if "balanced" in report:
        out["balanced"] = {k: report["balanced"][k] for k in keys}
    return out


class PanelReward:
    """TRL's reward signature over the members' 0-5 scores; a candidate no member could score
    gets 0 and is counted unreadable, like a single judge's unreadable answer."""

    __name__ = "panel_reward"

    def __init__(self, members: list[Member], panel):
        self.members, self.panel = members, panel
        self.unreadable = self.scored = self.disagreements = 0
        self.failures: list[str] = []  # members that raised, with why
        policy = [m.judge.reward for m in members if getattr(m.judge.reward, "reads_policy",
                                                              False)]
        self.reads_policy, self.policy = bool(policy), policy
        self.batch_size = min(getattr(m.judge.reward, "batch_size", 4) for m in members)
        self.model = self.dtype = None

    def bind(self, model) -> None:
        """The policy, for the members that score with it (learner/trainer.py binds it)."""
        self.model = model
        for reward in self.policy:
            reward.dtype = self.dtype
            reward.bind(model)

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return [0.0 if s is None else s for s in self.read(prompts, completions)]

    def read(self, prompts, completions) -> list[float | None]:
        per_member = [self._read(m, prompts, completions) for m in self.members]
        weights = [m.weight for m in self.members]
        out = []
        for scores in zip(*per_member):
            out.append(rules.aggregate(scores, weights, self.panel.aggregate,
                                       self.panel.min_judges))
            self.disagreements += rules.scores_disagree(scores, self.panel.review_gap)
        self.unreadable += sum(s is None for s in out)
        self.scored += len(out)
        return out

    def _read(self, member: Member, prompts, completions) -> list[float | None]:
        return self.read_with(member, member.judge.reward, prompts, completions)

    def read_with(self, member: Member, reward, prompts, completions) -> list[float | None]:
        """`reward`'s readable scores (None for each where it has none, or failed: recorded)."""
        if reward is None:
            return [None] * len(completions)
        try:
            return reward.read(prompts, completions)
        except DynalignError as e:
            self.failures.append(f"{member.name}: {e}")
            return [None] * len(completions)
