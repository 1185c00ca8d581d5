"""One config tree, loaded from one TOML file (`dynalign.toml` by default).

Every section is a dataclass; a key the tree does not know is an error that names it. The state dir
(model, adapters, SQLite, logs) is `./state` unless `DYNALIGN_HOME` is set. `resolved_toml()` gives
the full tree back as TOML, so a run can save the exact config it used beside its outputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from dynalign import catalog, prompts
from dynalign.errors import ConfigError

DEFAULT_FILE = "dynalign.toml"
PREPARED_MARKER = "dynalign-prepared.json"  # written into a folder made by `dynalign model prepare`


@dataclass
class ModelConfig:
    # a name dynalign prepares (`dynalign model prepare NAME`: "smollm2-135m", "qwen2.5-coder-1.5b"),
    # a local HF folder or a hub id; "" = the embedded smollm2-135m, prepared into <state>/model
    path: str = ""
    name: str = ""  # name the base model is served under; "" = derived from path
    max_model_len: int = 2048
    dtype: str = "bfloat16"


@dataclass
class EngineConfig:
    host: str = "127.0.0.1"  # the engine listens on loopback only: the gateway is the front door
    port: int = 8001
    swap: str = "auto"  # "lora" | "merged" | "auto" (merged on CPU, lora on GPU)
    enforce_eager: bool = True  # CPU: skip the 100 s compile at every start
    kv_cache_gib: int = 2  # CPU KV cache (VLLM_CPU_KVCACHE_SPACE)
    gpu_memory_utilization: float = 0.5  # GPU: leave the rest to the learner
    max_lora_rank: int = 64
    max_loras: int = 4
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    extra_args: list[str] = field(default_factory=list)  # passed verbatim to the vLLM server
    startup_timeout_s: float = 900.0
    # When the engine dies the gateway answers 503 (code engine_restarting), restarts it and puts
    # the active version back. More than max_restarts deaths within restart_window_s stop the
    # whole service (exit code 1) for a supervisor to take over; 0 never restarts.
    max_restarts: int = 3
    restart_window_s: float = 600.0


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_n: int = 8  # largest `n` a chat request may ask for
    request_timeout_s: float = 600.0
    max_body_mb: float = 4.0  # larger request bodies get 413 (128k tokens of text are ~0.5 MiB)
    # Keys are never in this file: these name where they are (server/auth.py).
    api_keys_env: str = "DYNALIGN_API_KEY"  # chat keys, comma-separated; unset: open (loopback only)
    admin_key_env: str = "DYNALIGN_ADMIN_KEY"  # the admin key; unset: admin_key_file
    admin_key_file: str = ""  # "" = <state>/admin.key (created, mode 0600, on loopback)


@dataclass
class UIConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 7860


@dataclass
class PromptsConfig:
    """The paper's prompts (dynalign/prompts.py); replace any, keeping its [placeholders]."""

    ca_definition: str = prompts.CA_DEFINITION
    goal: str = prompts.GOAL
    instruction: str = prompts.INSTRUCTION
    criteria: str = prompts.CRITERIA
    feedback: str = prompts.FEEDBACK
    refinement: str = prompts.REFINEMENT
    system: str = prompts.SYSTEM
    reward: str = prompts.REWARD
    pairwise: str = prompts.PAIRWISE  # not from the paper (it does not print its judge prompt)


@dataclass
class DataConfig:
    seed: str = ""  # the seed task prompts (JSONL); "" = data/seed.jsonl shipped with dynalign


@dataclass
class EndpointConfig:
    """One role of the generation pipeline: an OpenAI-compatible endpoint and model."""

    url: str = ""  # "" = this dynalign server (server.host:server.port/v1)
    model: str = "dynalign"  # on a dynalign server, the active version
    api_key_env: str = "DYNALIGN_API_KEY"  # environment variable holding the key, if any
    temperature: float = 1.0  # < 0: not sent (reasoning models reject it)
    max_tokens: int = 256


