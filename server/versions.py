"""Which adapter version answers, and how a version gets into the engine (hot-swap).

Two strategies, one switch (`engine.swap`), chosen once (Versions.swap):
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
import dataclasses
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dynalign.canary import arm_of
from dynalign.config import Config
from dynalign.errors import CanaryError, CanaryRunningError
from dynalign.store import Store
from server import adapters
from server.engine import EngineCallError, EngineClient
from server.validate import MAX_ID, RequestError

ALIAS = "dynalign"
CANARY_ENDS = {"promote": "promoted", "rollback": "rolled_back", "keep": "expired",
               "stop": "stopped"}  # how a canary ended, by the action that ended it
VERSION_NAME = re.compile(r"^dynalign-v(\d{1,19})$")  # 19 digits: MAX_ID's (and int()'s limit)


@dataclass
class Target:
    engine_model: str  # the name the engine knows
    public_name: str  # the name the client sees in responses
    version: int | None  # None = base model
    arm: str | None = None  # "active" or "canary" when a running canary routed it
    canary: int | None = None  # that canary's id


def public_name(cfg: Config, version: int | None) -> str:
    return cfg.model_name if version is None else f"{ALIAS}-v{version}"


def parse_version(text: str) -> int | None:
    """'base' -> None; '3', 'v3', 'dynalign-v3' -> 3."""
    if text == "base":
        return None
    m = re.fullmatch(r"(?:dynalign-)?v?(\d{1,19})", text)
    if not m or int(m.group(1)) > MAX_ID:
        raise RequestError(f"not a version: {text!r}", status=404, code="version_not_found")
    return int(m.group(1))


class Versions:
    """The active version, registration and activation; how a version reaches the engine is the
    swap strategy's (LoraSwap or MergedSwap), chosen once from the mode."""

    def __init__(self, cfg: Config, mode: str, engine: EngineClient, store: Store,
                 on_swap: Callable[[float], None] | None = None):
        """`on_swap(seconds)`: called after each activation (the gateway's metrics)."""
        self.cfg, self.mode, self.engine, self.store = cfg, mode, engine, store
        self.on_swap = on_swap or (lambda seconds: None)
        self.active: int | None = None
        self.canary: dict | None = None  # the running canary's row (the store keeps it)
        self.canary_lock = asyncio.Lock()  # one canary start or end at a time
        self.lock = asyncio.Lock()  # one registration or activation at a time
        self.swap = (MergedSwap if mode == "merged" else LoraSwap)(self)

    @property
    def weights_epoch(self) -> int:
        """Bumped at every in-place weight reload (merged mode): a request that saw it change
        ran on mixed versions."""
        return self.swap.epoch

    async def startup(self) -> None:
        """Put the version the store says is active into the engine; resume a running canary
        (in LoRA mode: merged mode cannot serve its two versions, so it is ended, saying why)."""
        version = self.store.active_version()
        if version is not None:
            await self.swap.install(version)
        self.active = version
        self.canary = self.store.running_canary()
        if self.canary and self.mode != "lora":
            reason = (f"not resumed: the gateway restarted with engine.swap = {self.mode!r}, "
                      "which serves one version at a time; the active version stays")
            self.store.end_canary(self.canary["id"], CANARY_ENDS["stop"], reason)
            print(f"canary {self.canary['id']} (version {self.canary['version']}) ended: {reason}",
                  file=sys.stderr, flush=True)
            self.canary = None

    async def reopen(self, wait_ready) -> None:
        """After the engine died and a fresh one was started: `wait_ready` (blocking, in a
        thread) until it answers, then the startup path puts the active version back into it.
        Registrations and activations wait (the lock) until it is there."""
        async with self.lock:
            self.swap.forget()  # the new engine holds nothing of ours: forgotten before it is up
            await asyncio.to_thread(wait_ready)
            await self.startup()

    def base_names(self) -> set[str]:
        return {self.cfg.model_name, self.cfg.model_path, Path(self.cfg.model_path).name}

    async def resolve(self, requested: str | None, key: str = "", admin: bool = False) -> Target:
        """The version that answers; the alias goes to a running canary's arm for `key`'s user
        (dynalign/canary.py). By name, only the serving versions (`serving`) answer, but for
        the admin key (an operator's `dynalign eval` of a candidate)."""
        await self.swap.wait_open()
        version, canary = self._requested_version(requested, admin), self.canary
        arm = None
        if canary and requested in (None, ALIAS):
            arm = arm_of(key, canary["id"], canary["share"])
            version = canary["version"] if arm == "canary" else version
        await self.swap.serve(requested, version)
        return dataclasses.replace(self._target(version), arm=arm,
                                   canary=canary["id"] if arm else None)

    def _requested_version(self, requested: str | None, admin: bool) -> int | None:
        if requested in (None, ALIAS):
            return self.active
        if requested == self.cfg.model_name:
            return None
        m = VERSION_NAME.match(requested)
        row = self._row(int(m.group(1))) if m else None
        if row is None:
            raise RequestError(f"The model '{requested}' does not exist", param="model",
                               status=404, code="model_not_found")
        if not (admin or self.serving(row["version"])):
            raise RequestError(
                f"the model '{requested}' is not serving (it is {row['status']}): only the "
                f"active version ({public_name(self.cfg, self.active)}), a running canary's "
                "and the base model answer; activate it to serve it", param="model",
                status=404, code="model_not_serving")
        return row["version"]

    def _row(self, version: int) -> dict | None:
        return next((r for r in self.store.adapters() if r["version"] == version), None)

    def serving(self, version: int | None) -> bool:
        """Whether `version` answers chats now: the active one, a running canary's, the base."""
        return version in (None, self.active) or bool(
            self.canary and self.canary["version"] == version)

    def _target(self, version: int | None) -> Target:
        name = public_name(self.cfg, version)
        return Target(engine_model=self.swap.engine_model(name), public_name=name,
                      version=version)

    def servable(self) -> list[Target]:
        return [self._target(v) for v in self.swap.servable() if self.serving(v)]

    # registration and activation
    async def register(self, source: str, parent: int | None = None, note: str = "",
                       origin: str = "registered") -> dict:
        async with self.lock:
            if parent is not None:
                self.store.adapter(parent)
            version = self.store.next_version()
            target = self.cfg.adapter_dir(version)
            folders = [target, self.cfg.merged_dir(version)]
            _remove(folders)  # left by a registration that died half-way: never registered
            try:  # copied (no symlink followed), then the copy checked: it is what is served
                await asyncio.to_thread(adapters.copy_adapter, source, target)
                try:
                    config = adapters.check_adapter(target, self.cfg.model_path,
                                                    self.base_names(), self.swap.max_rank)
                except adapters.AdapterError as e:  # named as given: the copy is removed
                    raise adapters.AdapterError(str(e).replace(str(target), str(source))) \
                        from None
                await self.swap.prepare(version, target)
                self.store.add_adapter(str(target), version=version, parent=parent, note=note,
                                       base_model=self.cfg.model_name, rank=config["r"],
                                       source=origin)
            except Exception:
                _remove(folders)
                raise
            return self.store.adapter(version)

    async def publish(self, candidate: str, parent: int | None, note: str, promote: bool) -> int:
        """A round's candidate, after its gate: registered (origin "round"), then, if the gate
        promoted it, served to all or (learn.promote = "canary") to a canary's share of users;
        else marked `rejected` (activating it then needs force). The one way a round publishes:
        the in-server manager calls it, a standalone learner through
        POST /admin/adapters/publish."""
        row = await self.register(candidate, parent=parent, note=note, origin="round")
        version = row["version"]
        if not promote:
            self.store.set_adapter_status(version, "rejected", note=note)
        elif self.canary:  # it would change an arm: left a candidate, saying why
            self.store.set_adapter_status(version, "candidate", note=(
                f"{note}; passed its gate, not served: the canary of version "
                f"{self.canary['version']} was running"))
        elif self.cfg.learn.promote == "canary":
            canary = await self.start_canary({**vars(self.cfg.canary), "version": version})
            self.store.set_adapter_status(version, "candidate", note=(
                f"{note}; canary {canary['id']}: served to {canary['share']:.0%} of users"))
        else:
            await self.activate(version)
        return version

    # canary rollout (dynalign/canary.py decides; server/canary.py has the routes)
    async def start_canary(self, settings: dict) -> dict:
        """Serve settings["version"] to settings["share"] of the alias's users next to the
        active version; the store keeps it, so a restart resumes it."""
        async with self.canary_lock, self.lock:  # no activation meanwhile: `active` is current
            self._check_can_start(settings["version"])
            await self.swap.serve(None, settings["version"])  # loaded before anyone is routed
            self.canary = self.store.start_canary(active=self.active, **settings)
            return self.canary

    def _check_can_start(self, version: int) -> None:
        if self.mode != "lora":
            raise CanaryError('a canary serves two versions side by side, which needs '
                              'engine.swap = "lora" (merged mode holds one version at a time)',
                              "canary_needs_lora")
        if self.canary:
            raise CanaryRunningError(self.canary["version"])
        row = self.store.adapter(version)  # 404 for an unknown version
        if row["status"] == "rejected":
            raise CanaryError(f"version {version} was rejected ({row['note']}): activate it "
                              "with force if you mean it, a canary only tries candidates",
                              "adapter_rejected")
        if version == self.active:
            raise CanaryError(f"version {version} is already active", "already_active")

    async def end_canary(self, action: str, reason: str, if_running: bool = False,
                         canary_id: int | None = None) -> bool:
        """Promote (serve the canary's version to all), roll back (mark it rejected, with why),
        keep or stop (the active version stays); the canary ends, once. No canary: 409
        no_canary, or nothing with `if_running`. With `canary_id` (a review's numbers are that
        canary's), only that canary ends: one that ended or was replaced meanwhile is left
        alone. True when it ended one."""
        async with self.canary_lock:
            canary = self.canary
            if canary is None or (canary_id is not None and canary["id"] != canary_id):
                if if_running or canary_id is not None:
                    return False
                raise CanaryError("no canary is running", "no_canary")
            if action == "promote":
                await self.activate(canary["version"], ending_canary=True)
            self.store.end_canary(canary["id"], CANARY_ENDS[action], reason)
            self.canary = None
            if action == "rollback":
                self.store.set_adapter_status(canary["version"], "rejected",
                                              note=f"canary {canary['id']}: {reason}")
            return True

    async def roll_back_to(self, version: int | None) -> None:
        """A drift rollback: a running canary is stopped first (its arms would change); one that
        ends by itself meanwhile is no error (looked at under the canary lock, not before it)."""
        await self.end_canary("stop", f"drift: rolled back to {public_name(self.cfg, version)}",
                              if_running=True)
        await self.activate(version)

    async def activate(self, version: int | None, ending_canary: bool = False) -> None:
        """Serve `version` to all; refused while a canary runs (end or promote it first)."""
        async with self.lock:
            if self.canary and not ending_canary:
                raise CanaryRunningError(self.canary["version"])
            if version is not None:
                self.store.adapter(version)
            start = time.perf_counter()
            await self.swap.switch(version)
            self.on_swap(time.perf_counter() - start)

    def flip(self, version: int | None) -> None:
        """The active version is now `version` (the strategy calls it once the engine has it)."""
        self.store.set_active(version)
        self.active = version


