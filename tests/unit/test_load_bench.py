"""The pure parts of bench/load.py (bench/_load_util.py): percentiles, phase summaries, the swap
plan, the log check and the table. No server."""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
_spec = importlib.util.spec_from_file_location("_load_util", BENCH / "_load_util.py")
util = sys.modules["_load_util"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(util)


@pytest.mark.parametrize("values, q, expected", [
    ([3, 1, 2], 50, 2), ([1, 2, 3, 4], 50, 2.5), ([5], 99, 5), ([1, 2, 3, 4, 5], 0, 1),
    ([1, 2, 3, 4, 5], 100, 5), (list(range(1, 101)), 99, 99.01), ([10, 20], 25, 12.5),
])
def test_percentile_interpolates_like_numpy(values, q, expected):
    assert util.percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_nan():
    assert math.isnan(util.percentile([], 50))


def test_summary_counts_failures_and_times_only_completed_requests():
    outcomes = [util.Outcome(0.0, 0.1, True, "dynalign-v1", 24),
                util.Outcome(0.5, 0.3, False, "dynalign-v2", 24),
                util.Outcome(1.0, 9.0, True, error="RuntimeError: truncated stream")]
    s = util.summarize(outcomes, wall_s=2.0)
    assert (s["completed"], s["failed"]) == (2, 1)
    assert s["req_s"] == 1.0 and s["tok_s"] == 24.0
    assert s["p50_ms"] == pytest.approx(200) and s["max_ms"] == pytest.approx(300)
    assert s["models"] == {"dynalign-v1": 1, "dynalign-v2": 1}
    assert util.failure_digest(outcomes) == ["1 x RuntimeError: truncated stream"]


def test_ratios_are_swaps_over_baseline():
    base = {"p50_ms": 100.0, "p99_ms": 400.0, "req_s": 10.0, "tok_s": 240.0}
    swaps = {"p50_ms": 110.0, "p99_ms": 800.0, "req_s": 9.0, "tok_s": 0.0}
    r = util.ratios(base, swaps)
    assert r == pytest.approx({"p50_ms": 1.1, "p99_ms": 2.0, "req_s": 0.9, "tok_s": 0.0})
    assert math.isnan(util.ratios({**base, "req_s": 0}, swaps)["req_s"])


def test_swaps_are_evenly_spaced_and_always_change_the_version():
    assert util.swap_times(120, 3) == [30, 60, 90]
    assert util.swap_times(20, 0) == []
    assert util.swap_plan([1, 2, 3], 3) == [2, 3, 1]
    assert util.swap_plan([1, 2], 3) == [2, 1, 2]
    assert util.swap_plan([1], 0) == []
    with pytest.raises(ValueError):
        util.swap_plan([1], 1)


def test_log_problems_name_a_count_mismatch_and_a_model_mismatch():
    rows = [{"model_served": "dynalign-v1", "status": "ok", "n": 10},
            {"model_served": "dynalign-v2", "status": "ok", "n": 4},
            {"model_served": "dynalign-v2", "status": "aborted", "n": 1}]
    assert util.log_problems("swaps", {"dynalign-v1": 10, "dynalign-v2": 5}, rows) == []
    assert util.log_problems("swaps", {"dynalign-v1": 10, "dynalign-v3": 6}, rows) == [
        "swaps: 15 log rows for 16 completed requests",
        "swaps: 5 log rows name dynalign-v2, 0 answers did",
        "swaps: 0 log rows name dynalign-v3, 6 answers did"]


def test_version_problems_check_the_requests_between_swaps():
    o = util.Outcome
    swaps = [{"version": 2, "at_s": 10.0, "client_s": 1.0}, {"version": 3, "at_s": 20.0}]
    outcomes = [o(0, 5, True, "dynalign-v1"), o(8, 4, True, "dynalign-v1"),  # across swap 1
                o(12, 3, False, "dynalign-v2"), o(16, 3, True, "dynalign-v2", error="x"),
                o(19, 3, True, "dynalign-v2")]  # across swap 2; nothing ran wholly after it
    problems, notes = util.version_problems(outcomes, swaps, "dynalign-v1")
    assert problems == []
    assert notes == ["no request ran wholly after the swap to dynalign-v3: not checked"]
    outcomes.append(o(21, 2, True, "dynalign-v2"))
    problems, notes = util.version_problems(outcomes, swaps, "dynalign-v1")
    assert problems == ["1 requests ran while dynalign-v3 was active; answered as "
                        "{'dynalign-v2': 1}"] and notes == []


def test_table_shows_both_phases_and_the_ratio_row():
    base = util.summarize([util.Outcome(0, 0.2, True, "m", 10)] * 4, 2.0)
    swaps = util.summarize([util.Outcome(0, 0.4, True, "m", 10)] * 3, 2.0)
    lines = util.table(base, swaps).splitlines()
    assert [line.split()[0] for line in lines] == ["phase", "baseline", "with", "swaps"]
    assert lines[1].split()[1:5] == ["4", "0", "2.00", "20.0"]
    assert lines[3].split()[-4:] == ["0.750", "0.750", "2.000", "2.000"]  # req/s tok/s p50 p99


def test_help_imports_nothing_heavy():
    out = subprocess.run([sys.executable, "-X", "importtime", str(BENCH / "load.py"), "--help"],
                         capture_output=True, text=True, check=True, timeout=60)
    assert "--clients" in out.stdout and "--mode {merged,lora}" in out.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines()}
    assert not imported & {"httpx", "torch", "vllm", "openai", "transformers", "peft"}


def test_across_swaps_separates_requests_running_at_a_swap():
    o = util.Outcome
    outcomes = [o(0.0, 1.0, True), o(0.5, 3.0, True), o(2.0, 1.0, False), o(4.0, 2.0, True),
                o(4.5, 0.2, True, error="boom")]
    got = util.across_swaps(outcomes, [{"at_s": 1.5, "client_s": 0.1}, {"at_s": 4.6}])
    assert got["in_flight_n"] == [1, 1]  # the one started at 0.5 s; the one at 4.0 s
    assert got["in_flight_p50_ms"] == pytest.approx([3000, 2000])
    assert got["others_p50_ms"] == pytest.approx(1000)
    assert util.across_swaps(outcomes, []) == {"in_flight_p50_ms": [], "in_flight_n": [],
                                               "others_p50_ms": pytest.approx(1500)}
