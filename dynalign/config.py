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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from dynalign import catalog, checks, prompts
from dynalign.errors import ConfigError

DEFAULT_FILE = "dynalign.toml"
PREPARED_MARKER = "dynalign-prepared.json"  # written into a folder made by `dynalign model prepare`


@dataclass
class ModelConfig:
    """The base model: what the engine serves and the learner trains adapters on."""

    path: str = ""  # a name dynalign prepares (`dynalign model prepare NAME`: "smollm2-135m",
    #                 "qwen2.5-coder-1.5b"), a local Hugging Face folder or a hub id; "" = the
    #                 embedded SmolLM2-135M-Instruct, prepared into <state>/model
    name: str = ""  # name the base model is served under; "" = derived from path
    max_model_len: int = 2048  # context length in tokens (vLLM's --max-model-len)
    dtype: str = "auto"  # the engine's dtype: "auto" = the model's own (bf16) on a GPU or a CPU
    #                      that computes bf16 natively (AVX512-BF16 or AMX), else "float32" (an
    #                      AVX2-only CPU prefills 4x slower in emulated bf16: docs/benchmarks.md);
    #                      or "bfloat16" | "float16" | "float32"


@dataclass
class EngineConfig:
    """The vLLM engine: a child process of `dynalign serve`, reached only through the gateway."""

    host: str = "127.0.0.1"  # loopback only: the engine's dev endpoints have no auth, the gateway
    #                          is the front door
    port: int = 8001  # the engine's port (the gateway forwards to it)
    swap: str = "auto"  # how versions are hot-swapped: "lora" | "merged" | "auto" (merged on CPU,
    #                     lora on GPU)
    enforce_eager: bool = True  # skip torch.compile (on CPU it recompiles at every start, 100+ s)
    kv_cache_gib: int = 2  # CPU KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE)
    gpu_memory_utilization: float = 0.5  # GPU: the engine's whole share of each GPU (weights,
    #                                      activations, KV cache); the rest is the learner's
    max_lora_rank: int = 64  # LoRA mode: largest adapter rank (--max-lora-rank); a larger one is
    #                          refused when registered
    max_loras: int = 4  # LoRA mode: adapters in one batch (--max-loras)
    tensor_parallel_size: int = 1  # multi-GPU serving: --tensor-parallel-size (when > 1)
    pipeline_parallel_size: int = 1  # multi-GPU serving: --pipeline-parallel-size (when > 1)
    extra_args: list[str] = field(default_factory=list)  # passed verbatim to the vLLM server
    startup_timeout_s: float = 900.0  # how long `dynalign serve` waits for the engine (seconds)
    # When the engine dies the gateway answers 503 (code engine_restarting), restarts it and puts
    # the active version back. More than max_restarts deaths within restart_window_s stop the
    # whole service (exit code 1) for a supervisor to take over.
    max_restarts: int = 3  # engine deaths restarted within the window; one more stops the service
    #                        (exit 1); 0 = never restart
    restart_window_s: float = 600.0  # the window (seconds) in which max_restarts counts deaths


@dataclass
class ServerConfig:
    """The gateway: the OpenAI-compatible API (/v1), /admin and /health."""

    host: str = "127.0.0.1"  # the gateway's address; not loopback: chat and admin keys required
    port: int = 8000  # the gateway's port
    max_n: int = 8  # largest `n` a chat request may ask for
    request_timeout_s: float = 600.0  # gateway -> engine timeout (seconds)
    max_body_mb: float = 4.0  # larger request bodies get 413 request_too_large (128k tokens of
    #                           text are ~0.5 MiB)
    allowed_hosts: list[str] = field(default_factory=list)  # Host names answered besides
    #                 localhost, 127.0.0.1, [::1] and server.host (any port); others get 421
    #                 (DNS rebinding, server/guard.py). A wildcard host (0.0.0.0, ::) answers any
    #                 Host unless this is set; "*" = any
    cors_origins: list[str] = field(default_factory=list)  # browser origins
    #                 ("https://app.example.com") allowed to call the API cross-origin; a request
    #                 from any other origin (not the gateway's own) gets 403
    feedback_per_minute: int = 60  # ratings (POST /v1/feedback) a chat key may send per minute
    #                                (a burst of as many; without keys: per client address);
    #                                more get 429 with Retry-After. 0 = no limit
    # Keys are never in this file: these name where they are (server/auth.py).
    api_keys_env: str = "DYNALIGN_API_KEY"  # chat keys, comma-separated; unset: open (loopback only)
    admin_key_env: str = "DYNALIGN_ADMIN_KEY"  # the admin key; unset: admin_key_file
    admin_key_file: str = ""  # "" = <state>/admin.key (created, mode 0600, on loopback)


