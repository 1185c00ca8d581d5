"""LoRA adapter folders: copied into the state dir as an immutable version, the copy checked
against the served base model before anything is swapped (what is checked is what is served),
and (merged mode) merged into full weights.

The check reads only JSON: adapter_config.json and the safetensors header, so it needs no torch.
The copy follows no symbolic link: neither the folder nor the files it copies may be one.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import struct
from pathlib import Path

from dynalign.errors import AdapterError
from dynalign.nofollow import open_no_link

WEIGHTS = "adapter_model.safetensors"
SERVED = ("adapter_config.json", WEIGHTS)  # what a version holds
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
    if not _is(path, "dir"):
        raise AdapterError(f"adapter folder not found: {path}")
    config = _read_json(path / "adapter_config.json")
    if not _is(path / WEIGHTS, "file"):
        raise AdapterError(f"{path} has no {WEIGHTS} (a regular file)")
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
    alpha = config.get("lora_alpha", rank)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise AdapterError(f"adapter_config.json has no valid lora_alpha: {alpha!r}")
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


DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1}


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from the safetensors header: 8 bytes of length, then a JSON object; each
    tensor's bytes must lie inside the file (a truncated file is refused here, not at merge)."""
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
    tensors = {k: v for k, v in entries if k != "__metadata__"}
    data_bytes = path.stat().st_size - 8 - size
    if not all(_fits(v, data_bytes) for v in tensors.values()):
        raise AdapterError(f"{invalid}: unexpected header layout, or the file is truncated")
    return {k: v["shape"] for k, v in tensors.items()}


def _fits(entry, data_bytes: int) -> bool:
    """A tensor entry with a known dtype, a shape, and offsets inside the data that match it."""
    if not isinstance(entry, dict) or entry.get("dtype") not in DTYPE_BYTES:
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return False
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)):
        return False
    begin, end = offsets
    size = math.prod(shape) * DTYPE_BYTES[entry["dtype"]]
    return 0 <= begin <= end <= data_bytes and end - begin == size


def _is(path: Path, kind: str) -> bool:
    """is_dir()/is_file(), False where the OS refuses the path (too long, ...). A FIFO or a
    device is not a file here: reading one could block the registration forever."""
    try:
        return path.is_dir() if kind == "dir" else path.is_file()
    except OSError:
        return False


def _read_json(path: Path, required: tuple[str, ...] = ()) -> dict:
    if not _is(path, "file"):
        raise AdapterError(f"missing {path} (or not a regular file)")
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise AdapterError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise AdapterError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{path} must hold a JSON object")
    missing = [key for key in required if key not in data]
    if missing:
        raise AdapterError(f"{path} lacks {missing[0]!r}")
    return data


def copy_adapter(source: str | Path, target: Path) -> None:
    """Copy only what serving needs into `target` (made here), so a registered version never
    changes under the engine; check_adapter then checks the copy. The folder and its files are
    opened without following symbolic links (a link is refused), and only regular files are
    read (a FIFO or a folder in their place is refused before anything is read)."""
    source = Path(source)
    folder = _open_folder(source)
    try:
        target.mkdir(parents=True, exist_ok=False)
        for name in SERVED:
            _copy_file(folder, source / name, target / name)
    finally:
        os.close(folder)


def _open_folder(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        if _is_link(path):
            raise AdapterError(f"{path} is a symbolic link: give the adapter folder itself") \
                from None
        raise AdapterError(f"adapter folder not found: {path}") from None


def _copy_file(folder: int, path: Path, dest: Path) -> None:
    """`path`, a file of the folder open as `folder`, to `dest` (a new file)."""
    fd = open_no_link(path.name, os.O_RDONLY | os.O_NONBLOCK, AdapterError,  # NONBLOCK: a FIFO
                      "adapter files must be regular files",
                      f"missing {path} (or not a regular file)", dir_fd=folder, shown=path)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AdapterError(f"{path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as src, open(dest, "xb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    finally:
        os.close(fd)


def _is_link(path: Path) -> bool:
    try:
        return path.is_symlink()
    except (OSError, ValueError):
        return False


def merge_adapter(base_path: str, adapter_path: str | Path, target: Path) -> None:
    """Write base + adapter as full weights that the engine can reload in place."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)  # the engine keeps the other core
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16)
    try:  # the folder passed check_adapter, but peft reads more of it than the check does
        merged = PeftModel.from_pretrained(base, str(adapter_path)).merge_and_unload()
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise AdapterError(f"peft cannot load the adapter: {type(e).__name__}: {e}") from None
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(target)
