"""Fresh LoRA adapters on the base model.

A refresh round starts from the active adapter or from `new_adapter()`. With `noise > 0` the B
matrices are random instead of zero, so the adapter changes the model's output at once: tests and
benchmarks use that to tell versions apart.
"""

from __future__ import annotations

from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def new_adapter(base_path: str, out: str | Path, rank: int = 16, alpha: int = 32, seed: int = 0,
                noise: float = 0.0, targets: list[str] | None = None) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets or TARGETS,
                        lora_dropout=0.0, task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    if noise:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, noise)
    model.save_pretrained(str(out))
    return Path(out)
