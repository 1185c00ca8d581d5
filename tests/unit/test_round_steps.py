"""learner/round.py's per-step callback fed the logs TRL writes with learn.iterations = 2: TRL
logs a batch's reward only at the step that scored it (its metrics are cleared at every log), so
the steps that reuse the batch log a loss and a KL but no reward. Every step gets a metrics line
and closes its progress step; convergence reads one reward per scored batch; the summary counts
both."""

import json
from types import SimpleNamespace

import pytest

from dynalign.config import load_config
from learner.progress import StepProgress
from learner.round import step_callback, summarize

pytest.importorskip("transformers")


class Store:
    def __init__(self):
        self.progress = []

    def update_round(self, round_id, progress=None, **fields):
        self.progress.append(progress)


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def scored(reward: float) -> dict:  # what TRL logs at a step that generated and scored a batch
    return {"loss": 0.01, "grad_norm": 0.3, "learning_rate": 1e-3, "num_tokens": 100.0,
            "completions/mean_length": 8.0, "reward": reward, "reward_std": 0.5,
            "frac_reward_zero_std": 0.0, "kl": 0.001, "entropy": 2.0,
            "clip_ratio/region_mean": 0.0, "step_time": 2.0}


REUSED = {"loss": 0.02, "grad_norm": 0.3, "learning_rate": 1e-3, "kl": 0.002, "entropy": 2.0,
          "clip_ratio/region_mean": 0.1, "step_time": 1.0}  # a step that reused the batch


def test_reuse_steps_get_a_line_without_reward_and_do_not_feed_convergence(tmp_path):
    from transformers import TrainerControl

    cfg = load_config(overrides={"learn.iterations": 2, "learn.max_steps": 6,
                                 "learn.converge_window": 1, "learn.converge_tolerance": 0.05})
    store, clock, path = Store(), Clock(), tmp_path / "metrics.jsonl"
    steps = StepProgress(max_steps=6, clock=clock, iterations=2)
    callback = step_callback(cfg, store, 1, steps, path)
    control = TrainerControl()
    stops = []
    for step, logs in enumerate([scored(2.0), REUSED, scored(2.0)], start=1):
        steps.begin_step()
        steps.phase("update", total=1, unit="micro-batches")
        clock.t += 1.0
        callback.on_log(None, SimpleNamespace(is_world_process_zero=True, global_step=step),
                        control, logs=logs)
        stops.append(control.should_training_stop)
    # the end of training logs no step: nothing written
    callback.on_log(None, SimpleNamespace(is_world_process_zero=True, global_step=3), control,
                    logs={"train_runtime": 3.0, "train_loss": 0.015})

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r.get("reward") for r in rows] == [2.0, None, 2.0]  # never repeated on a reuse step
    assert [r["batch"] for r in rows] == [1, 1, 2]
    assert rows[1]["kl"] == 0.002 and rows[1]["clip_ratio"] == 0.1  # the reuse step's own loss
    assert "reward_std" not in rows[1] and "completion_length" not in rows[1]
    # a window of one reward: two equal rewards converge; a repeat at step 2 would have stopped
    # the round after one batch
    assert stops == [False, False, True]
    assert steps.steps_done == 3 and store.progress[1]["step"] == 2
    assert store.progress[1]["reward"] == 2.0  # the reuse step shows its batch's reward
    assert store.progress[-1]["phase"] == "converged"

    summary = summarize(rows, {}, None, 3.0, None, cfg.learn)
    assert (summary["steps"], summary["batches"], summary["iterations"]) == (3, 2, 2)
    assert summary["reward_first"] == summary["reward_last"] == 2.0
    assert summary["converged"] is True  # 3 of 6 steps
