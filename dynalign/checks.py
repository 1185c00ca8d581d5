"""The whole config checked once, when it is loaded (`load_config` calls `check`): typed choices,
ranges, the schedule's cron line and timezone parsed, and the rules that tie keys together.
One ConfigError lists every bad key, so `dynalign serve` stops before it starts anything and a
round's overrides are refused when they are sent, never when the round gets to them.

What depends on the machine or the environment (free memory, keys in the environment, a model
folder) is checked where it is used, not here.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from urllib.parse import urlsplit

from dynalign import canary
from dynalign.errors import ConfigError
from dynalign.panel import AGGREGATES
from dynalign.schedule_spec import make_trigger, spec_of

REWARDS = ("self", "rule", "judge")
SELF_SCORES = ("expected", "greedy")
RULES = ("brevity", "keyword")
LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo")
DTYPES = ("float32", "bfloat16")
ROLLOUT_DTYPES = ("auto", *DTYPES)
MODEL_DTYPES = ("auto", "bfloat16", "float16", "float32")
SWAPS = ("auto", "lora", "merged")
DRIFT_ACTIONS = ("flag", "reject", "rollback")
READINGS = ("both_orders", "balanced")
CLIENT_SYSTEM = ("keep", "drop")
JUDGE_URLS = ("", "local", "policy")  # this server, a model loaded here, the policy; else http(s)
HOST_NAME = re.compile(r"(?i)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?")

CHOICES = {
    "model.dtype": MODEL_DTYPES, "engine.swap": SWAPS, "learn.reward": REWARDS,
    "learn.self_score": SELF_SCORES, "learn.rule": RULES, "learn.loss_type": LOSS_TYPES,
    "learn.dtype": DTYPES, "learn.rollout_dtype": ROLLOUT_DTYPES,
    "learn.gate.on_drift": DRIFT_ACTIONS, "learn.gate.reading": READINGS,
    "learn.client_system": CLIENT_SYSTEM, "panel.aggregate": AGGREGATES}
AT_LEAST = {  # key: smallest allowed value
    "model.max_model_len": 1, "engine.kv_cache_gib": 1, "engine.max_lora_rank": 1,
    "engine.max_loras": 1, "engine.tensor_parallel_size": 1, "engine.pipeline_parallel_size": 1,
    "engine.max_restarts": 0, "server.max_n": 1, "generate.count": 1, "generate.max_revisions": 0,
    "generate.max_attempts": 0, "generate.goal_context": 0, "generate.heldout_every": 0,
    "generate.max_retries": 0, "generate.concurrency": 1, "learn.prompts": 1,
    "learn.max_prompt_tokens": 1, "learn.num_generations": 2, "learn.prompts_per_step": 1,
    "learn.micro_batch": 1, "learn.max_completion_tokens": 1, "learn.max_steps": 1,
    "learn.iterations": 1,
    "learn.converge_window": 1, "learn.lora_rank": 1, "learn.lora_alpha": 1, "learn.threads": 1,
    "learn.rule_words": 1, "learn.gate.prompts": 1, "learn.gate.min_judged": 1,
    "learn.gate.max_tokens": 1, "learn.gate.limit": 0, "learn.gate.multiturn": 0,
    "learn.gate.aspect_prompts": 0, "learn.gate.max_aspect_drop": 0.0,
    "learn.gate.max_length_ratio": 1.0,
    "eval.max_tokens": 1, "eval.concurrency": 1, "eval.bootstrap": 1, "eval.scoreboard_tokens": 1,
    "eval.ifeval_limit": 0, "eval.scoreboard_aspects": 0,
    "learn.converge_tolerance": 0.0, "learn.gate.max_kl": 0.0, "privacy.retention_days": 0,
    "ui.max_tokens": 1, "server.feedback_per_minute": 0, "panel.min_judges": 1,
    "panel.review_gap": 0.0}
ABOVE = (  # must be above 0
    "engine.startup_timeout_s", "engine.restart_window_s", "server.request_timeout_s",
    "server.max_body_mb", "generate.timeout_s", "learn.learning_rate")
BETWEEN = {  # key: (low, high), both allowed
    "server.port": (1, 65535), "engine.port": (1, 65535), "ui.port": (1, 65535),
    "engine.gpu_memory_utilization": (0.0, 1.0), "learn.vllm_gpu_memory_utilization": (0.0, 1.0),
    "learn.logged_share": (0.0, 1.0), "learn.max_user_share": (0.0, 1.0),
    "learn.temperature": (0.0, 2.0), "learn.top_p": (0.0, 1.0),
    "learn.epsilon": (0.0, 1.0), "learn.beta": (0.0, 10.0), "learn.nice": (0, 19),
    "learn.gate.min_win_rate": (0.0, 1.0), "learn.gate.max_top_share": (0.0, 1.0),
    "learn.gate.max_drop": (0.0, 1.0), "generate.dedup_threshold": (0.0, 1.0),
    "eval.level": (0.5, 0.999), "privacy.retention_hour": (0, 23)}


def check(cfg) -> None:
    """Raise one ConfigError naming every bad key of `cfg` (a loaded Config)."""
    bad = problems(cfg)
    if bad:
        raise ConfigError("invalid config:\n  " + "\n  ".join(bad))


def problems(cfg) -> list[str]:
    out = [f"{k} must be one of {', '.join(allowed)}; got {_get(cfg, k)!r}"
           for k, allowed in CHOICES.items() if _get(cfg, k) not in allowed]
    out += [f"{k} must be at least {low:g}; got {_get(cfg, k)!r}"
            for k, low in AT_LEAST.items() if _get(cfg, k) < low]
    out += [f"{k} must be above 0; got {_get(cfg, k)!r}" for k in ABOVE if _get(cfg, k) <= 0]
    out += [f"{k} must be between {low:g} and {high:g}; got {_get(cfg, k)!r}"
            for k, (low, high) in BETWEEN.items() if not low <= _get(cfg, k) <= high]
    out += [f"canary.{k} {why}" for k, why in canary.problems(vars(cfg.canary))]
    return out + _schedule(cfg) + _together(cfg) + _cross_site(cfg.server) + _panels(cfg)


def _schedule(cfg) -> list[str]:
    schedule = cfg.learn.schedule
    if schedule.interval_hours < 0:
        return [f"learn.schedule.interval_hours must be 0 (off) or above; "
                f"got {schedule.interval_hours!r}"]
    spec = spec_of(schedule)
    if spec is None:
        return []
    try:
        make_trigger(spec, dt.datetime.now(dt.timezone.utc))
    except ConfigError as e:
        return [f"learn.schedule: {e}"]
    return []


def _together(cfg) -> list[str]:
    """Rules over several keys."""
    learn, out = cfg.learn, []
    if isinstance(cfg.eval.scoreboard, str) and cfg.eval.scoreboard != "auto":
        out.append(f'eval.scoreboard must be true, false or "auto"; got {cfg.eval.scoreboard!r}')
    if isinstance(learn.promote, str) and learn.promote != "canary":
        out.append(f'learn.promote must be true, false or "canary"; got {learn.promote!r}')
    if learn.promote == "canary" and cfg.engine.swap != "lora":
        out.append('learn.promote = "canary" serves two versions side by side: it needs '
                   f'engine.swap = "lora" (got {cfg.engine.swap!r}; merged mode holds one)')
    if learn.accelerate_config and learn.dtype != "bfloat16":
        out.append('learn.accelerate_config (DeepSpeed ZeRO-3 / FSDP) trains in bf16: set '
                   'learn.dtype = "bfloat16"')
    for role in ("goal_writer", "prompt_writer", "evaluator"):
        if getattr(cfg.generate, role).max_tokens < 1:
            out.append(f"generate.{role}.max_tokens must be at least 1")
    for name, endpoint in (("learn.judge", learn.judge), ("eval.judge", cfg.eval.judge)):
        if endpoint.max_tokens < 1:
            out.append(f"{name}.max_tokens must be at least 1")
    return out


def _panels(cfg) -> list[str]:
    """Each judge of `[[learn.judges]]` and `[[eval.judges]]`: a known kind, a positive weight."""
    out = []
    for section, judges in (("learn.judges", cfg.learn.judges), ("eval.judges", cfg.eval.judges)):
        for i, judge in enumerate(judges):
            key = f"{section}[{i}]"
            if judge.url not in JUDGE_URLS and urlsplit(judge.url).scheme not in ("http", "https"):
                out.append(f'{key}.url must be "" (this server), "local", "policy" or an http(s) '
                           f"URL; got {judge.url!r}")
            if judge.url == "policy" and section == "eval.judges":
                out.append(f'{key}.url "policy" reads the policy inside a round: in eval.judges, '
                           'the served model is url = "" (this server), model = "dynalign"')
            if judge.weight <= 0:
                out.append(f"{key}.weight must be above 0; got {judge.weight!r}")
            if judge.max_tokens < 1:
                out.append(f"{key}.max_tokens must be at least 1")
        if judges and cfg.panel.min_judges > len(judges):
            out.append(f"panel.min_judges ({cfg.panel.min_judges}) is more than {section} lists "
                       f"({len(judges)})")
    if cfg.learn.judges and cfg.learn.reward != "judge":
        out.append(f'learn.judges is a reward panel: it needs learn.reward = "judge" (got '
                   f"{cfg.learn.reward!r})")
    return out


def _cross_site(server) -> list[str]:
    """server.allowed_hosts and server.cors_origins: each entry must be what the gateway compares
    it with (server/guard.py), so a typo fails `dynalign serve` at start instead of refusing
    every request, or none, later."""
    out = [f"server.allowed_hosts: {h!r} is not a host name or IP address (no scheme, port or "
           'path; e.g. "chat.example.com", or "*" for any)'
           for h in server.allowed_hosts if h != "*" and not is_host_name(h)]
    out += [f"server.cors_origins: {o!r} is not an origin: scheme://host[:port], the scheme "
            'http or https, no path or trailing slash (e.g. "https://app.example.com")'
            for o in server.cors_origins if not is_origin(o)]
    return out


def is_host_name(text: str) -> bool:
    """A DNS name (labels of letters, digits and inner hyphens, an optional final dot) or an IP
    address (IPv6 with or without brackets), without port, scheme or path."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ipaddress.ip_address(inner)
        return True
    except ValueError:
        return inner == text and HOST_NAME.fullmatch(text) is not None


def is_origin(text: str) -> bool:
    """A browser origin as sent in the Origin header: http(s)://host[:port], nothing after."""
    try:
        parts = urlsplit(text)
        port = parts.port  # ValueError when not a number in 0-65535
    except ValueError:
        return False
    host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    return (parts.scheme in ("http", "https") and f"{parts.scheme}://{parts.netloc}" == text
            and "@" not in parts.netloc and port != 0 and is_host_name(host))


def _get(cfg, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
