"""`dynalign eval scoreboard`: a version against the base model, answered and judged here.

Answers come from this process (transformers + PEFT: the adapter on for the version, off for the
base), not from the server: any registered version can be measured in either swap mode, with or
without a server running, and the KL to the base needs both sides' logits anyway. Everything in
the cache (dynalign/scoreboard.py) is looked up first and only the rest is computed, and each
part is cached as soon as it is done, so an interrupted scoreboard resumes. The statistics and
the report are dynalign/scoreboard.py's; the row goes to the store (`scoreboards`).

Also a child process: `python -m learner.scoreboard CONFIG --version N`, which the round manager
runs after a promotion when `eval.scoreboard` says so.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from contextlib import closing
from pathlib import Path

from dynalign import reviews
from dynalign import scoreboard as sb
from dynalign.config import load_config
from dynalign.errors import DataError, DynalignError
from dynalign.store import Store


def run(cfg, version: int | None = None, prompts_path: str | None = None, say=None) -> dict:
    """Measure `version` (None: the active one) against the base; returns the stored row."""
    say = say or (lambda text: print(text, file=sys.stderr))
    with closing(Store(cfg.db_path)) as store:
        version = version if version is not None else store.active_version()
        if version is None:
            raise DataError("no version is active: name one with --version (the base model "
                            "against itself has nothing to show)")
        adapter = store.adapter(version)  # UnknownVersionError names it
        prompts, source = sb.load_prompts(cfg, prompts_path or cfg.eval.scoreboard_prompts)
        started = time.perf_counter()
        measure = Measure(cfg, store, adapter["path"], say)
        result = measure.everything(prompts)
        result |= {"version": version, "base": cfg.model_name, "prompts_source": source,
                   "seconds": round(time.perf_counter() - started, 1)}
        settings = measure.settings | {"judge": measure.judge_id}
        result["reviews"] = reviews.queue_scoreboard(store, version, result["items"])
        return store.add_scoreboard(version, result["judge"], source, settings,
                                    sb.headline(result), result)


class Measure:
    """One version's scoreboard: the loaded policy (adapter on = version, off = base), the judge
    (opened after the answers: its label is part of every judgement's key), and the cache."""

    def __init__(self, cfg, store: Store, adapter_path: str, say):
        import torch

        from learner.precision import rollout_dtype

        torch.set_num_threads(cfg.learn.threads)
        self.cfg, self.store, self.say = cfg, store, say
        self.dtype = rollout_dtype(cfg.learn)
        self.model, self.tokenizer = load_policy(cfg.model_path, adapter_path, self.dtype)
        self.weights = {"version": {"model": cfg.model_path, "adapter": file_digest(adapter_path)},
                        "base": {"model": cfg.model_path, "adapter": None}}
        self.settings = {"max_tokens": cfg.eval.scoreboard_tokens, "decoding": "greedy",
                         "dtype": str(self.dtype).removeprefix("torch.")}
        self._judge = None
        self.judge_id = None
        self.counts = {"answers": 0, "scores": 0, "pairs": 0, "aspects": 0}

    def everything(self, prompts: list[str]) -> dict:
        from learner.gate_eval import mean_tokens

        convs = [[{"role": "user", "content": p}] for p in prompts]
        sides = {side: self.answers(side, convs) for side in ("base", "version")}
        ifeval = self.ifeval()
        kl = self.kl(convs, sides["version"])
        judge = self.judge()
        scores = {side: self.scores(prompts, sides[side]) for side in ("base", "version")}
        items = self.pairs(prompts, sides["version"], sides["base"])
        for item, point in zip(items, sb.pointwise_items(prompts, sides["version"], sides["base"],
                                                        scores["version"], scores["base"])):
            item |= point
        aspects = self.aspects(prompts[:self.cfg.eval.scoreboard_aspects], sides)
        return {"judge": judge.label, "n": len(prompts), "items": items, "kl": kl,
                "aspects": aspects,
                "readings": sb.readings(items, self.cfg, balanced=judge.weigh is not None),
                "scores": {side: sb.mean(s) for side, s in scores.items()},
                "tokens": {side: mean_tokens(self.tokenizer, a) for side, a in sides.items()},
                "ifeval": ifeval, "computed": dict(self.counts)}

    def answers(self, side: str, convs: list[list[dict]]) -> list[str]:
        from contextlib import nullcontext

        from learner.reading import answer

        keys = [sb.answer_key(self.weights[side], c, self.settings) for c in convs]
        missing = self._missing(keys, f"answers of the {side}")
        if missing:
            off = self.model.disable_adapter() if side == "base" else nullcontext()
            with off:
                texts = answer(self.model, self.tokenizer, [convs[i] for i in missing],
                               self.settings["max_tokens"], dtype=self.dtype)
            self.store.cache("answer", {keys[i]: t for i, t in zip(missing, texts)})
            self.counts["answers"] += len(missing)
        cached = self.store.cached(keys)
        return [cached[k] for k in keys]

    def ifeval(self) -> dict | None:
        from dynalign import ifeval

        data, limit = self.cfg.eval.ifeval or str(ifeval.SAMPLE_FILE), self.cfg.eval.ifeval_limit
        if limit <= 0:
            return None
        rows = ifeval.load_ifeval(data, limit)
        convs = [r["messages"] for r in rows]
        strict = {side: ifeval.score_ifeval(rows, self.answers(side, convs))["prompt_strict"]
                  for side in ("base", "version")}
        return {"data": data, "prompts": len(rows), **strict}

    def kl(self, convs: list[list[dict]], answers: list[str]) -> float | None:
        key = sb.digest({"kind": "kl", "weights": self.weights["version"], "answers": answers,
                         "conversations": convs})
        cached = self.store.cached([key])
        if key not in cached:
            self.say("KL to the base on the version's answers")
            cached[key] = answer_kl(self.model, self.tokenizer, convs, answers)
            self.store.cache("kl", {key: cached[key]})
        return cached[key]

    def judge(self):
        from learner.panel_judge import open_judges

        if self._judge is None:
            self._judge = open_judges(self.cfg, "eval")
            self.say(f"judging with {self._judge.label}")
            self.judge_id = sb.judge_identity(self._judge.label, self.cfg)
        return self._judge

    def scores(self, prompts: list[str], answers: list[str]) -> list:
        keys = [sb.score_key(self.judge_id, p, a) for p, a in zip(prompts, answers)]
        return self._judged(keys, "score", "0-5 judgements",
                            lambda part: self.judge().reward([prompts[i] for i in part],
                                                             [answers[i] for i in part]))

    def _judged(self, keys: list[str], kind: str, what: str, compute) -> list:
        """The cached value of each key; the missing ones computed 8 at a time by
        `compute(indices)` and cached as it goes (a stopped run resumes), counted in `kind`s."""
        missing = self._missing(keys, what)
        for start in range(0, len(missing), 8):
            part = missing[start:start + 8]
            self.store.cache(kind, {keys[i]: s for i, s in zip(part, compute(part))})
            self.counts[f"{kind}s"] += len(part)
        cached = self.store.cached(keys)
        return [cached[k] for k in keys]

    def aspects(self, prompts: list[str], sides: dict) -> dict:
        """Each aspect's mean 0-5 score of the version's and the base's answers to `prompts`;
        each judgement cached under the judge, the aspect, the prompt and the answer."""
        out = {}
        for name in self.judge().aspect_rewards:
            judge = {**self.judge_id, "aspect": name, "template": self.cfg.prompts.aspect}
            out[name] = {side: sb.mean(self._aspect_scores(judge, name, prompts,
                                                            sides[side][:len(prompts)]))
                         for side in ("version", "base")}
        return out

    def _aspect_scores(self, judge: dict, name: str, prompts: list[str], answers: list[str]):
        keys = [sb.score_key(judge, p, a) for p, a in zip(prompts, answers)]
        return self._judged(keys, "aspect", f"{name} judgements",
                            lambda part: self.judge().aspect(name, [prompts[i] for i in part],
                                                             [answers[i] for i in part]))

    def pairs(self, prompts: list[str], version: list[str], base: list[str]) -> list[dict]:
        keys = [sb.pair_key(self.judge_id, p, a, b) for p, a, b in zip(prompts, version, base)]
        missing = self._missing(keys, "pairwise judgements (both orders)")
        for start in range(0, len(missing), 4):
            part = missing[start:start + 4]
            report = self.judge().pairwise(self.cfg, [prompts[i] for i in part],
                                           [version[i] for i in part], [base[i] for i in part])
            self.store.cache("pair", {keys[i]: item for i, item in zip(part, report["items"])})
            self.counts["pairs"] += len(part)
        cached = self.store.cached(keys)
        return [dict(cached[k]) for k in keys]

    def _missing(self, keys: list[str], what: str) -> list[int]:
        have = self.store.cached(keys)
        missing = [i for i, k in enumerate(keys) if k not in have]
        self.say(f"{what}: {len(keys) - len(missing)} cached, {len(missing)} to do")
        return missing



def load_policy(model_path: str, adapter_path: str, dtype):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    model = PeftModel.from_pretrained(base, adapter_path).eval()
    model.requires_grad_(False)
    return model, tokenizer


def file_digest(adapter_path: str) -> str:
    """The adapter by its content: a state dir rebuilt with other weights under the same version
    number must not hit the old answers."""
    h = hashlib.sha256()
    with open(Path(adapter_path) / "adapter_model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def answer_kl(model, tokenizer, convs: list[list[dict]], answers: list[str]) -> float | None:
    """Mean per-token KL(version || base) over the version's own answers (re-tokenized), each
    token's full next-token distributions compared: how far the version moved from the base
    where it actually speaks."""
    import torch

    from learner.reading import chat_ids

    total, count = 0.0, 0
    with torch.no_grad():
        for conv, text in zip(convs, answers):
            prompt = chat_ids(tokenizer, conv)
            ids = tokenizer.encode(text, add_special_tokens=False)
            if not ids:
                continue
            row = torch.tensor([prompt + ids], device=next(model.parameters()).device)
            span = slice(len(prompt) - 1, row.shape[1] - 1)
            log_p = model(row).logits[0, span].float().log_softmax(-1)
            with model.disable_adapter():
                log_q = model(row).logits[0, span].float().log_softmax(-1)
            total += (log_p.exp() * (log_p - log_q)).sum().item()
            count += len(ids)
    return total / count if count else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="learner.scoreboard", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="a resolved config (TOML)")
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("--prompts", help="JSONL with 'prompt' (default: held-out seed prompts)")
    args = parser.parse_args(argv)
    try:
        row = run(load_config(args.config), args.version, args.prompts)
    except DynalignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(sb.markdown(row), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
