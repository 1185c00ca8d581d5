"""server.adapters.check_adapter against a tiny fake Llama-style base (config.json only)."""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from dynalign.errors import AdapterError
from helpers.tiny_lora import BASE_CONFIG, SHAPES, lora_key as _key, lora_tensors as _tensors
from helpers.tiny_lora import write_adapter, write_base
from server.adapters import check_adapter, copy_adapter, module_shapes

BASE_NAMES = {"tiny-base", "tiny-base-served"}


@pytest.fixture
def base(tmp_path):
    return write_base(tmp_path / "tiny-base")


def _adapter(tmp_path, name="adapter", *, config=None, tensors=None, rank=8):
    return write_adapter(tmp_path / name, config=config, tensors=tensors, rank=rank)


def test_module_shapes_for_fake_config():
    assert module_shapes(BASE_CONFIG) == SHAPES


def test_module_shapes_explicit_head_dim_and_no_kv_heads():
    cfg = {"hidden_size": 64, "num_attention_heads": 4, "head_dim": 32, "intermediate_size": 96}
    shapes = module_shapes(cfg)
    assert shapes["q_proj"] == (64, 128)
    assert shapes["k_proj"] == (64, 128)  # kv heads default to attention heads
    assert shapes["o_proj"] == (128, 64)
    assert shapes["down_proj"] == (96, 64)


def test_valid_adapter_passes(tmp_path, base):
    path = _adapter(tmp_path, tensors=_tensors(modules=tuple(SHAPES)))
    config = check_adapter(path, base, BASE_NAMES, max_rank=64)
    assert config["r"] == 8 and config["base_model_name_or_path"] == "tiny-base"


def test_peft_default_suffix_accepted(tmp_path, base):
    tensors = {k.replace(".weight", ".default.weight"): v for k, v in _tensors().items()}
    assert check_adapter(_adapter(tmp_path, tensors=tensors), base, BASE_NAMES)["r"] == 8


def test_missing_folder(tmp_path, base):
    with pytest.raises(AdapterError, match="not found"):
        check_adapter(tmp_path / "nope", base, BASE_NAMES)


def test_missing_adapter_config(tmp_path, base):
    path = _adapter(tmp_path)
    (path / "adapter_config.json").unlink()
    with pytest.raises(AdapterError, match="adapter_config.json"):
        check_adapter(path, base, BASE_NAMES)


def test_invalid_adapter_config_json(tmp_path, base):
    path = _adapter(tmp_path)
    (path / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        check_adapter(path, base, BASE_NAMES)


def test_missing_weights(tmp_path, base):
    path = _adapter(tmp_path)
    (path / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="adapter_model.safetensors"):
        check_adapter(path, base, BASE_NAMES)


def test_rank_mismatch_in_shapes(tmp_path, base):
    path = _adapter(tmp_path, config={"r": 8}, tensors=_tensors(rank=4), rank=8)
    with pytest.raises(AdapterError, match=r"lora_A\.weight has shape \[4, 64\], expected \[8, 64\]"):
        check_adapter(path, base, BASE_NAMES)


def test_wrong_hidden_size_names_tensor(tmp_path, base):
    wrong = {m: (fi * 2, fo * 2) for m, (fi, fo) in SHAPES.items()}
    path = _adapter(tmp_path, tensors=_tensors(shapes=wrong))
    with pytest.raises(AdapterError) as e:
        check_adapter(path, base, BASE_NAMES)
    assert "layers.0.self_attn.q_proj.lora_A.weight" in str(e.value)
    assert "[8, 128]" in str(e.value)


def test_wrong_b_shape_names_tensor(tmp_path, base):
    tensors = _tensors()
    tensors[_key(1, "v_proj", "B")] = np.zeros((64, 8), dtype=np.float32)  # kv width is 32
    with pytest.raises(AdapterError, match=r"layers\.1\.self_attn\.v_proj\.lora_B\.weight"):
        check_adapter(_adapter(tmp_path, tensors=tensors), base, BASE_NAMES)


def test_layer_beyond_base(tmp_path, base):
    path = _adapter(tmp_path, tensors=_tensors(layers=(0, 1, 2)))
    with pytest.raises(AdapterError, match="layer 2, but the base model has 2 layers"):
        check_adapter(path, base, BASE_NAMES)


def test_unsupported_tensor(tmp_path, base):
    tensors = _tensors()
    tensors["base_model.model.lm_head.weight"] = np.zeros((4, 4), dtype=np.float32)
    with pytest.raises(AdapterError, match="unsupported adapter tensor"):
        check_adapter(_adapter(tmp_path, tensors=tensors), base, BASE_NAMES)


def test_rank_over_max(tmp_path, base):
    path = _adapter(tmp_path, rank=16)
    assert check_adapter(path, base, BASE_NAMES, max_rank=16)["r"] == 16
    with pytest.raises(AdapterError, match="rank 16 exceeds engine.max_lora_rank 8"):
        check_adapter(path, base, BASE_NAMES, max_rank=8)


@pytest.mark.parametrize("rank", [0, None, "8"])
def test_invalid_rank(tmp_path, base, rank):
    path = _adapter(tmp_path)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank}))
    with pytest.raises(AdapterError, match="rank"):
        check_adapter(path, base, BASE_NAMES)


def test_other_base_model_rejected(tmp_path, base):
    path = _adapter(tmp_path, config={"base_model_name_or_path": "meta-llama/Llama-3-8B"})
    with pytest.raises(AdapterError, match="Llama-3-8B"):
        check_adapter(path, base, BASE_NAMES)