class LoraSwap:
    """Every version is a LoRA adapter the engine holds under its own name (dynalign-vN), loaded
    on first use; activating loads it, then flips the alias. Versions are served side by side."""

    epoch = 0  # the weights never change under a request

    def __init__(self, versions: Versions):
        self.versions, self.cfg = versions, versions.cfg
        self.max_rank = self.cfg.engine.max_lora_rank
        self.loaded: set[int] = set()
        self.engine_epoch = 0  # bumped when an engine restart empties it (forget)
        self.load_lock = asyncio.Lock()  # concurrent first requests for a version load it once

    async def install(self, version: int) -> None:
        await self._ensure_loaded(version)

    def forget(self) -> None:
        """A new engine holds no adapter: a load that was under way counts for the old one."""
        self.loaded.clear()
        self.engine_epoch += 1

    async def wait_open(self) -> None:
        pass

    async def serve(self, requested: str | None, version: int | None) -> None:
        if version is not None:
            await self._ensure_loaded(version)

    def engine_model(self, name: str) -> str:
        return name

    def servable(self) -> list[int | None]:
        store = self.versions.store
        return [None] + [r["version"] for r in store.adapters() if r["status"] != "rejected"]

    async def prepare(self, version: int, adapter_dir: Path) -> None:
        pass  # loaded when first served or activated

    async def switch(self, version: int | None) -> None:
        if version is not None:
            await self._ensure_loaded(version)
        self.versions.flip(version)

    async def _ensure_loaded(self, version: int) -> None:
        if version in self.loaded:
            return
        async with self.load_lock:
            if version not in self.loaded:
                path, epoch = self.versions.store.adapter(version)["path"], self.engine_epoch
                await self.versions.engine.load_lora(public_name(self.cfg, version), path)
                if epoch == self.engine_epoch:
                    self.loaded.add(version)