@dataclass
class UIConfig:
    """The Gradio page (the chat and the Operator tab) that `dynalign serve` starts."""

    enabled: bool = True  # start the UI with `dynalign serve`
    host: str = "127.0.0.1"  # loopback only: the chat UI has no login of its own
    port: int = 7860  # the UI's port
    max_tokens: int = 512  # the longest answer the chat asks for, in tokens


@dataclass
class PromptsConfig:
    """The paper's prompts (dynalign/prompts.py); replace any, keeping its [placeholders]."""

    ca_definition: str = prompts.CA_DEFINITION  # the definition of CA (Appendix A, Table 3);
    #                                             fills [Definition of CA]
    goal: str = prompts.GOAL  # the goal writer's prompt (Table 3)
    instruction: str = prompts.INSTRUCTION  # the prompt writer's instruction (Table 3)
    criteria: str = prompts.CRITERIA  # the predefined criteria (Table 3); fills
    #                                   [Predefined criteria]
    feedback: str = prompts.FEEDBACK  # the evaluator's critique prompt (Table 4)
    refinement: str = prompts.REFINEMENT  # the revision prompt (Table 4)
    system: str = prompts.SYSTEM  # the CA system prompt for sampling candidates (Table 5)
    reward: str = prompts.REWARD  # the 0-5 reward prompt: self-reward and judges' scores (Table 5)
    aspect: str = prompts.ASPECT  # not from the paper: one aspect's 0-5 prompt, the reward
    #                               prompt's frame with [Aspect], [Aspect definition], [Aspect
    #                               rubric] (filled from dynalign/prompts.py's ASPECTS)
    pairwise: str = prompts.PAIRWISE  # not from the paper (it does not print its judge prompt): the
    #                                   pairwise judge prompt, with [Definition of CA], [Prompt],
    #                                   [Response A], [Response B]; asks for "A", "B" or "tie"


@dataclass
class DataConfig:
    """The task prompts a round replays, and whose held-out split the gate and `dynalign eval`
    measure on."""

    seed: str = ""  # the seed task prompts (JSONL); "" = data/seed.jsonl shipped with dynalign
    #                 (found next to the source tree: set it for a wheel install)


@dataclass
class EndpointConfig:
    """An OpenAI-compatible endpoint and model: one role of the generation pipeline, or a judge."""

    url: str = ""  # "" = this dynalign server (server.host:server.port/v1); for a judge, "local":
    #                `model` is loaded in the process that needs it
    model: str = "dynalign"  # model name at that endpoint (on a dynalign server, "dynalign" is the
    #                          active version); with url "local", a prepared name or a folder
    api_key_env: str = "DYNALIGN_API_KEY"  # environment variable holding the key, if any
    temperature: float = 1.0  # < 0: not sent (reasoning models reject it)
    max_tokens: int = 256  # answer length


@dataclass
class JudgeConfig(EndpointConfig):
    """One judge of a panel (`[[eval.judges]]`, `[[learn.judges]]`): an endpoint, a model loaded
    in the process that judges (`url = "local"`), or, in `learn.judges`, the policy reading its
    own answers (`url = "policy"`: the paper's self-reward), with its weight."""

    url: str = ""  # "" = this dynalign server; "local" = `model` loaded in the judging process;
    #                "policy" (learn.judges only) = the policy scores its own answers; else an
    #                OpenAI-compatible endpoint's URL
    temperature: float = 0.0  # its answers are read greedily
    max_tokens: int = 8  # a score or a verdict is a token or two
    weight: float = 1.0  # its share in the panel's mean (dynalign/panel.py)
    reward: str = ""  # its own 0-5 prompt, with prompts.reward's placeholders; "" = prompts.reward
    #                   (the same model under two phrasings is a panel of two)
    pairwise: str = ""  # its own pairwise prompt, with prompts.pairwise's placeholders; "" =
    #                     prompts.pairwise
    name: str = ""  # how reports and the review queue name it; "" = judge N: its model