@dataclass
class GenerateConfig:
    """`dynalign generate`: the paper's goal -> prompt -> critique -> revision loop."""

    count: int = 1000  # accepted prompts wanted in the output file
    out: str = ""  # JSONL written incrementally; "" = <state>/generated/prompts.jsonl
    max_revisions: int = 3  # critique-and-revise rounds before a prompt is rejected
    max_attempts: int = 0  # attempts per run before giving up; 0 = 5 x the prompts still wanted
    dedup_threshold: float = 0.7  # reject a prompt whose ROUGE-L to an accepted one is this high
    check_rules: bool = True  # also hold prompts to `dynalign data check`'s rules before accepting
    goal_context: int = 30  # previous goals kept in the goal writer's conversation
    goal_followup: str = "Write one more, different from all of the above."  # later turns' ask
    heldout_every: int = 10  # every 10th accepted prompt goes to the held-out split
    id_prefix: str = "gen"
    seed: int = 0  # per-request seeds derive from it (endpoints that honour `seed`)
    max_retries: int = 6  # rate limits, 5xx, timeouts: exponential backoff (the openai client's)
    timeout_s: float = 120.0
    goal_writer: EndpointConfig = field(default_factory=lambda: EndpointConfig(max_tokens=48))
    prompt_writer: EndpointConfig = field(default_factory=lambda: EndpointConfig(temperature=0.7))
    evaluator: EndpointConfig = field(default_factory=lambda: EndpointConfig(temperature=0.0))


@dataclass
class ScheduleConfig:
    """When refresh rounds run on their own (with `dynalign serve` or `dynalign learn --schedule`)."""

    interval_hours: float = 0.0  # 0 = no interval schedule
    cron: str = ""  # crontab line ("0 3 * * *" = 03:00 daily); wins over interval_hours
    timezone: str = "UTC"


@dataclass
class GateConfig:
    """Before a round's candidate goes live: a quick evaluation in the round's own process, on
    the weights it trained, against the active version (dynalign/gate.py decides)."""

    enabled: bool = True
    prompts: int = 8  # held-out prompts judged pairwise vs the active version (the first N: fixed)
    min_win_rate: float = 0.5  # wins / consistent judgments (inconsistent pairs excluded)
    min_judged: int = 4  # fewer consistent judgments than this: the judge cannot tell; reject
    reading: str = "both_orders"  # the paper's rule | "balanced": P(A), P(B) averaged over both
    #                               orders (a local judge only; others use both_orders)
    ifeval: str = ""  # IFEval input_data.jsonl; "" = data/eval/ifeval_sample.jsonl (our own 14)
    math: str = ""  # AIME/GSM8K-style JSONL; "" = not checked
    mc: str = ""  # GPQA-style CSV; "" = not checked
    limit: int = 12  # items per capability check; 0 = skip the capability checks
    max_drop: float = 0.1  # a capability score may fall by at most this (absolute accuracy)
    max_tokens: int = 256  # answer length in the gate's generations
    # drift monitors, measured on the same held-out prompts (the probe set)
    max_top_share: float = 0.5  # share of candidate answers self-scoring >= 4.5 (saturation)
    max_kl: float = 1.0  # mean KL to the base model over the round's last steps
    max_length_ratio: float = 2.0  # candidate/base answer length beyond x or 1/x is drift
    on_drift: str = "reject"  # "flag" (record only) | "reject" | "rollback" (reject, and walk
    #                           back from the active version to the first unflagged ancestor)