class MergedSwap:
    """Each version's adapter is merged into full weights at registration; activating reloads
    the engine's weights in place. Only the active version is servable."""

    max_rank = None  # merging takes any rank

    def __init__(self, versions: Versions):
        self.versions, self.cfg = versions, versions.cfg
        self.epoch = 0
        self.open = asyncio.Event()  # cleared while the weights are being swapped
        self.open.set()

    async def install(self, version: int) -> None:
        await self._ensure_merged(version)
        await self.versions.engine.reload_weights(str(self.weights_dir(version)))

    def forget(self) -> None:
        pass  # a new engine starts from the base weights; install() reloads the active ones

    async def wait_open(self) -> None:
        await self.open.wait()

    async def serve(self, requested: str | None, version: int | None) -> None:
        active = self.versions.active
        if version != active:
            raise RequestError(
                f"model {requested!r} is not servable now: with engine.swap = 'merged' only the "
                f"active version ({public_name(self.cfg, active)}) is served",
                status=404, code="model_not_found")

    def engine_model(self, name: str) -> str:
        return self.cfg.model_name

    def servable(self) -> list[int | None]:
        return [self.versions.active]

    async def prepare(self, version: int, adapter_dir: Path) -> None:
        await self._ensure_merged(version, adapter_dir)

    async def switch(self, version: int | None) -> None:
        if version is not None:
            await self._ensure_merged(version)
        self.open.clear()
        try:
            await self._reload_or_restore(version)
            self.versions.flip(version)
        finally:
            self.open.set()

    async def _reload_or_restore(self, version: int | None) -> None:
        """A reload that fails half-way may leave mixed weights: put the active ones back."""
        self.epoch += 1
        engine = self.versions.engine
        try:
            await engine.reload_weights(str(self.weights_dir(version)))
        except EngineCallError:
            await engine.reload_weights(str(self.weights_dir(self.versions.active)))
            raise

    def weights_dir(self, version: int | None) -> Path:
        if version is None:
            return Path(self.cfg.model_path)
        return self.cfg.merged_dir(version)

    async def _ensure_merged(self, version: int, adapter_dir: Path | None = None) -> None:
        target = self.weights_dir(version)
        if not target.exists():
            source = adapter_dir or Path(self.versions.store.adapter(version)["path"])
            await asyncio.to_thread(adapters.merge_adapter, self.cfg.model_path, source, target)


def _remove(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