@dataclass
class PanelConfig:
    """How a panel's scores become one (`[[eval.judges]]`, `[[learn.judges]]`), and when a
    person is asked (dynalign/panel.py)."""

    aggregate: str = "mean"  # "mean" (weighted) | "min" | "mean_minus_std" (weighted mean less
    #                          the weighted spread): the last two are conservative, against
    #                          over-optimising one judge's quirks (Coste et al., ICLR 2024)
    review_gap: float = 1.5  # members' 0-5 scores further apart than this: a disagreement,
    #                          queued for a person
    min_judges: int = 1  # fewer members with a readable score than this: no score (the gate:
    #                      "cannot tell")


@dataclass
class GenerateConfig:
    """`dynalign generate`: the paper's goal -> prompt -> critique -> revision loop."""

    count: int = 1000  # accepted prompts wanted in the output file (the total, across resumes)
    out: str = ""  # JSONL written incrementally; "" = <state>/generated/prompts.jsonl
    max_revisions: int = 3  # critique-and-revise rounds before a prompt is rejected
    max_attempts: int = 0  # attempts per run before giving up; 0 = 5 x the prompts still wanted
    dedup_threshold: float = 0.7  # reject a prompt whose ROUGE-L F1 to an accepted one is this high
    check_rules: bool = True  # prompts flagged by `dynalign data check` go back for revision too
    goal_context: int = 30  # previous goals kept in the goal writer's conversation
    goal_followup: str = "Write one more, different from all of the above."  # the ask after each
    #                   previous goal (the paper's goal prompt opens the conversation once)
    heldout_every: int = 10  # every Nth accepted prompt goes to the held-out split (0: none)
    id_prefix: str = "gen"  # row ids: gen-00001, gen-00002, ...
    seed: int = 0  # per-request seeds derive from it (endpoints that honour `seed`)
    max_retries: int = 6  # rate limits, 5xx, timeouts: exponential backoff (the openai client's)
    timeout_s: float = 120.0  # per request (seconds); raise it with concurrency
    concurrency: int = 1  # attempts in flight at once (a served model batches them: docs/data.md)
    goal_writer: EndpointConfig = field(  # proposes one goal at a time
        default_factory=lambda: EndpointConfig(max_tokens=48))
    prompt_writer: EndpointConfig = field(  # turns a goal into a task prompt, and revises it
        default_factory=lambda: EndpointConfig(temperature=0.7))
    evaluator: EndpointConfig = field(  # critiques a prompt: Appropriate or Inappropriate
        default_factory=lambda: EndpointConfig(temperature=0.0))


@dataclass
class ScheduleConfig:
    """When refresh rounds run on their own (with `dynalign serve` or `dynalign learn --schedule`)."""

    interval_hours: float = 0.0  # 0 = no interval schedule
    cron: str = ""  # crontab line ("0 3 * * *" = 03:00 daily); wins over interval_hours
    timezone: str = "UTC"  # the zone the cron line (and an interval's phase) is read in


