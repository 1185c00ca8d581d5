"""server.versions: version names as clients and the admin API spell them; registering an
adapter folder (POST /admin/adapters and a round's publish), on a tiny fake base."""

import asyncio
import json
import sys

import pytest

from dynalign.config import Config, ModelConfig
from dynalign.errors import AdapterError
from dynalign.store import Store
from helpers.tiny_lora import write_adapter, write_base
from server.engine import EngineClient
from server.validate import RequestError
from server.versions import Versions, parse_version, public_name


def test_base_is_none():
    assert parse_version("base") is None


@pytest.mark.parametrize("text", ["3", "v3", "dynalign-v3"])
def test_spellings_of_three(text):
    assert parse_version(text) == 3


def test_multi_digit():
    assert parse_version("dynalign-v12") == 12


@pytest.mark.parametrize("text", ["x", "", "v", "dynalign-3x", "V3", "dynalign-base", "-1"])
def test_not_a_version_is_404(text):
    with pytest.raises(RequestError) as e:
        parse_version(text)
    assert e.value.status == 404
    assert e.value.body()["error"]["code"] == "version_not_found"


def test_public_name():
    cfg = Config()
    assert public_name(cfg, None) == "SmolLM2-135M-Instruct"
    assert public_name(cfg, 4) == "dynalign-v4"


@pytest.fixture
def versions(tmp_path):
    """LoRA mode, whose registration never calls the engine (it loads a version when served)."""
    cfg = Config(model=ModelConfig(path=str(write_base(tmp_path / "tiny-base"))))
    store = Store(cfg.db_path)
    yield Versions(cfg, "lora", EngineClient("http://127.0.0.1:9", None), store)
    store.close()


def _register(versions, source, **kw):
    return asyncio.run(versions.register(str(source), **kw))


def test_register_copies_the_folder_and_checks_the_copy(versions, tmp_path):
    """What is checked is what is served: the check reads the version's own copy (files
    opened for reading, seen by an audit hook), and the source is read only by the copy,
    through descriptors that follow no link."""
    source = write_adapter(tmp_path / "adapter")
    reads, recording = [], [True]

    def audit(event, args):
        if recording and event == "open" and isinstance(args[1], str) and "r" in args[1]:
            reads.append(str(args[0]))

    sys.addaudithook(audit)  # hooks stay for the process: this one records during this test
    try:
        row = _register(versions, source)
    finally:
        recording.clear()
    target = versions.cfg.adapter_dir(row["version"])
    assert row["path"] == str(target) and row["rank"] == 8
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert str(target / name) in reads and str(source / name) not in reads
        assert (target / name).read_bytes() == (source / name).read_bytes()


@pytest.mark.parametrize("link", ["folder", "adapter_config.json", "adapter_model.safetensors"])
def test_register_refuses_symlinks_and_registers_nothing(versions, tmp_path, link):
    """A link to a valid adapter or file still is refused: the publish route must not read
    what a link points at (a config linked to /etc/passwd, another user's files)."""
    real, elsewhere = write_adapter(tmp_path / "real"), write_adapter(tmp_path / "elsewhere")
    if link == "folder":
        source = tmp_path / "link"
        source.symlink_to(real)
    else:
        source = real
        (real / link).unlink()
        (real / link).symlink_to(elsewhere / link)
    with pytest.raises(AdapterError, match="is a symbolic link"):
        _register(versions, source)
    assert versions.store.adapters() == []
    assert not (versions.cfg.home / "adapters").exists() or \
        list((versions.cfg.home / "adapters").iterdir()) == []


def test_register_names_the_given_folder_when_the_copy_fails_its_check(versions, tmp_path):
    source = write_adapter(tmp_path / "adapter")
    (source / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON") as e:
        _register(versions, source)
    assert str(source / "adapter_config.json") in str(e.value)
    assert str(versions.cfg.home) not in str(e.value)  # not the copy's path: it is removed
    assert versions.store.adapters() == []
    assert not (versions.cfg.home / "adapters").exists() or \
        list((versions.cfg.home / "adapters").iterdir()) == []  # the copy is removed
