"""A GRPO step as four phases a person can watch: seconds, peak memory and progress of each.

Why one object: the same phase boundaries time the step (the metrics row), reset and read the
peak RSS (so each phase's peak is its own), and drive the live progress the admin API shows.
The phases of one optimiser step, in TRL's order:

  generation  our rollout: tokens through the model / to go (the prompts' prefill, then one
              token per sequence per decoding step)
  reference   reference log-probs with the adapter off: micro-batches done / to do
  scoring     the reward: candidates scored / to score (the reward is called a chunk at a time)
  update      the loss, backward and optimiser step: micro-batches done / to do

With learn.iterations = mu > 1 the reference phase also holds the policy's old log-probs (TRL
computes them right after the rollout), and the mu - 1 steps that reuse a batch are one update
phase each: no generation, reference or scoring, and no reward of their own (`end_step(None)`
keeps the last batch's). The ETA knows which steps to come will generate (dynalign/rounds.py).

Forward hooks on the decoder's layers advance the running phase (generation, reference, update)
layer by layer, so even one long forward pass (a prefill of 32 long prompts) shows movement;
the reward wrapper advances scoring itself. Progress is handed to `report` at most every
`every_s` seconds and at each phase change, so a watcher sees it move without a write per layer.
"""

from __future__ import annotations

import math
import resource
import time
from typing import Callable

from dynalign.rounds import PHASES, progress

CLEAR_REFS = "/proc/self/clear_refs"


class PeakMemory:
    """Peak resident memory of this process since the last `reset()` (Linux: VmHWM, reset by
    writing 5 to /proc/self/clear_refs), and peak CUDA memory when torch uses a GPU: allocated
    (what tensors held) and reserved (what torch's caching allocator held: what the GPU lost)."""

    def __init__(self):
        self.resettable = _write(CLEAR_REFS, "5")

    def reset(self) -> None:
        if self.resettable:
            _write(CLEAR_REFS, "5")
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()

    def read(self) -> dict:
        """{"rss_mb": ..., "cuda_mb": ..., "cuda_reserved_mb": ...}: MiB since the last reset
        (rss: since start where the kernel cannot reset it)."""
        out = {"rss_mb": _vm_hwm_mb() if self.resettable else _maxrss_mb()}
        cuda = _cuda()
        if cuda is not None:
            out["cuda_mb"] = round(cuda.max_memory_allocated() / 2**20, 1)
            out["cuda_reserved_mb"] = round(cuda.max_memory_reserved() / 2**20, 1)
        return out


class StepProgress:
    """Times, measures and reports the phases of each step (see the module docstring)."""

    def __init__(self, report: Callable[[dict], None] = lambda p: None, max_steps: int = 1,
                 every_s: float = 1.0, clock: Callable[[], float] = time.perf_counter,
                 iterations: int = 1):
        self.report, self.max_steps, self.every_s, self.clock = report, max_steps, every_s, clock
        self.iterations = iterations  # optimiser steps per generated batch (learn.iterations)
        self.memory = PeakMemory()
        self.steps_done = 0
        self.step_seconds: list[float] = []
        self.reward: float | None = None
        self.last_peak: float | None = None  # the last finished step's peak RSS, MiB
        self._new_step()

    # the step
    def begin_step(self) -> None:
        self._new_step()
        self.step_started = self.clock()

    def end_step(self, reward: float | None) -> dict:
        """Close the step: its metrics (seconds and peak MiB per phase) for the metrics row.
        `reward`: its batch's mean reward; None for a step that reused the last batch (the
        reward shown stays that batch's)."""
        self._close_phase()
        seconds = self.clock() - self.step_started
        self.steps_done += 1
        self.step_seconds.append(seconds)
        if reward is not None:
            self.reward = reward
        row = {f"seconds/{_key(p)}": round(self.seconds.get(p, 0.0), 3) for p in PHASES}
        row["seconds/step"] = round(seconds, 3)
        for name, peak in self.peaks.items():
            for kind, mb in peak.items():
                row[f"peak_{kind}/{name}"] = mb
        for kind in ("rss_mb", "cuda_mb", "cuda_reserved_mb"):
            values = [p[kind] for p in self.peaks.values() if kind in p]
            if values:
                row[f"peak_{kind}"] = max(values)
        self.last_peak = row.get("peak_rss_mb")
        self.current = None
        return row

    # phases
    def phase(self, name: str, total: int, unit: str) -> None:
        """Start phase `name` (closing the running one) with `total` `unit`s to do."""
        self._close_phase()
        self.memory.reset()
        self.current = {"name": name, "done": 0.0, "total": total, "unit": unit,
                        "started": self.clock()}
        self._send(force=True)

    def tick(self, units: float = 1) -> None:
        if self.current is None:
            return
        c = self.current
        c["done"] = min(c["total"], c["done"] + units)
        self._send()

    def watch(self, layers) -> None:
        """Advance the running phase from these decoder layers' forward passes."""
        for layer in layers:
            layer.register_forward_hook(self._layer_hook(len(layers)), with_kwargs=True)

    def _layer_hook(self, count: int):
        def hook(module, args, kwargs, output) -> None:
            c = self.current
            if c is None or c["name"] == "scoring":
                return
            if c["unit"] == "tokens":  # a [batch, tokens, hidden] input: its tokens, per layer
                hidden = args[0] if args else kwargs.get("hidden_states")
                self.tick(hidden.shape[0] * hidden.shape[1] / count)
            else:  # one micro-batch = one pass through every layer
                self.tick(1 / count)
        return hook

    def snapshot(self) -> dict:
        """The progress dict for the store: step, ETA, and the running phase's done / total."""
        now = self.clock()
        current = None
        if self.current is not None:
            c = self.current
            current = {"phase": c["name"], "done": int(c["done"]), "total": c["total"],
                       "unit": c["unit"], "elapsed": now - c["started"]}
        step_elapsed = now - self.step_started if self.step_started is not None else 0.0
        out = progress(self.steps_done, self.max_steps, self.step_seconds, self.reward,
                       current=current, finished=dict(self.seconds), step_elapsed=step_elapsed,
                       iterations=self.iterations)
        if self.last_peak is not None:
            out["peak_rss_mb"] = self.last_peak
        return out

    # internals
    def _new_step(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, dict] = {}
        self.current: dict | None = None
        self.step_started: float | None = None
        self.last_sent = -math.inf

    def _close_phase(self) -> None:
        c = self.current
        if c is None:
            return
        self.seconds[c["name"]] = self.seconds.get(c["name"], 0.0) + self.clock() - c["started"]
        self.peaks[c["name"]] = self.memory.read()
        self.current = None

    def _send(self, force: bool = False) -> None:
        now = self.clock()
        if force or now - self.last_sent >= self.every_s:
            self.last_sent = now
            self.report(self.snapshot())


def _key(phase: str) -> str:
    return "ref_logprobs" if phase == "reference" else phase


def _write(path: str, text: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(text)
        return True
    except OSError:  # not Linux, or a kernel without clear_refs: peaks are since start then
        return False


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return _maxrss_mb()


def _maxrss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _cuda():
    import torch

    return torch.cuda if torch.cuda.is_available() else None
