"""The pure parts of bench/learn_iterations.py: the settings at an equal judge budget, the judge
seconds read from a round's steps, the paired gain, resuming from the results file, the ratio to
mu 1. No model: the run itself is `bench/learn_iterations.py --quick`."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.append(str(BENCH))  # the script imports its neighbours (_results, align) by name
_spec = importlib.util.spec_from_file_location("learn_iterations", BENCH / "learn_iterations.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_every_mu_at_the_first_lr_and_rank_then_the_others_at_mu_1():
    got = bench.settings([1, 2, 4], [2e-4, 1e-3], [16, 4])
    assert [bench.key(s) for s in got] == ["mu1-lr0.0002-r16", "mu2-lr0.0002-r16",
                                           "mu4-lr0.0002-r16", "mu1-lr0.001-r16",
                                           "mu1-lr0.0002-r4"]
    assert bench.settings([1, 1], [1e-3], [8]) == [{"iterations": 1, "lr": 1e-3, "rank": 8}]


def test_an_equal_judge_budget_means_the_same_batches_and_mu_times_the_steps():
    args = bench.parse_args(["--batches", "3", "--iterations", "1", "4", "--out", "x.json"])
    assert args.iterations == [1, 4] and args.judge == "qwen2.5-coder-1.5b"
    quick = bench.parse_args(["--quick", "--policy", "/m"])
    assert (quick.batches, quick.iterations, quick.judge) == (1, [1, 2], "/m")
    assert quick.out.name == "learn-iterations-quick.json"  # never the real run's file
    assert bench.parse_args([]).out.name == "learn-iterations.json"


def test_judge_seconds_are_the_rounds_scoring_phases():
    curve = [{"step": 1, "reward": 3.0, "seconds/scoring": 40.0},
             {"step": 2, "reward": None, "seconds/scoring": 0.0},  # a step that reused the batch
             {"step": 3, "reward": 3.1, "seconds/scoring": 38.5}, {"step": 4}]
    assert bench.judge_seconds(curve) == 78.5


def test_gain_is_paired_over_the_prompts():
    g = bench.gain([3.0, 2.0, 4.0], [3.5, 2.0, 4.5])
    assert g["base"] == pytest.approx(3.0) and g["trained"] == pytest.approx(10 / 3)
    assert g["gain"] == pytest.approx(1 / 3)
    assert g["gain_ci95"] == pytest.approx(1.96 * math.sqrt(1 / 12) / math.sqrt(3))
    assert bench.gain([3.0], [3.5])["gain_ci95"] is None


def result(mu, gain, judge_s, lr=2e-4):
    return {"setting": {"iterations": mu, "lr": lr, "rank": 16}, "steps": 8 * mu, "base": 3.0,
            "trained": 3.0 + gain, "gain": gain, "gain_ci95": 0.05, "judge_seconds": judge_s,
            "gain_per_judge_s": gain / judge_s}


def test_the_table_gives_each_setting_its_ratio_to_mu_1_at_the_same_lr_and_rank():
    results = {"settings": {"mu1-lr0.0002-r16": result(1, 0.10, 2000.0),
                            "mu2-lr0.0002-r16": result(2, 0.15, 2000.0),
                            "mu4-lr0.001-r16": result(4, 0.2, 1000.0, lr=1e-3)}}
    lines = bench.table(results).splitlines()
    assert lines[2].endswith("| 1.00x |") and "3.00 -> 3.10" in lines[2]
    assert lines[3].endswith("| 1.50x |") and "+0.150 +-0.05" in lines[3]
    assert lines[4].endswith("| n/a |")  # no mu 1 at that lr in this run
    results["settings"]["mu1-lr0.0002-r16"] = result(1, -0.05, 2000.0)
    assert bench.table(results).splitlines()[3].endswith("| n/a |")  # mu 1 gained nothing


def test_a_restart_resumes_the_same_run_and_refuses_another(tmp_path):
    path = tmp_path / "r.json"
    run = {"batches": 8, "policy": "/p"}
    results = bench.load_results(path, run, fresh=False)
    assert results == {"run": run, "base": None, "settings": {}}
    results["settings"]["mu1-lr0.0002-r16"] = result(1, 0.1, 10.0)
    bench.save(results, path)
    assert bench.load_results(path, run, fresh=False)["settings"].keys() == {"mu1-lr0.0002-r16"}
    with pytest.raises(SystemExit, match="other settings"):
        bench.load_results(path, {**run, "batches": 4}, fresh=False)
    assert bench.load_results(path, {**run, "batches": 4}, fresh=True)["settings"] == {}
    assert json.loads(path.read_text())["settings"]  # --fresh replaces it only when a setting ends