def test_base_path_with_matching_basename_accepted(tmp_path, base):
    path = _adapter(tmp_path, config={"base_model_name_or_path": "/somewhere/else/tiny-base"})
    assert check_adapter(path, base, BASE_NAMES)["r"] == 8
    path = _adapter(tmp_path, "hub", config={"base_model_name_or_path": "org/tiny-base-served"})
    assert check_adapter(path, base, BASE_NAMES)["r"] == 8


def test_empty_base_name_accepted(tmp_path, base):
    path = _adapter(tmp_path, config={"base_model_name_or_path": None})
    assert check_adapter(path, base, BASE_NAMES)["r"] == 8


def test_non_lora_rejected(tmp_path, base):
    path = _adapter(tmp_path, config={"peft_type": "IA3"})
    with pytest.raises(AdapterError, match="IA3"):
        check_adapter(path, base, BASE_NAMES)


def test_modules_to_save_rejected(tmp_path, base):
    path = _adapter(tmp_path, config={"modules_to_save": ["lm_head"]})
    with pytest.raises(AdapterError, match="modules_to_save"):
        check_adapter(path, base, BASE_NAMES)


@pytest.mark.parametrize("garbage", [
    pytest.param(b"\x00\x01garbage bytes that are not safetensors" * 3, id="garbage"),
    pytest.param(b"abc", id="short"),
    pytest.param(b"", id="empty"),
    pytest.param((12).to_bytes(8, "little") + b"{broken json", id="broken-json"),
    pytest.param((2).to_bytes(8, "little") + b"[]", id="header-not-object"),
    pytest.param((8).to_bytes(8, "little") + b'{"a": 1}', id="entry-not-object"),
])
def test_corrupt_safetensors_rejected(tmp_path, base, garbage):
    path = _adapter(tmp_path)
    (path / "adapter_model.safetensors").write_bytes(garbage)
    with pytest.raises(AdapterError):
        check_adapter(path, base, BASE_NAMES)


def test_empty_weights_rejected(tmp_path, base):
    with pytest.raises(AdapterError, match="empty"):
        check_adapter(_adapter(tmp_path, tensors={}), base, BASE_NAMES)


def test_copy_adapter_copies_only_serving_files(tmp_path):
    source = _adapter(tmp_path)
    (source / "README.md").write_text("extra")
    target = tmp_path / "state" / "adapters" / "v1"
    target.parent.mkdir(parents=True)
    copy_adapter(source, target)
    assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    with pytest.raises(FileExistsError):
        copy_adapter(source, target)


def test_adapter_config_not_an_object_rejected(tmp_path, base):
    path = _adapter(tmp_path)
    (path / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(AdapterError, match="JSON object"):
        check_adapter(path, base, BASE_NAMES)


# what reached the merge (or the OS) before and came back as a 500
def test_truncated_weights_rejected(tmp_path, base):
    path = _adapter(tmp_path)
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(AdapterError, match="truncated"):
        check_adapter(path, base, BASE_NAMES)


@pytest.mark.parametrize("alpha", ["abc", None, True, [16]])
def test_invalid_alpha_rejected(tmp_path, base, alpha):
    with pytest.raises(AdapterError, match="lora_alpha"):
        check_adapter(_adapter(tmp_path, config={"lora_alpha": alpha}), base, BASE_NAMES)


def test_a_path_the_os_refuses_is_not_found(tmp_path, base):
    with pytest.raises(AdapterError, match="not found"):
        check_adapter(tmp_path / ("a" * 5000), base, BASE_NAMES)


@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors"])
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_non_regular_file_is_refused_without_reading_it(tmp_path, base, name, kind):
    path = _adapter(tmp_path)
    (path / name).unlink()
    os.mkfifo(path / name) if kind == "fifo" else (path / name).mkdir()
    with pytest.raises(AdapterError, match="regular file"):
        check_adapter(path, base, BASE_NAMES)


# copy_adapter: the registration copies first (following no link), then checks the copy
@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors"])
def test_copy_refuses_a_file_that_is_a_symlink(tmp_path, name):
    """Even one pointing at a valid file: what is registered must be the folder's own."""
    source, elsewhere = _adapter(tmp_path), _adapter(tmp_path, "elsewhere")
    (source / name).unlink()
    (source / name).symlink_to(elsewhere / name)
    target = tmp_path / "state" / "adapters" / "0001"
    with pytest.raises(AdapterError, match="is a symbolic link"):
        copy_adapter(source, target)
    assert not (target / name).exists()


def test_copy_refuses_a_folder_that_is_a_symlink(tmp_path):
    (tmp_path / "link").symlink_to(_adapter(tmp_path))
    target = tmp_path / "state" / "adapters" / "0001"
    with pytest.raises(AdapterError, match="link is a symbolic link"):
        copy_adapter(tmp_path / "link", target)
    assert not target.exists()


@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors"])
@pytest.mark.parametrize("kind", ["directory", "fifo", "missing"])
def test_copy_refuses_what_is_not_a_regular_file_without_reading_it(tmp_path, name, kind):
    source = _adapter(tmp_path)
    (source / name).unlink()
    if kind != "missing":
        os.mkfifo(source / name) if kind == "fifo" else (source / name).mkdir()
    with pytest.raises(AdapterError, match="regular file"):
        copy_adapter(source, tmp_path / "state" / "adapters" / "0001")


def test_copy_of_a_folder_that_is_not_there(tmp_path):
    for path in (tmp_path / "nope", tmp_path / ("a" * 5000), f"{tmp_path}/a\x00b"):
        with pytest.raises(AdapterError, match="not found"):
            copy_adapter(path, tmp_path / "state" / "adapters" / "0001")