@dataclass
class LearnConfig:
    """A refresh round: the paper's self-improving phase (Algorithm 1) with TRL's GRPOTrainer."""

    # prompts
    prompts: int = 64  # prompts per round: logged user prompts first, the rest from the seed set
    logged_share: float = 0.5  # at most this share of a round's prompts comes from the log
    max_prompt_chars: int = 4000  # longer logged prompts are skipped (and counted)
    # GRPO, with the paper's settings as defaults (TRL's own defaults differ: see the README)
    num_generations: int = 8  # G, candidates per prompt
    prompts_per_step: int = 4  # 4 prompts x G 8 = 32 completions per step (paper: batch 32)
    # Sequences per forward/backward pass in the loss, the reference log-probs and self-scoring.
    # The step's 32 completions are still one optimiser step (gradient accumulation): this only
    # bounds memory. At most this many: the largest divisor of the step's completions.
    micro_batch: int = 2
    temperature: float = 1.0
    top_p: float = 1.0
    max_completion_tokens: int = 256
    learning_rate: float = 5e-6
    epsilon: float = 0.2  # PPO-style clip
    beta: float = 0.04  # KL to the base model
    loss_type: str = "grpo"  # TRL's default is "dapo"
    max_steps: int = 200
    converge_window: int = 10  # stop when the reward's moving average over this many steps ...
    converge_tolerance: float = 0.05  # ... moved less than this (0-5 scale) over the last window
    # reward
    reward: str = "self"  # "self" (the paper) | "rule" | "judge"
    self_score: str = "expected"  # "expected" (digit probabilities) | "greedy" (the paper's integer)
    rule: str = "brevity"  # rule reward: "brevity" (5 at <= rule_words words) | "keyword"
    rule_words: int = 12
    rule_keyword: str = "thanks"
    judge: EndpointConfig = field(default_factory=lambda: EndpointConfig(temperature=0.0,
                                                                        max_tokens=8))
    # adapter and compute
    lora_rank: int = 16
    lora_alpha: int = 32
    from_active: bool = True  # continue from the active adapter (else a fresh one on the base)
    dtype: str = "float32"  # training: log-probs in bf16 make the KL term noise
    # generation and self-scoring (no gradients): "auto" = bf16 on a GPU or a CPU with
    # AVX512-BF16/AMX (measured faster, see the README), else `dtype`; or "bfloat16" | "float32"
    rollout_dtype: str = "auto"
    threads: int = 1  # CPU: torch threads (the engine keeps the other core)
    nice: int = 10  # the learner process runs at this lower CPU priority, so chats come first
    seed: int = 0
    use_vllm: bool = False  # GPU: rollouts on TRL's colocated vLLM instead of transformers
    vllm_gpu_memory_utilization: float = 0.25
    accelerate_config: str = ""  # run the round under `accelerate launch --config_file` this
    promote: bool = True  # False: register every candidate without activating it
    gate: GateConfig = field(default_factory=GateConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class EvalConfig:
    """`dynalign eval` (and the gate's judge)."""

    judge: EndpointConfig = field(default_factory=lambda: EndpointConfig(temperature=0.0,
                                                                        max_tokens=8))
    max_tokens: int = 512  # answers of the evaluated versions (greedy)
    concurrency: int = 8  # requests in flight to the server
    bootstrap: int = 2000  # resamples for the win rate's confidence interval
    level: float = 0.95
    seed: int = 0  # bootstrap and multiple-choice shuffling


@dataclass
class PrivacyConfig:
    """What the exchange log keeps (server/exchange_log.py, dynalign/redact.py)."""

    redact: bool = True  # e-mails, phones, card numbers, IPs, API keys -> [EMAIL] ... before storing
    retention_days: int = 0  # delete exchanges older than this, daily with `dynalign serve`; 0 = keep
    retention_hour: int = 4  # the hour (UTC, 0-23) of the daily retention run


@dataclass
class Config:
    state_dir: str = "state"  # DYNALIGN_HOME, when set, wins
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    ui: UIConfig = field(default_factory=UIConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    learn: LearnConfig = field(default_factory=LearnConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    @property
    def home(self) -> Path:
        return Path(os.environ.get("DYNALIGN_HOME") or self.state_dir).resolve()

    @property
    def model_path(self) -> str:
        return catalog.resolve(self.model.path, self.home)

    @property
    def model_name(self) -> str:
        """`model.name`, else a named model's title, else the folder's (or hub id's) last part."""
        if self.model.name:
            return self.model.name
        named = catalog.MODELS.get(self.model.path or catalog.EMBEDDED)
        marker = Path(self.model_path) / PREPARED_MARKER
        if named is None and marker.exists():  # a prepared folder given by its path
            named = catalog.MODELS.get(json.loads(marker.read_text()).get("name", catalog.EMBEDDED))
        return named.title if named else Path(self.model.path).name

    @property
    def db_path(self) -> Path:
        return self.home / "dynalign.db"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.server.host}:{self.server.port}/v1"


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> Config:
    """The defaults, updated by the TOML file (if any) and then by dotted-key overrides."""
    data = _read_toml(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return _build(Config(), data, prefix="")


def resolved_toml(cfg: Config) -> str:
    return tomli_w.dumps(dataclasses.asdict(cfg), multiline_strings=True)


def _read_toml(path) -> dict:
    if path is None:
        if not Path(DEFAULT_FILE).exists():
            return {}
        path = DEFAULT_FILE
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def _set_dotted(data: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
        if not isinstance(data, dict):
            raise ConfigError(f"cannot set {dotted}: {key} is not a table")
    data[leaf] = value


def _build(base, data: dict, prefix: str):
    """`base` (a dataclass instance holding the defaults) updated from `data`. Nested tables
    update the field's own default instance, so a section's per-field defaults (the evaluator's
    temperature 0.0, say) survive when only some of its keys are set."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{prefix.rstrip('.')}] must be a table")
    hints = typing.get_type_hints(type(base))
    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key: {prefix}{unknown[0]}")
    kwargs = {}
    for key, value in data.items():
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(getattr(base, key), value, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(f"{prefix}{key}", hints[key], value)
    return dataclasses.replace(base, **kwargs)


def _check_type(name: str, hint, value):
    origin = typing.get_origin(hint) or hint
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, origin) and not (origin is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"config key {name} must be {_type_name(hint)}, got {value!r}")
    return value


def _type_name(hint) -> str:
    return "a list of strings" if typing.get_origin(hint) is list else f"a {hint.__name__}"
