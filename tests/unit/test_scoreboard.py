"""The scoreboard's pure parts: cache keys, prompts, statistics, the stored rows, when it runs."""

import dataclasses
from contextlib import closing

import pytest

from dynalign import scoreboard as sb
from dynalign.config import load_config
from dynalign.errors import DataError
from dynalign.store import Store

CONV = [{"role": "user", "content": "Say hi."}]
WEIGHTS = {"model": "/m", "adapter": "abc"}
SETTINGS = {"max_tokens": 64, "decoding": "greedy", "dtype": "float32"}


def judge(cfg=None, label="qwen (local, float32)"):
    return sb.judge_identity(label, cfg or load_config(None))


def test_an_answer_key_changes_with_the_weights_the_conversation_and_every_setting():
    key = sb.answer_key(WEIGHTS, CONV, SETTINGS)
    assert key == sb.answer_key(dict(WEIGHTS), [dict(CONV[0])], dict(SETTINGS))
    assert key != sb.answer_key({**WEIGHTS, "adapter": "abd"}, CONV, SETTINGS)
    assert key != sb.answer_key({**WEIGHTS, "adapter": None}, CONV, SETTINGS)
    assert key != sb.answer_key(WEIGHTS, [{"role": "user", "content": "Say hi!"}], SETTINGS)
    for name, value in (("max_tokens", 65), ("dtype", "bfloat16"), ("decoding", "sampled")):
        assert key != sb.answer_key(WEIGHTS, CONV, {**SETTINGS, name: value})


def test_a_judgement_key_changes_with_the_judge_its_prompts_and_its_reading():
    cfg = load_config(None)
    base = judge(cfg)
    assert sb.score_key(base, "p", "a") == sb.score_key(judge(cfg), "p", "a")
    changed = [judge(cfg, "other (local, float32)"),
               judge(dataclasses.replace(cfg, prompts=dataclasses.replace(
                   cfg.prompts, reward=cfg.prompts.reward + " "))),
               judge(dataclasses.replace(cfg, prompts=dataclasses.replace(
                   cfg.prompts, pairwise=cfg.prompts.pairwise + " "))),
               judge(dataclasses.replace(cfg, learn=dataclasses.replace(
                   cfg.learn, self_score="greedy"))),
               judge(dataclasses.replace(cfg, eval=dataclasses.replace(
                   cfg.eval, judge=dataclasses.replace(cfg.eval.judge, max_tokens=9))))]
    for other in changed:
        assert sb.score_key(other, "p", "a") != sb.score_key(base, "p", "a")
        assert sb.pair_key(other, "p", "a", "b") != sb.pair_key(base, "p", "a", "b")
    assert sb.score_key(base, "p", "a") != sb.score_key(base, "p", "a ")
    assert sb.pair_key(base, "p", "a", "b") != sb.pair_key(base, "p", "b", "a")


def test_pointwise_outcomes_follow_the_scores_with_a_tie_band_and_unreadable_kept_apart():
    items = sb.pointwise_items(["p"] * 4, ["a"] * 4, ["b"] * 4, [3.0, 2.0, 3.004, None],
                               [2.0, 3.0, 3.0, 1.0])
    assert [i["pointwise"] for i in items] == ["win", "loss", "tie", "unreadable"]


def test_readings_count_every_prompt_and_give_an_interval():
    cfg = load_config(None)
    items = [{"prompt": "p", "a": "x y", "b": "x y z w", "pointwise": o, "outcome": o,
              "balanced": o} for o in ["win"] * 7 + ["loss"] * 3]
    r = sb.readings(items, cfg, balanced=True)
    assert r["pointwise"]["win_rate"] == pytest.approx(0.7)
    low, high = r["pointwise"]["ci"]
    assert low < 0.7 < high and high - low > 0.2  # ten prompts: a wide interval, honestly
    assert r["length_controlled"]["pointwise"]["n"] == 0  # 2 words vs 4: not within 20 %
    assert "balanced" in r and "balanced" not in sb.readings(items, cfg, balanced=False)


def test_prompts_default_to_the_hundred_held_out_and_a_bad_file_is_refused_by_line(tmp_path):
    cfg = load_config(None)
    prompts, source = sb.load_prompts(cfg)
    assert len(prompts) == 100 and source == "seed held-out split"
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"text": "no prompt"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: .*prompt"):
        sb.load_prompts(cfg, str(bad))
    bad.write_text('{"prompt": "fine"}\n{"prompt": "  "}\n')
    with pytest.raises(DataError, match="row 2.*empty"):
        sb.load_prompts(cfg, str(bad))
    bad.write_text("\n")
    with pytest.raises(DataError, match="no prompts"):
        sb.load_prompts(cfg, str(bad))


def test_the_store_caches_values_and_keeps_the_latest_scoreboard_per_version_and_judge(tmp_path):
    with closing(Store(tmp_path / "d.db")) as store:
        store.cache("score", {"k1": 3.5, "k2": None})
        assert store.cached(["k1", "k2", "k3"]) == {"k1": 3.5, "k2": None}
        v = store.add_adapter("/a", base_model="b", rank=8)
        store.add_scoreboard(v, "j1", "seed", {}, {"kl": 0.1}, {"items": []})
        store.add_scoreboard(v, "j1", "seed", {}, {"kl": 0.2}, {"items": []})
        store.add_scoreboard(v, "j2", "seed", {}, {"kl": 0.3}, {"items": []})
        rows = store.scoreboards(v)
        assert [(r["judge"], r["summary"]["kl"]) for r in rows] == [("j1", 0.2), ("j2", 0.3)]
        assert "result" not in rows[0]  # lists read the headline only
        assert store.scoreboard(rows[0]["id"])["result"] == {"items": []}
        assert len(store.scoreboards(v, latest=False)) == 3


def test_auto_runs_the_scoreboard_unless_the_embedded_model_judges(tmp_path):
    cfg = load_config(None)
    assert not sb.enabled(cfg)  # the default judge: this server's embedded model
    local = load_config(None, {"eval.judge.url": "local", "eval.judge.model": "smollm2-135m"})
    assert not sb.enabled(local)
    assert sb.enabled(load_config(None, {"eval.judge.url": "local",
                                         "eval.judge.model": "qwen2.5-coder-1.5b"}))
    assert sb.enabled(load_config(None, {"eval.judge.url": "http://judge:9/v1"}))
    assert sb.enabled(load_config(None, {"model.path": "/models/big"}))  # served model judges
    folder = tmp_path / "elsewhere"  # the embedded model prepared in a folder of its own
    folder.mkdir()
    (folder / "dynalign-prepared.json").write_text('{"name": "smollm2-135m"}')
    assert not sb.enabled(load_config(None, {"model.path": str(folder)}))
    assert not sb.enabled(load_config(None, {"eval.judge.url": "local",
                                             "eval.judge.model": str(folder)}))
    assert sb.enabled(load_config(None, {"eval.scoreboard": True}))
    assert not sb.enabled(load_config(None, {"eval.scoreboard": False,
                                             "eval.judge.url": "http://judge:9/v1"}))


def test_a_bad_scoreboard_setting_is_refused_at_load_naming_the_key():
    from dynalign.errors import ConfigError

    with pytest.raises(ConfigError, match="eval.scoreboard"):
        load_config(None, {"eval.scoreboard": "sometimes"})
    with pytest.raises(ConfigError, match="eval.ifeval_limit"):
        load_config(None, {"eval.ifeval_limit": -1})
