"""LoRA adapter folders: checked against the served base model before anything is swapped, copied
into the state dir as an immutable version, and (merged mode) merged into full weights.

The check reads only JSON: adapter_config.json and the safetensors header, so it needs no torch.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

from dynalign.errors import AdapterError

WEIGHTS = "adapter_model.safetensors"
BASE_KEYS = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers")
KEY = re.compile(r"layers\.(\d+)\..*?(\w+_proj)\.lora_([AB])(?:\.default)?\.weight$")


def module_shapes(base_config: dict) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each linear layer of a Llama/Qwen/Mistral-style block."""
    hidden = base_config["hidden_size"]
    heads = base_config["num_attention_heads"]
    head_dim = base_config.get("head_dim") or hidden // heads
    kv = base_config.get("num_key_value_heads", heads) * head_dim
    inter = base_config["intermediate_size"]
    return {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
            "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter),
            "up_proj": (hidden, inter), "down_proj": (inter, hidden)}


def check_adapter(path: str | Path, base_path: str | Path, base_names: set[str],
                  max_rank: int | None = None) -> dict:
    """Raise AdapterError naming the first problem; return the adapter's config when it fits."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"adapter folder not found: {path}")
    config = _read_json(path / "adapter_config.json")
    if not (path / WEIGHTS).exists():
        raise AdapterError(f"{path} has no {WEIGHTS}")
    _check_config(config, base_names, max_rank)
    base_config = _read_json(Path(base_path) / "config.json", required=BASE_KEYS)
    _check_shapes(_safetensors_shapes(path / WEIGHTS), module_shapes(base_config),
                  base_config["num_hidden_layers"], config["r"])
    return config


def _check_config(config: dict, base_names: set[str], max_rank: int | None) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"only LoRA adapters are served, got {config.get('peft_type')}")
    base = config.get("base_model_name_or_path") or ""
    if base and base not in base_names and Path(base).name not in base_names:
        raise AdapterError(f"adapter was trained on {base!r}, but the served base model is "
                           f"{sorted(base_names)[0]!r}")
    rank = config.get("r")
    if not isinstance(rank, int) or rank <= 0:
        raise AdapterError(f"adapter_config.json has no valid rank r: {rank!r}")
    if max_rank is not None and rank > max_rank:
        raise AdapterError(f"adapter rank {rank} exceeds engine.max_lora_rank {max_rank}")
    if config.get("modules_to_save"):
        raise AdapterError("adapters with modules_to_save cannot be hot-swapped")


def _check_shapes(shapes: dict, expected: dict, layers: int, rank: int) -> None:
    if not shapes:
        raise AdapterError("adapter weights are empty")
    for key, shape in shapes.items():
        m = KEY.search(key)
        if not m or m.group(2) not in expected:
            raise AdapterError(f"unsupported adapter tensor: {key}")
        layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
        if layer >= layers:
            raise AdapterError(f"{key}: layer {layer}, but the base model has {layers} layers")
        fan_in, fan_out = expected[module]
        want = [rank, fan_in] if ab == "A" else [fan_out, rank]
        if list(shape) != want:
            raise AdapterError(f"{key} has shape {list(shape)}, expected {want} for this base model")


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from the safetensors header: 8 bytes of length, then a JSON object."""
    invalid = f"{path} is not a valid safetensors file"
    with open(path, "rb") as f:
        head = f.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < size <= path.stat().st_size - 8:
            raise AdapterError(f"{invalid}: bad header length")
        try:
            header = json.loads(f.read(size))
        except ValueError as e:
            raise AdapterError(f"{invalid}: {e}") from None
    entries = header.items() if isinstance(header, dict) else [(None, None)]
    if not all(isinstance(v, dict) and isinstance(v.get("shape"), list)
               for k, v in entries if k != "__metadata__"):
        raise AdapterError(f"{invalid}: unexpected header layout")
    return {k: v["shape"] for k, v in entries if k != "__metadata__"}


def _read_json(path: Path, required: tuple[str, ...] = ()) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdapterError(f"missing {path}") from None
    except ValueError as e:
        raise AdapterError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{path} must hold a JSON object")
    missing = [key for key in required if key not in data]
    if missing:
        raise AdapterError(f"{path} lacks {missing[0]!r}")
    return data


def copy_adapter(source: str | Path, target: Path) -> None:
    """Copy only what serving needs, so a registered version never changes under the engine."""
    target.mkdir(parents=True, exist_ok=False)
    for name in ("adapter_config.json", WEIGHTS):
        shutil.copy2(Path(source) / name, target / name)


def merge_adapter(base_path: str, adapter_path: str | Path, target: Path) -> None:
    """Write base + adapter as full weights that the engine can reload in place."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)  # the engine keeps the other core
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(base, str(adapter_path)).merge_and_unload()
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(target)