@dataclass
class GateConfig:
    """Before a round's candidate goes live: a quick evaluation in the round's own process, on
    the weights it trained, against the active version (dynalign/gate.py decides)."""

    enabled: bool = True  # off: every finished round is promoted, without evaluation
    prompts: int = 16  # held-out prompts judged pairwise vs the active version (the first N:
    #                    fixed); also the drift monitors' probe set
    multiturn: int = 4  # multi-turn probes of our own (data/eval/multiturn_probes.jsonl, the
    #                     first N) judged with them, their earlier turns as context; never trained on
    min_win_rate: float = 0.5  # wins / consistent judgments (inconsistent pairs excluded)
    min_judged: int = 4  # fewer consistent judgments than this: the judge cannot tell; reject
    reading: str = "balanced"  # P(A), P(B) averaged over both orders where the judge gives them
    #                            (a local judge); an endpoint judge's verdicts: the paper's rule.
    #                            "both_orders" = the paper's rule always (docs/judge.md)
    ifeval: str = ""  # IFEval input_data.jsonl; "" = data/eval/ifeval_sample.jsonl (our own 40)
    math: str = ""  # AIME/GSM8K-style JSONL; "" = not checked
    mc: str = ""  # GPQA-style CSV; "" = not checked
    limit: int = 12  # items per capability check; 0 = skip the capability checks
    max_drop: float = 0.1  # a capability score may fall by at most this (absolute accuracy)
    aspect_prompts: int = 2  # the first N of the gate's prompts are also scored 0-5 on each
    #                          aspect of CA (knowledge, power, vitality, benevolence), for the
    #                          candidate, the active version and the base (docs/oversight.md);
    #                          0 = off. Few: each distinct answer costs 5 judgements
    max_aspect_drop: float = 0.5  # an aspect's mean score may fall by at most this against the
    #                               active version's
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

    # which prompts a round trains on
    prompts: int = 64  # prompts per round: logged user prompts first, the rest replayed from the
    #                    seed set's train split. A round's batches take prompts_per_step
    #                    each, ceil(max_steps / iterations) of them: more are not trained on
    logged_share: float = 0.5  # at most this share of a round's prompts comes from the log
    max_user_share: float = 0.25  # at most this share of those logged prompts comes from one user
    #                               (the request's `user`, else its client): no one fills a round
    #                               with their own prompts. At least one prompt each
    max_prompt_tokens: int = 1024  # a logged conversation longer than this loses whole turns
    #                                from its start; one whose last user turn alone is longer is
    #                                left out (and counted: selection.too_long)
    client_system: str = "keep"  # a client's own system message in a logged conversation: "keep"
    #                              (trained with it, as it was served) | "drop" (docs/rounds.md)
    # GRPO, with the paper's settings as defaults (TRL's own defaults differ: see docs/rounds.md)
    num_generations: int = 8  # G, candidates per prompt
    prompts_per_step: int = 4  # 4 prompts x G 8 = 32 completions per step (paper: batch 32)
    micro_batch: int = 2  # sequences per forward/backward pass in the loss, the reference
    #                       log-probs and self-scoring. The step's 32 completions are still one
    #                       optimiser step (gradient accumulation): this only bounds memory. At
    #                       most this many: the largest divisor of the step's completions.
    temperature: float = 1.0  # candidate sampling (the paper: 1.0)
    top_p: float = 1.0  # candidate sampling (the paper: 1.0)
    max_completion_tokens: int = 256  # candidate length in tokens
    learning_rate: float = 5e-6  # constant (the round stops on convergence, not on a schedule)
    epsilon: float = 0.2  # PPO-style clip
    beta: float = 0.04  # KL to the base model
    loss_type: str = "grpo"  # "grpo" | "dapo" | "dr_grpo" | "bnpo" (TRL's); TRL's default is "dapo"
    max_steps: int = 200  # upper bound on steps (optimiser steps)
    iterations: int = 1  # optimiser steps per generated and scored batch (TRL's num_iterations,
    #                      the GRPO paper's mu): a round judges ceil(max_steps / iterations)
    #                      batches; above 1, each batch also costs a forward for the old log-probs
    converge_window: int = 10  # stop when the reward's moving average over this many scored
    #                            batches (steps, at iterations 1) ...
    converge_tolerance: float = 0.05  # ... moved less than this (0-5 scale) over the last window
    # the reward
    reward: str = "self"  # "self" (the paper) | "rule" | "judge"
    self_score: str = "expected"  # how a 0-5 score is read, for self-reward and a local
    #                               judge: "expected" (digit probabilities) | "greedy" (the
    #                               paper's integer)
    rule: str = "brevity"  # rule reward: "brevity" (5 at <= rule_words words) | "keyword"
    rule_words: int = 12  # the brevity rule's word count
    rule_keyword: str = "thanks"  # the keyword rule's word
    judge: EndpointConfig = field(  # the judge that scores candidates when reward = "judge"
        default_factory=lambda: EndpointConfig(temperature=0.0, max_tokens=8))
    judges: list[JudgeConfig] = field(default_factory=list)  # with reward = "judge": a panel
    #                          scores instead of `judge` ([[learn.judges]]; [panel] aggregates)
    # adapter and compute
    lora_rank: int = 16  # a fresh adapter's rank
    lora_alpha: int = 32  # a fresh adapter's alpha
    from_active: bool = True  # continue from the active adapter (else a fresh one on the base)
    dtype: str = "float32"  # training precision: log-probs in bf16 make the KL term noise;
    #                         "bfloat16" on a GPU and under accelerate
    rollout_dtype: str = "auto"  # generation, self-scoring and the gate's answers (no gradients):
    #                              "auto" = bf16 on a GPU or a CPU with AVX512-BF16/AMX, else
    #                              `dtype` (bf16 on an AVX2-only CPU measured 3-5x slower:
    #                              docs/benchmarks.md); or "bfloat16" | "float32"
    threads: int = 1  # CPU: torch threads (the engine keeps the other core)
    nice: int = 10  # the learner process runs at this lower CPU priority, so chats come first
    seed: int = 0  # sampling and prompt selection
    use_vllm: bool = False  # GPU: rollouts on TRL's colocated vLLM instead of transformers
    vllm_gpu_memory_utilization: float = 0.25  # GPU: the colocated vLLM's share (with use_vllm)
    accelerate_config: str = ""  # run the round under `accelerate launch --config_file` this
    promote: bool | str = True  # a finished round's adapter, if the gate lets it: true =
    #                             served to all at once; "canary" = served to [canary]'s share
    #                             of users first (needs engine.swap = "lora"); false = register
    #                             every candidate as rejected, without a gate
    gate: GateConfig = field(default_factory=GateConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class EvalConfig:
    """`dynalign eval` (and the gate's judge)."""

    judge: EndpointConfig = field(  # the pairwise judge of `dynalign eval` and of the gate
        default_factory=lambda: EndpointConfig(temperature=0.0, max_tokens=8))
    judges: list[JudgeConfig] = field(default_factory=list)  # a panel judging instead of
    #                          `judge` ([[eval.judges]]; [panel] aggregates)
    max_tokens: int = 512  # answers of the evaluated versions (greedy)
    concurrency: int = 8  # requests in flight to the server
    bootstrap: int = 2000  # resamples for the win rate's confidence interval
    level: float = 0.95  # the interval's level
    seed: int = 0  # bootstrap and multiple-choice shuffling
    scoreboard: bool | str = "auto"  # after each promotion, measure the new version against the
    #                                  base (`dynalign eval scoreboard`): true | false | "auto" =
    #                                  unless the eval judge is the embedded 135M, which cannot tell
    scoreboard_tokens: int = 256  # the scoreboard's greedy answers, in tokens
    scoreboard_prompts: str = ""  # its prompts (JSONL with "prompt"); "" = the seed set's 100
    #                               held-out prompts
    ifeval: str = ""  # the scoreboard's IFEval input_data.jsonl; "" = our own 40-prompt sample
    ifeval_limit: int = 40  # the scoreboard's IFEval prompts (the first N); 0 = skip
    scoreboard_aspects: int = 10  # the scoreboard's first N prompts also scored 0-5 on each
    #                               aspect of CA, version and base (4 judgements an answer;
    #                               docs/oversight.md); 0 = skip


@dataclass
class CanaryConfig:
    """A canary rollout (LoRA swap mode, docs/operations.md): the defaults of POST /admin/canary,
    and the canary a round starts with learn.promote = "canary"."""

    share: float = 0.1  # the share of users the canary version answers, in (0, 1)
    min_feedback: int = 50  # ratings each arm needs before the ratings decide
    min_raters: int = 10  # ... given by at least this many distinct users in each arm
    max_hours: float = 24.0  # then decide on what there is, or keep the active (on_timeout)
    margin: float = 0.05  # rolled back only when its approval is worse by more than this ...
    confidence: float = 0.95  # ... at this one-sided confidence
    on_timeout: str = "decide"  # after max_hours: "decide" on the ratings there are | "keep"


@dataclass
class PrivacyConfig:
    """What the exchange log keeps (server/exchange_log.py, dynalign/redact.py)."""

    redact: bool = True  # e-mails, phones, card numbers, IPs, API keys -> [EMAIL] [PHONE] [CARD]
    #                      [IP] [KEY] before storing
    retention_days: int = 0  # delete exchanges older than this, daily with `dynalign serve`; 0 = keep
    retention_hour: int = 4  # the hour (UTC, 0-23) of the daily retention run


@dataclass
class Config:
    """One TOML file: `./dynalign.toml`, or `dynalign --config PATH ...`. Every key is optional;
    an unknown key or a wrong type is an error naming the key, and the whole tree is checked when
    it loads (dynalign/checks.py). `dynalign config` prints the resolved tree.

    Environment: DYNALIGN_HOME (the state dir), DYNALIGN_API_KEY (chat keys, comma-separated),
    DYNALIGN_ADMIN_KEY (the admin key; else <state>/admin.key). Keys never go in this file
    (docs/api.md, "Keys")."""

    state_dir: str = "state"  # the state dir (model, adapters, SQLite, logs); DYNALIGN_HOME wins
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    ui: UIConfig = field(default_factory=UIConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    learn: LearnConfig = field(default_factory=LearnConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    canary: CanaryConfig = field(default_factory=CanaryConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    panel: PanelConfig = field(default_factory=PanelConfig)

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
    def rounds_dir(self) -> Path:
        return self.home / "rounds"

    def round_dir(self, round_id: int) -> Path:
        """A round's folder: its prompts, metrics, config, gate report and trained adapter."""
        return self.rounds_dir / f"{round_id:04d}"

    def adapter_dir(self, version: int) -> Path:
        """A registered version's own copy of its adapter (it cannot change under the engine)."""
        return self.home / "adapters" / f"{version:04d}"

    def merged_dir(self, version: int) -> Path:
        """A version's adapter merged into full weights (merged swap mode)."""
        return self.home / "merged" / f"{version:04d}"

    @property
    def gateway_url(self) -> str:
        """Where a client on this machine reaches the gateway (the CLI, the UI, the learner)."""
        return f"http://{client_host(self.server.host)}:{self.server.port}/v1"


def client_host(host: str) -> str:
    """The address a local client uses for a server bound to `host` (a wildcard is not one)."""
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> Config:
    """The defaults, updated by the TOML file (if any) and then by dotted-key overrides; checked
    whole (dynalign/checks.py): one ConfigError names every bad key."""
    data = _read_toml(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    cfg = _build(Config(), data, prefix="")
    checks.check(cfg)
    return cfg


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
        elif _table_list(hints[key]):
            kwargs[key] = _build_list(_table_list(hints[key]), value, f"{prefix}{key}")
        else:
            kwargs[key] = _check_type(f"{prefix}{key}", hints[key], value)
    return dataclasses.replace(base, **kwargs)


def _table_list(hint):
    """The dataclass of a `list[SomeConfig]` hint (an array of tables, `[[eval.judges]]`)."""
    args = typing.get_args(hint) if typing.get_origin(hint) is list else ()
    return args[0] if args and dataclasses.is_dataclass(args[0]) else None


def _build_list(kind, value, name: str) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"config key {name} must be a list of tables ([[{name}]])")
    return [_build(kind(), item, prefix=f"{name}[{i}].") for i, item in enumerate(value)]


def _check_type(name: str, hint, value):
    origin = typing.get_origin(hint) or hint
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif origin is types.UnionType:
        ok = isinstance(value, typing.get_args(hint))
    else:
        ok = isinstance(value, origin) and not (origin is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"config key {name} must be {_type_name(hint)}, got {value!r}")
    return value


def _type_name(hint) -> str:
    if typing.get_origin(hint) is types.UnionType:
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    return "a list of strings" if typing.get_origin(hint) is list else f"a {hint.__name__}"
