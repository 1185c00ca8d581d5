"""dynalign.config: defaults, TOML loading, strict keys and types, overrides, round-trip."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dynalign.config import Config, load_config, resolved_toml
from dynalign.errors import ConfigError


def test_defaults():
    cfg = load_config()
    assert cfg.gateway_url == "http://127.0.0.1:8000/v1"
    assert cfg.ui.port == 7860
    assert cfg.engine.port == 8001
    assert cfg == Config()


def test_state_dir_without_env(monkeypatch, tmp_path):
    monkeypatch.delenv("DYNALIGN_HOME")
    cfg = load_config()
    assert cfg.home == (tmp_path / "state").resolve()
    assert cfg.db_path == (tmp_path / "state" / "dynalign.db").resolve()
    assert cfg.home.is_absolute()


def test_state_dir_env_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("DYNALIGN_HOME", str(tmp_path / "elsewhere"))
    cfg = load_config(overrides={"state_dir": "ignored"})
    assert cfg.home == (tmp_path / "elsewhere").resolve()
    assert cfg.model_path == str((tmp_path / "elsewhere" / "model").resolve())


def test_model_name_embedded_when_path_empty():
    assert load_config().model_name == "SmolLM2-135M-Instruct"


def test_model_name_is_basename_of_path():
    cfg = load_config(overrides={"model.path": "/models/Qwen2.5-0.5B-Instruct"})
    assert cfg.model_name == "Qwen2.5-0.5B-Instruct"
    assert cfg.model_path == "/models/Qwen2.5-0.5B-Instruct"
    cfg = load_config(overrides={"model.path": "/models/x", "model.name": "served"})
    assert cfg.model_name == "served"


def test_load_from_explicit_path(tmp_path):
    path = tmp_path / "sub" / "custom.toml"
    path.parent.mkdir()
    path.write_text('[server]\nport = 9100\n[engine]\nswap = "lora"\nextra_args = ["--foo"]\n')
    cfg = load_config(path)
    assert cfg.server.port == 9100
    assert cfg.engine.swap == "lora"
    assert cfg.engine.extra_args == ["--foo"]
    assert cfg.gateway_url == "http://127.0.0.1:9100/v1"


def test_load_from_default_file_in_cwd(tmp_path):
    (tmp_path / "dynalign.toml").write_text("[ui]\nport = 7999\nenabled = false\n")
    cfg = load_config()
    assert cfg.ui.port == 7999
    assert cfg.ui.enabled is False


@pytest.mark.parametrize("text, key", [
    ("bogus = 1\n", "bogus"),
    ("[engine]\nbogus = 1\n", "engine.bogus"),
    ("[nosuchsection]\nx = 1\n", "nosuchsection"),
])
def test_unknown_key_is_named(tmp_path, text, key):
    (tmp_path / "dynalign.toml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config()
    assert f"unknown config key: {key}" in str(e.value)


@pytest.mark.parametrize("dotted, value", [
    ("server.port", "8000"),
    ("server.port", True),
    ("engine.extra_args", [1, 2]),
    ("engine.extra_args", "--foo"),
    ("engine.enforce_eager", 1),
    ("engine.gpu_memory_utilization", "0.5"),
    ("model.path", 3),
])
def test_wrong_type_names_key(dotted, value):
    with pytest.raises(ConfigError, match=dotted.replace(".", r"\.")):
        load_config(overrides={dotted: value})


def test_wrong_type_from_toml_names_key(tmp_path):
    (tmp_path / "dynalign.toml").write_text('[server]\nport = "8000"\n')
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_config()


def test_section_must_be_table():
    with pytest.raises(ConfigError, match="engine"):
        load_config(overrides={"engine": 3})


def test_int_accepted_for_float():
    cfg = load_config(overrides={"engine.gpu_memory_utilization": 1, "server.request_timeout_s": 30})
    assert cfg.engine.gpu_memory_utilization == 1.0
    assert isinstance(cfg.engine.gpu_memory_utilization, float)
    assert isinstance(cfg.server.request_timeout_s, float)


def test_overrides_win_over_file(tmp_path):
    (tmp_path / "dynalign.toml").write_text("[server]\nport = 9100\nmax_n = 4\n")
    cfg = load_config(overrides={"server.port": 9200, "engine.swap": "merged"})
    assert cfg.server.port == 9200
    assert cfg.server.max_n == 4  # untouched key from the file survives
    assert cfg.engine.swap == "merged"


def test_unknown_override_key_is_named():
    with pytest.raises(ConfigError, match=r"engine\.nope"):
        load_config(overrides={"engine.nope": 1})


def test_resolved_toml_round_trips(tmp_path):
    cfg = load_config(overrides={"server.port": 9300, "engine.extra_args": ["--a", "b"],
                                 "model.path": "/m/x", "engine.startup_timeout_s": 5.5,
                                 "ui.enabled": False})
    text = resolved_toml(cfg)
    assert "[engine]" in text and "[server]" in text
    path = tmp_path / "resolved.toml"
    path.write_text(text)
    assert load_config(path) == cfg
    assert load_config(Path(path)) != Config()


def test_missing_explicit_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("missing.toml")


def test_invalid_toml(tmp_path):
    (tmp_path / "dynalign.toml").write_text("[server\nport = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config()


def test_override_into_non_table_is_config_error(tmp_path):
    # e.g. `dynalign serve --port 9000` with `server = 5` in dynalign.toml
    (tmp_path / "dynalign.toml").write_text("server = 5\n")
    with pytest.raises(ConfigError, match="server"):
        load_config(overrides={"server.port": 9000})


def test_a_sections_own_defaults_survive_setting_some_of_its_keys(tmp_path):
    (tmp_path / "c.toml").write_text('[generate.evaluator]\nurl = "http://judge/v1"\n')
    cfg = load_config(tmp_path / "c.toml", {"generate.goal_writer.model": "m"})
    assert cfg.generate.evaluator.url == "http://judge/v1"
    assert cfg.generate.evaluator.temperature == 0.0
    assert (cfg.generate.goal_writer.model, cfg.generate.goal_writer.max_tokens) == ("m", 48)
    assert cfg.generate.prompt_writer.temperature == 0.7


BAD = '''
[server]
max_body_mb = -1
allowed_hosts = ["http://chat.example.com"]
cors_origins = ["app.example.com"]

[learn]
reward = "vibes"
num_generations = 1

[learn.gate]
on_drift = "explode"

[learn.schedule]
cron = "not a cron"

[privacy]
retention_hour = 24

[ui]
max_tokens = 0
'''
NAMED = ("server.max_body_mb must be above 0", "learn.reward must be one of self, rule, judge",
         "learn.num_generations must be at least 2", "learn.gate.on_drift must be one of",
         "learn.schedule: ", "privacy.retention_hour must be between 0 and 23",
         "ui.max_tokens must be at least 1", "server.allowed_hosts: 'http://chat.example.com'",
         "server.cors_origins: 'app.example.com' is not an origin")


def test_every_bad_key_is_named_in_one_error_when_the_config_loads(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert all(words in str(e.value) for words in NAMED), str(e.value)
    with pytest.raises(ConfigError, match="learn.schedule: .*Mars/Olympus"):
        load_config(overrides={"learn.schedule.interval_hours": 6,
                               "learn.schedule.timezone": "Mars/Olympus"})


def test_dynalign_serve_with_a_bad_config_exits_1_before_starting_anything(tmp_path):
    path = tmp_path / "bad.toml"
    # a model folder that does not exist: were the config not checked first, serve would stop
    # there (exit 1 too, but naming no key), never reaching an engine
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n[model]\npath = "{tmp_path / "none"}"\n'
                    + BAD)
    env = {k: v for k, v in os.environ.items() if k != "DYNALIGN_HOME"}
    out = subprocess.run([sys.executable, "-m", "dynalign.cli", "--config", str(path), "serve"],
                         capture_output=True, text=True, timeout=120,
                         env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.returncode == 1, out.stderr
    assert all(words in out.stderr for words in NAMED) and "Traceback" not in out.stderr
    assert not (tmp_path / "state" / "logs").exists()  # no engine was started, nor its log


@pytest.mark.parametrize("host, url", [("0.0.0.0", "http://127.0.0.1:8000/v1"),
                                       ("::", "http://[::1]:8000/v1"),
                                       ("10.1.2.3", "http://10.1.2.3:8000/v1")])
def test_the_gateway_url_is_where_a_local_client_reaches_the_bound_host(host, url):
    """The CLI, the UI and the learner all use it: a wildcard bind is not an address to call."""
    assert load_config(overrides={"server.host": host}).gateway_url == url


@pytest.mark.parametrize("overrides, words", [
    ({"learn.promote": "canary"}, 'it needs engine.swap = "lora"'),
    ({"learn.promote": "canary", "engine.swap": "auto"}, 'it needs engine.swap = "lora"'),
    ({"learn.promote": "sometimes", "engine.swap": "lora"}, 'true, false or "canary"'),
    ({"learn.promote": 1}, "learn.promote must be a bool or a str"),
    ({"canary.share": 1.0}, "canary.share must be in (0, 1)"),
    ({"canary.min_feedback": 0}, "canary.min_feedback must be 1 or more"),
    ({"canary.on_timeout": "wait"}, "canary.on_timeout must be one of decide, keep"),
])
def test_promoting_into_a_canary_is_checked_at_load(overrides, words):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    assert words in str(e.value)


def test_promote_takes_a_boolean_or_canary():
    assert load_config(overrides={"learn.promote": False}).learn.promote is False
    cfg = load_config(overrides={"learn.promote": "canary", "engine.swap": "lora"})
    assert cfg.learn.promote == "canary" and cfg.canary.share == 0.1


PANEL = """
[panel]
aggregate = "mean_minus_std"
min_judges = 2
[learn]
reward = "judge"
[[learn.judges]]
url = "policy"
[[learn.judges]]
url = "local"
model = "qwen2.5-coder-1.5b"
weight = 2
reward = "Score [Response] to [Prompt] 0-5."
name = "1.5B, short rubric"
"""


def test_a_judge_panel_loads_each_judge_with_its_defaults_and_round_trips(tmp_path):
    path = tmp_path / "panel.toml"
    path.write_text(PANEL)
    cfg = load_config(path)
    policy, judge = cfg.learn.judges
    assert (policy.url, policy.weight, policy.temperature, policy.max_tokens) == \
        ("policy", 1.0, 0.0, 8)
    assert (judge.weight, judge.name, cfg.panel.aggregate) == (2.0, "1.5B, short rubric",
                                                               "mean_minus_std")
    assert cfg.eval.judges == []  # the one-judge config is untouched
    (tmp_path / "resolved.toml").write_text(resolved_toml(cfg))
    assert load_config(tmp_path / "resolved.toml") == cfg


@pytest.mark.parametrize("text, named", [
    ('[[eval.judges]]\nurl = "local"\nweight = 0\n', "eval.judges[0].weight must be above 0"),
    ('[[eval.judges]]\n[[eval.judges]]\nurl = "judge-7"\n', "eval.judges[1].url must be"),
    ('[[eval.judges]]\nurl = "policy"\n', 'eval.judges[0].url "policy"'),
    ('[[eval.judges]]\nwieght = 1\n', "unknown config key: eval.judges[0].wieght"),
    ('[eval]\njudges = {url = "local"}\n', "eval.judges must be a list of tables"),
    ('[panel]\naggregate = "median"\n', "panel.aggregate must be one of mean, min"),
    ('[panel]\nmin_judges = 3\n[[eval.judges]]\n', "panel.min_judges (3) is more than eval"),
    ('[[learn.judges]]\n', 'learn.judges is a reward panel: it needs learn.reward = "judge"'),
])
def test_a_bad_panel_is_refused_at_load_naming_the_key(tmp_path, text, named):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert named in str(e.value), str(e.value)
