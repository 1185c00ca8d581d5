"""bench/gpu.py, the GPU evidence of issue 19 (docs/gpu.md): its --smoke run (the same code on tiny
configs of both architectures, on CPU) so the script cannot rot before a GPU runs it, and its
refusal to measure without CUDA."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu.py"
PHASES = ("generation", "reference", "scoring", "update")


def test_without_cuda_and_without_smoke_it_exits_1_saying_why(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)],
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert "CUDA GPU" in proc.stderr and "--smoke" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing measured, nothing written


@pytest.mark.slow  # three fresh processes, each importing torch and TRL: ~1 min on 2 cores
def test_the_smoke_run_times_and_measures_every_phase_of_every_run(base_model, tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--tokenizer", base_model,
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = json.loads((tmp_path / "gpu-smoke.json").read_text())
    runs = {r["label"]: r for r in out["runs"]}
    assert out["environment"]["smoke"] is True and set(runs) == {"qwen-ours", "qwen-trl", "oss"}
    assert [len(runs[k]["steps"]) for k in ("qwen-ours", "qwen-trl", "oss")] == [2, 2, 1]
    ours, trl = runs["qwen-ours"]["learn"], runs["qwen-trl"]["learn"]
    assert (ours["beta"], ours["loss_type"], trl["beta"], trl["loss_type"]) == (0.04, "grpo", 0.0,
                                                                                "dapo")
    for label, f in out["figures"].items():
        assert all(f["seconds"][p] > 0 for p in (*PHASES, "step")), (label, f["seconds"])
        assert f["completion_tokens"] == 2 * 2 * 8  # 2 prompts x G 2, forced to 8 tokens each
        assert f["tokens_per_step"] > f["completion_tokens"]  # the prompts count too
        assert all(v > 0 for v in f["tok_s"].values()), (label, f["tok_s"])
        assert all(f["peak_gib"][p]["rss"] > 0 for p in (*PHASES, "step")), label
    assert 0 < out["trl_over_ours"]["seconds"]["step"] and out["trl_over_ours"]["peak_memory"] > 0
    # LoRA r 16 on gpt-oss's attention projections only (its experts are 3-D parameters):
    # 2 layers x 16 x (q 32+32, k 32+16, v 32+16, o 32+32) at the smoke's shape
    assert runs["oss"]["lora_params_m"] == pytest.approx(2 * 16 * (64 + 48 + 48 + 64) / 1e6)
    fit = out["profile_fit"]
    assert fit["engine_gib"] == pytest.approx(0.25 * 79.2)  # the profile's engine share
    assert fit["total_gib"] == pytest.approx(fit["engine_gib"] + fit["learner_gib"], abs=0.02)
    markdown = (tmp_path / "gpu-smoke.md").read_text()
    assert "## (a)" in markdown and "## (b)" in markdown and "prime-rl" in markdown
