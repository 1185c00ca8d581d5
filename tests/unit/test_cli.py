"""The `dynalign` command as a user runs it: a subprocess, exit codes, stderr."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from dynalign.cli import build_parser
from dynalign.launch import free_port


def _run(*args, timeout=60):
    # Runs in the test's tmp cwd (see tests/conftest.py), so no ./dynalign.toml leaks in.
    return subprocess.run([sys.executable, "-m", "dynalign.cli", *args], capture_output=True,
                          text=True, timeout=timeout)



def test_help():
    out = _run("--help")
    assert out.returncode == 0
    for command in ("config", "model", "serve", "adapters", "generate", "data"):
        assert command in out.stdout


def test_console_script_help():
    script = Path(sys.executable).parent / "dynalign"  # installed by [project.scripts]
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "usage: dynalign" in out.stdout


def test_config_prints_resolved_toml(tmp_path):
    out = _run("config")
    assert out.returncode == 0, out.stderr
    assert "[engine]" in out.stdout and "[server]" in out.stdout
    data = tomllib.loads(out.stdout)
    assert data["server"]["port"] == 8000 and data["ui"]["port"] == 7860


def test_config_reads_local_file(tmp_path):
    (tmp_path / "dynalign.toml").write_text("[server]\nport = 9123\n")
    out = _run("config")
    assert out.returncode == 0, out.stderr
    assert tomllib.loads(out.stdout)["server"]["port"] == 9123


def test_missing_config_file():
    out = _run("--config", "missing.toml", "config")
    assert out.returncode == 1
    assert out.stderr.startswith("error:")
    assert "missing.toml" in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


def test_unknown_key_exits_1_naming_it(tmp_path):
    (tmp_path / "bad.toml").write_text("[engine]\nbogus = 1\n")
    out = _run("--config", "bad.toml", "config")
    assert out.returncode == 1
    assert "engine.bogus" in out.stderr
    assert "Traceback" not in out.stderr


def test_adapters_list_without_gateway(tmp_path):
    port = free_port()
    (tmp_path / "dynalign.toml").write_text(f"[server]\nport = {port}\n")
    out = _run("adapters", "list", timeout=30)
    assert out.returncode == 1
    assert "cannot reach" in out.stderr and str(port) in out.stderr
    assert "Traceback" not in out.stderr


def test_parser_rejects_missing_subcommand():
    out = _run()
    assert out.returncode == 2
    args = build_parser().parse_args(["serve", "--port", "9000", "--swap", "lora", "--no-ui"])
    assert (args.port, args.swap, args.no_ui) == (9000, "lora", True)


def test_data_check_passes_the_shipped_seed_set():
    out = _run("data", "check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "seed.jsonl: 1000 rows, 0 flagged" in out.stderr


def test_data_check_lists_flagged_rows_and_exits_1(tmp_path):
    good = ("Our village in Ghana has one borehole for 400 people and it broke last week; the "
            "district office says a repair crew may come in two months. Work out the next weeks.")
    lines = [{"id": "a", "prompt": good}, {"id": "b", "prompt": good.replace("Ghana", "Togo")},
             {"id": "c", "prompt": good + " Reply in JSON."}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = _run("data", "check", "p.jsonl")
    assert out.returncode == 1
    assert "b: near-duplicate of a" in out.stdout
    assert "c: asks for a format: 'JSON'" in out.stdout
    assert "3 rows, 2 flagged" in out.stderr


def test_data_check_malformed_file_is_a_clear_error(tmp_path):
    (tmp_path / "p.jsonl").write_text("{oops\n")
    out = _run("data", "check", "p.jsonl")
    assert out.returncode == 1
    assert out.stderr.startswith("error: p.jsonl:1: not JSON")


def test_data_stats_writes_numbers_and_plots(tmp_path):
    out = _run("data", "stats", "--out", "figs")
    assert out.returncode == 0, out.stderr
    stats = json.loads((tmp_path / "figs" / "stats.json").read_text())
    assert stats["rows"] == 1000 and stats["splits"] == {"train": 900, "heldout": 100}
    assert stats["rouge_l"]["pairs"] == 499500
    for png in ("rouge_l.png", "lengths.png"):
        assert (tmp_path / "figs" / png).read_bytes()[:4] == b"\x89PNG"
    assert "pairwise ROUGE-L over 499,500 pairs" in out.stdout


def test_generate_against_an_unreachable_endpoint_fails_clearly(tmp_path):
    (tmp_path / "c.toml").write_text("[generate]\nmax_retries = 1\n")
    out = _run("--config", "c.toml", "generate", "--count", "1", "--url", f"http://127.0.0.1:{free_port()}/v1",
               "--out", "g.jsonl", "--no-progress")
    assert out.returncode == 1
    assert "error: goal_writer (dynalign at http://127.0.0.1:" in out.stderr
    assert "cannot connect after 1 retries" in out.stderr and "Traceback" not in out.stderr


# refresh rounds: `dynalign refresh | rounds | learn`

def test_round_commands_are_listed_and_parse():
    out = _run("--help")
    for command in ("refresh", "rounds", "learn"):
        assert command in out.stdout
    parser = build_parser()
    args = parser.parse_args(["refresh", "--max-steps", "2", "--prompts", "3", "--reward", "rule",
                              "--set", "rule=keyword", "--set", "lora_rank=8", "--wait"])
    assert (args.command, args.max_steps, args.prompts, args.reward, args.wait) == \
        ("refresh", 2, 3, "rule", True)
    assert args.set == ["rule=keyword", "lora_rank=8"]
    args = parser.parse_args(["refresh"])
    assert (args.max_steps, args.prompts, args.reward, args.set, args.wait) == \
        (None, None, None, [], False)
    args = parser.parse_args(["rounds"])
    assert (args.action, args.id) == ("list", None)
    args = parser.parse_args(["rounds", "cancel", "7"])
    assert (args.action, args.id) == ("cancel", 7)
    args = parser.parse_args(["learn", "--schedule", "--max-steps", "1"])
    assert (args.command, args.schedule, args.max_steps) == ("learn", True, 1)
    assert parser.parse_args(["learn"]).schedule is False


def test_round_commands_reject_bad_arguments():
    out = _run("refresh", "--reward", "vibes")
    assert out.returncode == 2 and "invalid choice" in out.stderr
    out = _run("rounds", "show")
    assert out.returncode == 1
    assert out.stderr == "error: dynalign rounds show needs a round id\n"


def test_round_overrides_parse_set_values_as_toml():
    from dynalign.cli_rounds import round_overrides

    args = build_parser().parse_args([
        "learn", "--max-steps", "2", "--set", "lora_rank=8", "--set", "temperature=0.7",
        "--set", "use_vllm=true", "--set", "rule=keyword", "--set", " rule_keyword = \"thanks\"",
        "--set", "learning_rate=1e-5", "--set", "rule_keyword=many thanks"])
    assert round_overrides(args) == {
        "max_steps": 2, "lora_rank": 8, "temperature": 0.7, "use_vllm": True, "rule": "keyword",
        "rule_keyword": "many thanks", "learning_rate": 1e-5}  # the last --set of a key wins
    assert isinstance(round_overrides(args)["lora_rank"], int)
    assert round_overrides(build_parser().parse_args(["refresh"])) == {}


def test_round_overrides_want_key_equals_value():
    import pytest

    from dynalign.cli_rounds import round_overrides
    from dynalign.errors import ConfigError

    args = build_parser().parse_args(["refresh", "--set", "max_steps"])
    with pytest.raises(ConfigError, match="--set wants KEY=VALUE, got 'max_steps'"):
        round_overrides(args)


def test_progress_line():
    from dynalign.cli_rounds import progress_line

    assert progress_line({"id": 3, "status": "queued", "progress": {}}) == "round 3: queued"
    running = {"id": 3, "status": "running", "adapter_version": None, "error": None,
               "progress": {"step": 4, "max_steps": 10, "reward": 2.34567, "eta_s": 61.6}}
    assert progress_line(running) == "round 3: running, step 4/10, reward 2.346, ETA 62 s"
    running["progress"]["phase"] = "evaluating the candidate"
    assert progress_line(running) == ("round 3: running, evaluating the candidate, step 4/10, "
                                      "reward 2.346, ETA 62 s")
    running["progress"].update(phase="training", step=0, step_phase="scoring", done=12, total=32,
                               unit="candidates", peak_rss_mb=2310.4)
    assert progress_line(running) == ("round 3: running, training, step 0/10, scoring 12/32 "
                                      "candidates; peak RSS 2,310 MB, reward 2.346, ETA 62 s")
    done = {"id": 3, "status": "promoted", "adapter_version": 5, "progress": {"step": 10,
            "max_steps": 10}}
    assert progress_line(done) == "round 3: promoted, step 10/10, version 5"
    done["summary"] = {"peak_rss_mb": 2400.0}
    assert progress_line(done) == "round 3: promoted, step 10/10, peak RSS 2,400 MB, version 5"
    failed = {"id": 4, "status": "failed", "progress": {},
              "error": "Traceback...\n  File x\nRuntimeError: out of memory"}
    assert progress_line(failed) == "round 4: failed, (RuntimeError: out of memory)"


def test_refresh_and_rounds_without_gateway(tmp_path):
    port = free_port()
    (tmp_path / "c.toml").write_text(f"[server]\nport = {port}\n")
    out = _run("--config", "c.toml", "refresh", "--max-steps", "1", timeout=30)
    assert out.returncode == 1
    assert out.stderr.startswith(f"error: cannot reach the gateway at http://127.0.0.1:{port}/admin")
    assert "Traceback" not in out.stderr
    out = _run("--config", "c.toml", "refresh", "--set", "oops", timeout=30)
    assert out.returncode == 1 and "--set wants KEY=VALUE" in out.stderr
