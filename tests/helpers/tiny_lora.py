"""A tiny fake Llama-style base (config.json only) and LoRA adapters shaped for it: enough for
server.adapters.check_adapter and the registration path, with no model weights."""

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

BASE_CONFIG = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
               "num_key_value_heads": 2, "intermediate_size": 128, "num_hidden_layers": 2}
# (in, out) for this config: head_dim 16, kv width 32
SHAPES = {"q_proj": (64, 64), "k_proj": (64, 32), "v_proj": (64, 32), "o_proj": (64, 64),
          "gate_proj": (64, 128), "up_proj": (64, 128), "down_proj": (128, 64)}


def write_base(path: Path) -> Path:
    """The base's folder (its name, "tiny-base" by default, is what adapters name as base)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(BASE_CONFIG))
    return path


def lora_key(layer, module, ab):
    group = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    return f"base_model.model.model.layers.{layer}.{group}.{module}.lora_{ab}.weight"


def lora_tensors(rank=8, modules=("q_proj", "v_proj"), layers=(0, 1), shapes=SHAPES):
    out = {}
    for layer in layers:
        for m in modules:
            fan_in, fan_out = shapes[m]
            out[lora_key(layer, m, "A")] = np.zeros((rank, fan_in), dtype=np.float32)
            out[lora_key(layer, m, "B")] = np.zeros((fan_out, rank), dtype=np.float32)
    return out


def write_adapter(path: Path, *, config=None, tensors=None, rank=8) -> Path:
    path.mkdir(parents=True)
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "base_model_name_or_path": "tiny-base",
           "target_modules": ["q_proj", "v_proj"]}
    cfg.update(config or {})
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(lora_tensors(rank=rank) if tensors is None else tensors,
              str(path / "adapter_model.safetensors"))
    return path
