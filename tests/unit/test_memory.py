"""dynalign/memory.py: a refresh round's memory estimated from the model's shape alone, and the
refusal of a round that would not fit, before anything is loaded; learner/progress.py: the live
progress of a step's phases and its ETA before the first step ends."""

import json
import os
import platform
import stat
import struct
import sys
from contextlib import closing

import pytest

from dynalign.config import LearnConfig, load_config
from dynalign.errors import ConfigError, RoundBusyError
from dynalign.memory import (GIB, Estimate, check_fits, estimate, learner_on_gpu, local_judges,
                             model_shape)
from dynalign.rounds import (PHASE_SHARE, generates, longest_prompt, phase_shares, progress,
                             scored_batches, step_text)
from learner.progress import CLEAR_REFS, StepProgress

# SmolLM2-135M's shape (the embedded model)
CONFIG = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
          "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
          "vocab_size": 49152}


def write_model(folder, params_per_file=(100_000_000, 34_515_008)):
    """A model folder whose safetensors files hold headers only (the estimate reads no weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    for i, count in enumerate(params_per_file):
        header = json.dumps({"__metadata__": {"format": "pt"},
                             "w": {"dtype": "BF16", "shape": [count], "data_offsets": [0, 2 * count]}})
        (folder / f"model-{i}.safetensors").write_bytes(
            struct.pack("<Q", len(header)) + header.encode())
    return folder


def test_model_shape_reads_config_and_safetensors_headers(tmp_path):
    shape = model_shape(write_model(tmp_path / "m"))
    assert shape.params == 134_515_008 and shape.layers == 30 and shape.kv_width == 192
    assert model_shape(tmp_path / "nowhere") is None
    assert model_shape("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # a hub id: not local


def test_estimate_of_the_default_round_and_how_micro_batch_bounds_it(tmp_path):
    shape = model_shape(write_model(tmp_path / "m"))
    learn = LearnConfig()
    est = estimate(shape, learn, 4, prompt_tokens=134)  # the seed set's longest train prompt
    # measured for the tiny round on the embedded model (bench/learn_memory.py): ~2.3-2.7 GiB
    assert 2.5 * GIB < est.peak < 4 * GIB
    whole = estimate(shape, LearnConfig(micro_batch=32), 4, prompt_tokens=134)
    assert whole.terms["update"] == pytest.approx(16 * est.terms["update"])
    longer = estimate(shape, learn, 4, prompt_tokens=1000)
    assert longer.terms["update"] > 2 * est.terms["update"]
    bf16 = estimate(shape, learn, 2, prompt_tokens=134)  # rollouts in bf16: a copy, half the KV
    assert bf16.terms["generation"] != est.terms["generation"]


def test_a_local_judge_adds_its_weights_and_is_named_when_it_is_what_does_not_fit(tmp_path):
    policy, judge = write_model(tmp_path / "m"), write_model(tmp_path / "j", (1_800_000_000,))
    learn = LearnConfig(rollout_dtype="float32")
    alone = check_fits(str(policy), learn, prompt_tokens=134, available=24 * GIB, gpu=False)
    judged = check_fits(str(policy), learn, prompt_tokens=134, available=24 * GIB,
                        judges={str(judge)}, gpu=False)
    assert judged.terms["judge"] == 1_800_000_000 * 4
    assert judged.peak == pytest.approx(alone.peak + 1_800_000_000 * 4)
    with pytest.raises(ConfigError, match="the local judge's weights are the largest part"):
        check_fits(str(policy), learn, prompt_tokens=134, available=8 * GIB, judges={str(judge)},
                   gpu=False)


def test_local_judges_are_the_in_process_ones_a_round_loads():
    cfg = load_config(None, {"learn.reward": "judge", "learn.judge.url": "local",
                             "learn.judge.model": "qwen2.5-coder-1.5b", "eval.judge.url": "local",
                             "eval.judge.model": "qwen2.5-coder-1.5b"})
    assert local_judges(cfg) == {str(cfg.home / "models" / "qwen2.5-coder-1.5b")}
    remote_gate = load_config(None, {"learn.reward": "judge", "learn.judge.url": "local",
                                     "learn.judge.model": "/m"})
    assert local_judges(remote_gate) == {"/m"}
    assert local_judges(load_config(None, {"eval.judge.url": "local", "eval.judge.model": "/j",
                                           "learn.gate.enabled": False})) == set()


def test_a_round_beyond_the_machine_is_refused_naming_the_setting(tmp_path):
    folder = write_model(tmp_path / "m")
    big = LearnConfig(prompts_per_step=64, max_completion_tokens=2048)
    with pytest.raises(ConfigError) as e:
        check_fits(str(folder), big, prompt_tokens=134, available=24 * GIB, gpu=False)
    message = str(e.value)
    assert "learn.prompts_per_step (now 64)" in message and "GiB" in message
    with pytest.raises(ConfigError, match=r"learn.micro_batch \(now 32"):
        check_fits(str(folder), LearnConfig(micro_batch=32), 134, available=8 * GIB, gpu=False)
    with pytest.raises(ConfigError, match="learn.max_completion_tokens"):
        check_fits(str(folder), LearnConfig(micro_batch=1, max_completion_tokens=30000), 134,
                   available=8 * GIB, gpu=False)
    assert isinstance(check_fits(str(folder), LearnConfig(), 134, available=24 * GIB, gpu=False),
                      Estimate)
    assert check_fits(str(tmp_path / "nowhere"), big, 536, available=GIB,
                      gpu=False) is None  # unknown shape


def test_on_a_gpu_the_check_stands_aside(tmp_path, monkeypatch):
    """A learner on a GPU holds its round in CUDA memory, which the estimate does not model: the
    round refused on a CPU is let through there. By default the GPU is found by nvidia-smi on
    PATH (a PATH with and without one here)."""
    folder = write_model(tmp_path / "m")
    big = LearnConfig(prompts_per_step=64, max_completion_tokens=2048)
    assert check_fits(str(folder), big, 536, available=24 * GIB, gpu=True) is None
    with pytest.raises(ConfigError, match="learn.prompts_per_step"):
        check_fits(str(folder), big, 536, available=24 * GIB, gpu=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    assert not learner_on_gpu()
    with pytest.raises(ConfigError, match="learn.prompts_per_step"):
        check_fits(str(folder), big, 536, available=24 * GIB)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    assert learner_on_gpu()
    assert check_fits(str(folder), big, 536, available=24 * GIB) is None


def test_the_round_manager_refuses_before_it_opens_a_round(tmp_path):
    from learner.manager import RoundManager

    folder = write_model(tmp_path / "m")
    cfg = load_config(None, {"model.path": str(folder)})
    manager = RoundManager(cfg, publish=lambda *a: 1, gpu=False)  # the CPU check, on any machine
    # ~0.4 TB of KV cache: beyond any machine this runs on
    with pytest.raises(ConfigError, match="learn.prompts_per_step"):
        manager.trigger("operator", {"prompts_per_step": 512, "max_completion_tokens": 2048})
    assert manager.store().rounds() == []  # nothing opened, nothing started


def test_longest_prompt_bounds_what_a_round_may_select():
    """In tokens: here the estimate without a tokenizer file (4 characters a token, 5 for the
    turn's template markers)."""
    learn = LearnConfig(max_prompt_tokens=15)
    exchanges = [{"messages": json.dumps([{"role": "user", "content": "x" * 40}])},  # 15
                 {"messages": json.dumps([{"role": "user", "content": "y" * 60}])}]  # 20: left out
    seeds = [{"prompt": "s" * 30, "split": "train"}, {"prompt": "h" * 45, "split": "heldout"}]
    assert longest_prompt(exchanges, seeds, learn) == 15
    assert longest_prompt(exchanges, seeds, LearnConfig(logged_share=0.0)) == 12


def test_eta_before_the_first_step_ends_projects_the_phases_to_come():
    # generation a quarter done in 10 s: 40 s projected, then scaled by the generation's share
    share = PHASE_SHARE["generation"]
    p = progress(0, 2, [], None, current={"phase": "generation", "done": 25, "total": 100,
                                          "unit": "tokens", "elapsed": 10.0},
                 finished={}, step_elapsed=10.0)
    assert p["seconds_per_step"] == pytest.approx(40 / share, abs=0.1)
    assert p["eta_s"] == pytest.approx(2 * 40 / share - 10, abs=0.1)
    assert sum(PHASE_SHARE.values()) == pytest.approx(1.0)
    assert (p["step_phase"], p["done"], p["total"], p["unit"]) == ("generation", 25, 100, "tokens")
    nothing_yet = progress(0, 2, [], None, current={"phase": "generation", "done": 0,
                                                    "total": 100, "unit": "tokens", "elapsed": 1.0})
    assert nothing_yet["eta_s"] is None
    later = progress(1, 2, [30.0], 1.0, current={"phase": "scoring", "done": 1, "total": 4,
                                                 "unit": "candidates", "elapsed": 2.0},
                     finished={"generation": 8.0, "reference": 2.0}, step_elapsed=12.0)
    assert later["eta_s"] == pytest.approx(30.0 - 12.0)  # the mean step once one has ended


def test_with_iterations_the_steps_that_generate_and_those_that_reuse_are_timed_apart():
    """learn.iterations = 2: TRL generates at steps 1, 3, 5, ...; steps 2, 4, ... only update."""
    assert [generates(step, 2) for step in range(1, 6)] == [True, False, True, False, True]
    assert all(generates(step, 1) for step in range(1, 6))
    assert scored_batches(LearnConfig(max_steps=5, iterations=2)) == 3
    assert scored_batches(LearnConfig(max_steps=8, iterations=4)) == 2
    shares = phase_shares(2)  # the reference phase holds the old log-probs too: two passes
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["reference"] / shares["update"] == pytest.approx(2 * 0.09 / 0.27)
    assert phase_shares(1) == PHASE_SHARE
    # one generating step of 40 s done; to come: 2 (reuse), 3 (generates), 4 (reuse), the reuse
    # steps projected as the generating step's update share (not as 40 s each)
    p = progress(1, 4, [40.0], 3.0, iterations=2)
    assert p["eta_s"] == pytest.approx(40 + 2 * 40 * shares["update"], abs=0.1)
    assert p["eta_s"] < 40 * 3 / 2
    # once a reuse step is done, each kind has its own mean: step 3 as 40 s, step 4 as 10 s
    done = progress(2, 4, [40.0, 10.0], 3.0, iterations=2)
    assert done["eta_s"] == pytest.approx(50.0) and done["seconds_per_step"] == 25.0
    running = progress(2, 4, [40.0, 10.0], 3.0, current={"phase": "generation", "done": 5,
                                                          "total": 10, "unit": "tokens",
                                                          "elapsed": 5.0},
                       finished={}, step_elapsed=5.0, iterations=2)
    assert running["eta_s"] == pytest.approx(45.0)
    # before any step ends, the projection is of a generating step, with the doubled reference
    first = progress(0, 4, [], None, current={"phase": "reference", "done": 1, "total": 2,
                                              "unit": "micro-batches", "elapsed": 3.0},
                     finished={"generation": 20.0}, step_elapsed=23.0, iterations=2)
    full = (20 + 6) / (shares["generation"] + shares["reference"])
    assert first["seconds_per_step"] == pytest.approx(full, abs=0.1)
    assert first["eta_s"] == pytest.approx(2 * full + 2 * full * shares["update"] - 23, abs=0.2)
    # iterations = 1: the mean step, as before
    assert progress(2, 10, [1.0, 3.0], 2.5, iterations=1)["eta_s"] == 16.0


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_step_progress_moves_layer_by_layer_and_reports_at_most_every_second():
    torch = pytest.importorskip("torch")
    clock, reports = Clock(), []
    steps = StepProgress(reports.append, max_steps=3, every_s=1.0, clock=clock)
    layers = [torch.nn.Identity(), torch.nn.Identity()]  # a two-layer "decoder"
    steps.watch(layers)

    def forward(batch: int, tokens: int) -> None:
        hidden = torch.zeros(batch, tokens, 8)
        for layer in layers:
            layer(hidden)

    steps.begin_step()
    steps.phase("generation", total=4 * (10 + 5), unit="tokens")  # 4 sequences, prompt 10, 5 new
    assert len(reports) == 1 and reports[-1]["done"] == 0 and reports[-1]["eta_s"] is None
    layers[0](torch.zeros(4, 10, 8))  # half of the prefill: the progress moves inside a forward
    clock.t += 1.0
    layers[1](torch.zeros(4, 10, 8))
    assert reports[-1]["done"] == 40 and reports[-1]["eta_s"] is not None
    for _ in range(4):  # four decoding steps within 0.4 s: no report
        clock.t += 0.1
        forward(4, 1)
    assert reports[-1]["done"] == 40
    clock.t += 1.0
    forward(4, 1)
    assert reports[-1]["done"] == 58  # reported at the first layer after a second had passed
    assert steps.snapshot()["done"] == 60 == steps.snapshot()["total"]
    steps.phase("reference", total=2, unit="micro-batches")
    assert reports[-1]["step_phase"] == "reference"
    forward(2, 50)
    clock.t += 2.0
    forward(2, 50)
    assert reports[-1]["done"] == 1 and steps.snapshot()["done"] == 2
    steps.phase("scoring", total=8, unit="candidates")
    forward(2, 50)  # scoring counts candidates (the reward wrapper), not forward passes
    assert steps.snapshot()["done"] == 0
    steps.tick(8)
    steps.phase("update", total=4, unit="micro-batches")
    clock.t += 3.0
    row = steps.end_step(reward=2.0)
    assert row["seconds/generation"] == pytest.approx(2.4) and row["seconds/update"] == 3.0
    assert row["seconds/step"] == pytest.approx(7.4) and row["peak_rss_mb"] > 0
    after = steps.snapshot()
    assert after["step"] == 1 and after["eta_s"] == pytest.approx(2 * 7.4)
    assert "step_phase" not in after and after["peak_rss_mb"] == row["peak_rss_mb"]


def test_a_step_that_reuses_a_batch_is_one_update_phase_and_keeps_the_batchs_reward():
    pytest.importorskip("torch")
    clock, reports = Clock(), []
    steps = StepProgress(reports.append, max_steps=4, every_s=0.0, clock=clock, iterations=2)
    steps.begin_step()
    for phase, seconds in (("generation", 4.0), ("reference", 1.0), ("scoring", 2.0),
                           ("update", 3.0)):
        steps.phase(phase, total=2, unit="x")
        clock.t += seconds
    steps.end_step(reward=2.5)
    steps.begin_step()  # step 2 reuses step 1's batch: what StepCallback starts
    steps.phase("update", total=2, unit="micro-batches")
    clock.t += 3.0
    assert reports[-1]["step_phase"] == "update" and reports[-1]["eta_s"] is not None
    row = steps.end_step(reward=None)
    assert row["seconds/update"] == 3.0 and row["seconds/generation"] == 0.0
    assert row["seconds/step"] == 3.0
    after = steps.snapshot()
    assert after["step"] == 2 and after["reward"] == 2.5  # the last scored batch's
    assert after["eta_s"] == pytest.approx(10.0 + 3.0)  # step 3 generates, step 4 reuses


def test_each_phase_has_its_own_peak_rss():
    """A phase's peak RSS counts from that phase's start (the kernel's high-water mark is reset
    at each phase), not from the process's start: 128 MiB written and freed in one phase are in
    that phase's peak and not in the next one's."""
    pytest.importorskip("torch")  # StepProgress asks torch whether a GPU is in use
    if not os.path.exists(CLEAR_REFS):
        pytest.skip("this kernel cannot reset the peak RSS: peaks are since the start there")
    steps = StepProgress(clock=Clock())
    steps.begin_step()
    steps.phase("generation", total=1, unit="tokens")
    block = b"x" * (128 * 2**20)  # every page written: resident
    del block  # a block this large is mapped on its own: freeing it returns it to the kernel
    steps.phase("reference", total=1, unit="micro-batches")
    row = steps.end_step(reward=None)
    assert row["peak_rss_mb/generation"] - row["peak_rss_mb/reference"] > 100, row
    assert row["peak_rss_mb"] == row["peak_rss_mb/generation"]


def test_step_text_for_people():
    running = {"status": "running", "progress": {"step_phase": "generation", "done": 1024,
                                                 "total": 8192, "unit": "tokens",
                                                 "peak_rss_mb": 2310.4}}
    assert step_text(running) == "generation 1,024/8,192 tokens; peak RSS 2,310 MB"
    assert step_text({"status": "promoted", "progress": {}, "summary": {"peak_rss_mb": 999}}) == (
        "peak RSS 999 MB")
    assert step_text({"status": "queued"}) == ""


def test_the_engine_computes_bf16_only_where_it_is_native():
    """model.dtype "auto": the model's own bf16 on a GPU or a CPU with AVX512-BF16/AMX, else
    float32 (an AVX2-only CPU emulates bf16); a dtype that is set is passed as it is. Likewise
    learn.rollout_dtype "auto": bf16 where native, else the training dtype."""
    from dynalign.memory import cpu_flags, engine_dtype_name, rollout_dtype_name
    from server.engine import engine_command, is_cpu_platform

    avx2 = {"sse2", "avx2", "fma"}
    avx512_bf16 = avx2 | {"avx512f", "avx512_bf16"}
    amx = avx2 | {"avx512f", "amx_tile", "amx_bf16"}
    cfg = load_config()
    assert cfg.model.dtype == "auto" and cfg.learn.rollout_dtype == "auto"
    assert engine_dtype_name(cfg.model, cuda=False, flags=avx2) == "float32"
    assert engine_dtype_name(cfg.model, cuda=False, flags=avx512_bf16) == "auto"
    assert engine_dtype_name(cfg.model, cuda=False, flags=amx) == "auto"
    assert engine_dtype_name(cfg.model, cuda=True, flags=avx2) == "auto"
    assert rollout_dtype_name(cfg.learn, cuda=False, flags=avx2) == cfg.learn.dtype == "float32"
    assert rollout_dtype_name(cfg.learn, cuda=False, flags=amx) == "bfloat16"
    assert rollout_dtype_name(cfg.learn, cuda=True, flags=avx2) == "bfloat16"
    fixed = load_config(overrides={"model.dtype": "bfloat16"})
    assert engine_dtype_name(fixed.model, cuda=False, flags=avx2) == "bfloat16"
    if sys.platform == "linux" and platform.machine() == "x86_64":
        assert "sse2" in cpu_flags()  # this machine's flags are read (every x86-64 CPU has SSE2)
    command = engine_command(cfg, "merged")  # the engine is started with the resolved dtype
    assert command[command.index("--dtype") + 1] == engine_dtype_name(
        cfg.model, cuda=not is_cpu_platform())


def test_while_a_round_runs_a_trigger_is_busy_not_short_of_memory(tmp_path):
    """The running round holds the memory a second one would need: the refusal names the
    round (the schedule logs "skipped"), not the memory."""
    from learner.manager import RoundManager

    folder = write_model(tmp_path / "m")
    cfg = load_config(None, {"model.path": str(folder)})
    manager = RoundManager(cfg, publish=lambda *a: 1, gpu=False)
    with closing(manager.store()) as store:
        running = store.open_round("operator", "cfg", owner_pid=os.getpid())
    with pytest.raises(RoundBusyError, match=f"round {running} is queued"):
        manager.trigger("operator", {"prompts_per_step": 512, "max_completion_tokens": 2048})
