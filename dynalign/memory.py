"""Will a refresh round fit in this machine's memory? An estimate made before anything is loaded.

Why: the learner is a separate process beside the serving engine; a round that does not fit is
killed by the kernel minutes in, after the user waited. From the model's shape (config.json and
the safetensors headers: no weights are read) and the round's settings this estimates the
learner's peak resident memory, and a round that would not fit in what the machine has available
now (the engine's memory is already taken) is refused with the setting to lower.

The model (CPU, no gradient checkpointing), each term in bytes:
  resident    the Python process with torch/TRL and the step's buffers (~1 GiB, fitted to
              bench/learn_memory.py), the weights in the training dtype, the LoRA weights with
              their gradients and two Adam moments
  generation  the bf16 copy of the frozen weights when the rollout dtype differs, the KV cache of
              all the step's sequences (prompts_per_step x G) at full length, and their logits
  update      one micro-batch's activations kept for backward: ACT_FLOATS_PER_TOKEN floats per
              token and layer, calibrated on the embedded model (2.27 MB per token in fp32 with
              LoRA r 16; linear in tokens from 320 to 1,280 tokens per micro-batch), x1.45
              where the learner runs on glibc's allocator instead of tcmalloc
The no-grad passes between them (the reference log-probs, and with learn.iterations > 1 the
policy's old log-probs TRL takes right after the rollout: a second pass of the same size) run a
micro-batch at a time and keep no activations for backward: below the update's peak, no term of
their own. The old log-probs they leave for the steps that reuse the batch are one float per
completion token (kilobytes).
A sequence is the longest prompt the round may select (a conversation logged since the last
round, or a seed prompt, counted in tokens by dynalign/conversation.py: the model's own
tokenizer where its tokenizer.json is at hand) and max_completion_tokens; rollouts also hold the CA system prompt. On a GPU the
learner's memory is CUDA memory, which this does not check.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from dynalign import catalog
from dynalign.errors import ConfigError
from dynalign.procs import TCMALLOC

GIB = 2**30
PROCESS_BYTES = 1.0 * GIB
# glibc's heap keeps a step's freed activations, fragmented: without tcmalloc (dynalign/procs.py)
# a micro-batch's peak was 1.45x (measured: 2,128 vs 1,471 MB over the process at rest)
GLIBC_FRAGMENTATION = 1.45
SYSTEM_PROMPT_TOKENS = 160  # the CA system prompt in the embedded model's tokenizer: ~130
BYTES = {"float32": 4, "bfloat16": 2}


def act_floats_per_token(shape: "Shape") -> int:
    """Activation floats kept per token and layer for backward (attention, norms, rotary, LoRA
    inputs ~14 x hidden; the MLP ~7 x intermediate): 18,816 for the embedded model, measured
    19,400."""
    return 14 * shape.hidden + 7 * shape.intermediate


@dataclass
class Shape:
    params: int
    hidden: int
    intermediate: int
    layers: int
    kv_width: int  # key/value heads x head size
    vocab: int


@dataclass
class Estimate:
    terms: dict[str, float]  # bytes

    @property
    def peak(self) -> float:
        t = self.terms
        return t["resident"] + t.get("judge", 0) + max(t["generation"], t["update"])

    def describe(self) -> str:
        return ", ".join(f"{k} {v / GIB:.1f}" for k, v in self.terms.items())


def model_shape(path: str | Path) -> Shape | None:
    """The shape of a local Hugging Face folder (None: not local, or not safetensors)."""
    folder = Path(path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files or not (folder / "config.json").is_file():
        return None
    config = json.loads((folder / "config.json").read_text())
    config = config.get("text_config", config)
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return Shape(params=sum(_count_params(f) for f in files), hidden=config["hidden_size"],
                 intermediate=config.get("intermediate_size", 4 * config["hidden_size"]),
                 layers=config["num_hidden_layers"], vocab=config["vocab_size"],
                 kv_width=config.get("num_key_value_heads", heads) * head_dim)


def _count_params(path: Path) -> int:
    """Parameters in one safetensors file, from its JSON header alone."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    total = 0
    for name, info in header.items():
        if name != "__metadata__":
            count = 1
            for dim in info["shape"]:
                count *= dim
            total += count
    return total


def estimate(shape: Shape, learn, rollout_bytes: int, prompt_tokens: int,
             fragmentation: float = 1.0) -> Estimate:
    """The learner's memory by phase for one round of `learn` (a LearnConfig) on `shape`, whose
    longest prompt has `prompt_tokens` tokens."""
    train = BYTES[learn.dtype]
    seq = prompt_tokens + learn.max_completion_tokens  # what the loss sees
    sampled = SYSTEM_PROMPT_TOKENS + seq  # rollouts also hold the CA system prompt
    sequences = learn.prompts_per_step * learn.num_generations
    lora = learn.lora_rank * shape.layers * (9 * shape.hidden + 3 * shape.intermediate
                                             + 2 * shape.kv_width)  # q k v o gate up down
    copy = shape.params * rollout_bytes if rollout_bytes != train else 0
    kv = 2 * shape.layers * shape.kv_width * sequences * sampled * rollout_bytes
    logits = 3 * sequences * shape.vocab * 4
    micro = min(learn.micro_batch, sequences)
    activations = micro * seq * shape.layers * act_floats_per_token(shape) * train * fragmentation
    return Estimate({"resident": PROCESS_BYTES + shape.params * train + lora * 4 * 4,
                     "generation": copy + kv + logits, "update": activations})


NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def native_bf16(cuda: bool, flags: set[str] | None = None) -> bool:
    """bf16 is computed natively: a GPU, or a CPU with AVX512-BF16 or AMX (an AVX2-only CPU
    emulates it, 3-5x slower than fp32). `flags`: the CPU's flags (None: this machine's)."""
    return cuda or bool(NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags))


def rollout_dtype_name(learn, cuda: bool, flags: set[str] | None = None) -> str:
    """learn.rollout_dtype resolved: "auto" is bf16 where it is native, else the training dtype
    (learner/precision.py says why). `flags` as for native_bf16."""
    if learn.rollout_dtype != "auto":
        return learn.rollout_dtype
    return "bfloat16" if native_bf16(cuda, flags) else learn.dtype


def engine_dtype_name(model, cuda: bool, flags: set[str] | None = None) -> str:
    """model.dtype resolved for vLLM's --dtype: "auto" (the model's own) where bf16 is native,
    else float32. `flags` as for native_bf16."""
    if model.dtype != "auto":
        return model.dtype
    return "auto" if native_bf16(cuda, flags) else "float32"


def cpu_flags() -> set[str]:
    """This CPU's feature flags, from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def available_bytes() -> float | None:
    """MemAvailable: what can be allocated without swapping (the engine's memory excluded)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def local_judges(cfg) -> set[str]:
    """The folders of the judges a round loads in its own process (`url = "local"`): the reward's,
    and the gate's when the gate runs; one model serving both is loaded once."""
    used = [cfg.learn.judge] if cfg.learn.reward == "judge" else []
    if cfg.learn.gate.enabled and cfg.learn.promote:
        used.append(cfg.eval.judge)
    return {catalog.resolve(e.model, cfg.home) for e in used if e.url == "local"}


def learner_on_gpu() -> bool:
    """The learner trains on a GPU here (nvidia-smi is on PATH): its memory is CUDA memory."""
    return shutil.which("nvidia-smi") is not None


def check_fits(model_path: str, learn, prompt_tokens: int, available: float | None = None,
               judges: set[str] = frozenset(), gpu: bool | None = None) -> Estimate | None:
    """Raise ConfigError naming the setting to lower when the round would not fit; the estimate
    otherwise (None: the model's shape is unknown, or the learner runs on a GPU). `judges`: the
    local judges' folders, whose weights (in the rollout dtype) the round holds too. `gpu`: the
    learner runs on a GPU (None: learner_on_gpu() says)."""
    if learner_on_gpu() if gpu is None else gpu:
        return None
    shape = model_shape(model_path)
    available = available_bytes() if available is None else available
    if shape is None or available is None:
        return None
    fragmentation = 1.0 if Path(TCMALLOC).exists() else GLIBC_FRAGMENTATION
    rollout = BYTES[rollout_dtype_name(learn, cuda=False)]
    est = estimate(shape, learn, rollout, prompt_tokens, fragmentation)
    shapes = [model_shape(j) for j in judges]
    est.terms["judge"] = sum(s.params * rollout for s in shapes if s)
    if est.peak > 0.9 * available:
        raise ConfigError(
            f"this refresh round would need about {est.peak / GIB:.1f} GiB of memory "
            f"({est.describe()} GiB) and the machine has {available / GIB:.1f} GiB available: "
            f"{_advice(est, learn)}")
    return est


def _advice(est: Estimate, learn) -> str:
    if est.terms.get("judge", 0) > max(est.terms["generation"], est.terms["update"]):
        return ("the local judge's weights are the largest part: use a smaller judge, or serve it "
                "elsewhere and point learn.judge.url / eval.judge.url at it")
    if est.terms["generation"] >= est.terms["update"]:
        return (f"lower learn.prompts_per_step (now {learn.prompts_per_step}) or "
                f"learn.max_completion_tokens (now {learn.max_completion_tokens}); the step's "
                f"prompts_per_step x num_generations sequences are sampled together")
    if learn.micro_batch > 1:
        return (f"lower learn.micro_batch (now {learn.micro_batch}; the update keeps that many "
                f"sequences' activations), or learn.max_completion_tokens")
    return (f"lower learn.max_completion_tokens (now {learn.max_completion_tokens}) or "
            f"learn.max_prompt_tokens (now {learn.max_prompt_tokens})")
