"""Which adapter version answers, and how a version gets into the engine (hot-swap).

Two ways, one switch (`engine.swap`):
- lora: every version is a LoRA adapter loaded into the engine under its own name (dynalign-vN).
  Activating one loads it, then flips the alias; requests already running keep their adapter.
  Several versions (and the base model) can be served side by side.
- merged: the adapter is merged into full weights at registration; activating reloads the engine's
  weights in place (pause, reload, reset prefix cache, resume). Serves at base-model speed, but only
  the active version is servable, and a request running across a swap finishes on the new weights
  (it is logged with mixed_versions = 1).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from dynalign.config import Config
from dynalign.store import Store
from server import adapters
from server.engine import EngineCallError, EngineClient
from server.validate import RequestError

ALIAS = "dynalign"
VERSION_NAME = re.compile(r"^dynalign-v(\d+)$")


@dataclass
class Target:
    engine_model: str  # the name the engine knows
    public_name: str  # the name the client sees in responses
    version: int | None  # None = base model


def public_name(cfg: Config, version: int | None) -> str:
    return cfg.model_name if version is None else f"{ALIAS}-v{version}"


def parse_version(text: str) -> int | None:
    """'base' -> None; '3', 'v3', 'dynalign-v3' -> 3."""
    if text == "base":
        return None
    m = re.fullmatch(r"(?:dynalign-)?v?(\d+)", text)
    if not m:
        raise RequestError(f"not a version: {text!r}", status=404, code="version_not_found")
    return int(m.group(1))


class Versions:
    def __init__(self, cfg: Config, mode: str, engine: EngineClient, store: Store):
        self.cfg, self.mode, self.engine, self.store = cfg, mode, engine, store
        self.active: int | None = None
        self.weights_epoch = 0  # merged mode: bumped at every in-place weight reload
        self.open = asyncio.Event()  # cleared while merged weights are being swapped
        self.open.set()
        self.lock = asyncio.Lock()  # one registration or activation at a time
        self.loaded: set[int] = set()
        self.load_lock = asyncio.Lock()  # concurrent first requests for a version load it once

    async def startup(self) -> None:
        """Put the version the store says is active into the engine."""
        version = self.store.active_version()
        if version is not None:
            if self.mode == "merged":
                await self._ensure_merged(version)
                await self.engine.reload_weights(str(self.weights_dir(version)))
            else:
                await self._ensure_loaded(version)
        self.active = version

    async def reopen(self, wait_ready) -> None:
        """After the engine died and a fresh one was started: `wait_ready` (blocking, in a
        thread) until it answers, then the startup path puts the active version back into it.
        Registrations and activations wait (the lock) until it is there."""
        async with self.lock:
            await asyncio.to_thread(wait_ready)
            self.loaded.clear()  # the new engine holds no adapter yet
            await self.startup()

    def base_names(self) -> set[str]:
        return {self.cfg.model_name, self.cfg.model_path, Path(self.cfg.model_path).name}

    async def resolve(self, requested: str | None) -> Target:
        await self.open.wait()
        version = self._requested_version(requested)
        if self.mode == "merged" and version != self.active:
            raise RequestError(
                f"model {requested!r} is not servable now: with engine.swap = 'merged' only the "
                f"active version ({public_name(self.cfg, self.active)}) is served",
                status=404, code="model_not_found")
        if self.mode == "lora" and version is not None:
            await self._ensure_loaded(version)
        return self._target(version)

    def _requested_version(self, requested: str | None) -> int | None:
        if requested in (None, ALIAS):
            return self.active
        if requested == self.cfg.model_name:
            return None
        m = VERSION_NAME.match(requested)
        if m and self._known(int(m.group(1))):
            return int(m.group(1))
        raise RequestError(f"The model '{requested}' does not exist", param="model",
                           status=404, code="model_not_found")

    def _known(self, version: int) -> bool:
        return any(row["version"] == version for row in self.store.adapters())

    def _target(self, version: int | None) -> Target:
        name = public_name(self.cfg, version)
        engine_model = name if self.mode == "lora" else self.cfg.model_name
        return Target(engine_model=engine_model, public_name=name, version=version)

    def servable(self) -> list[Target]:
        if self.mode == "merged":
            return [self._target(self.active)]
        versions = [r["version"] for r in self.store.adapters() if r["status"] != "rejected"]
        return [self._target(None)] + [self._target(v) for v in versions]

    # registration and activation
    async def register(self, source: str, parent: int | None = None, note: str = "",
                       origin: str = "registered") -> dict:
        async with self.lock:
            max_rank = self.cfg.engine.max_lora_rank if self.mode == "lora" else None
            config = adapters.check_adapter(source, self.cfg.model_path, self.base_names(), max_rank)
            if parent is not None:
                self.store.adapter(parent)
            version = self.store.next_version()
            target = self.cfg.home / "adapters" / f"{version:04d}"
            folders = [target, self.weights_dir(version)]
            _remove(folders)  # left by a registration that died half-way: never registered
            try:
                await asyncio.to_thread(adapters.copy_adapter, source, target)
                if self.mode == "merged":
                    await self._ensure_merged(version, target)
                self.store.add_adapter(str(target), version=version, parent=parent, note=note,
                                       base_model=self.cfg.model_name, rank=config["r"],
                                       source=origin)
            except Exception:
                _remove(folders)
                raise
            return self.store.adapter(version)

    async def activate(self, version: int | None) -> None:
        async with self.lock:
            if version is not None:
                self.store.adapter(version)
            if self.mode == "lora":
                if version is not None:
                    await self._ensure_loaded(version)
                self._flip(version)
            else:
                await self._swap_weights(version)

    async def _swap_weights(self, version: int | None) -> None:
        if version is not None:
            await self._ensure_merged(version)
        self.open.clear()
        try:
            await self._reload_or_restore(version)
            self._flip(version)
        finally:
            self.open.set()

    async def _reload_or_restore(self, version: int | None) -> None:
        """A reload that fails half-way may leave mixed weights: put the active ones back."""
        self.weights_epoch += 1
        try:
            await self.engine.reload_weights(str(self.weights_dir(version)))
        except EngineCallError:
            await self.engine.reload_weights(str(self.weights_dir(self.active)))
            raise

    def _flip(self, version: int | None) -> None:
        self.store.set_active(version)
        self.active = version

    def weights_dir(self, version: int | None) -> Path:
        if version is None:
            return Path(self.cfg.model_path)
        return self.cfg.home / "merged" / f"{version:04d}"

    async def _ensure_merged(self, version: int, adapter_dir: Path | None = None) -> None:
        target = self.weights_dir(version)
        if not target.exists():
            source = adapter_dir or Path(self.store.adapter(version)["path"])
            await asyncio.to_thread(adapters.merge_adapter, self.cfg.model_path, source, target)

    async def _ensure_loaded(self, version: int) -> None:
        if version in self.loaded:
            return
        async with self.load_lock:
            if version not in self.loaded:
                path = self.store.adapter(version)["path"]
                await self.engine.load_lora(public_name(self.cfg, version), path)
                self.loaded.add(version)


def _remove(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
