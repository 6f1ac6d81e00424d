"""Containers on disk: one directory per container, found by name, full ID or unique ID prefix.

    <root>/containers/<64-hex id>/
        container.json   what the user asked for, in Docker's inspect shape (Id, Name, Config,
                         HostConfig, Image, ...); written by create/rename, read by everyone
        state.json       what happened (Status, Pid, ExitCode, StartedAt, ...); written only by
                         the container's monitor while it lives (or by a command that finds the
                         monitor dead); status is then re-derived from the kernel on every read
        config.json      the OCI bundle the engine made (rootfs/ beside it, mounted while running)
        upper/ work/     the container's writable layer
        ctr.log          its output, Docker's json-file format
    <root>/containers/.lock   guards names: create, rename and rm take it

Every write is atomic (temp file, fsync, rename), so a kill -9 at any point leaves either the
old or the new document.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.errors import StockadeError
from stockade.fsutil import atomic_write, file_lock
from stockade.kernel.process import proc_start_time

RECORD = "container.json"
STATE = "state.json"
LOG = "ctr.log"


class NoSuchContainer(StockadeError):
    pass


class EngineError(StockadeError):
    pass


def new_id() -> str:
    return os.urandom(32).hex()  # (secrets.token_hex's own way; secrets imports random: see host.MONITOR_MODULES)


def now_rfc3339() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def write_json(path: Path, data: Any, durable: bool = True) -> None:
    # Compact: json's C encoder (an indent means its pure-Python one, ~4 ms for a config.json
    # with the default seccomp profile).
    atomic_write(path, json.dumps(data, separators=(",", ":")).encode(), 0o600, durable)


def read_json(path: Path) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def process_alive(pid: int, start_time: int) -> bool:
    return bool(pid) and proc_start_time(pid) == start_time


@dataclass(slots=True)
class Container:
    """One container: its record (what was asked) and its state (what happened)."""

    dir: Path
    record: dict[str, Any]
    state: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.record["Id"])

    @property
    def name(self) -> str:
        return str(self.record["Name"]).lstrip("/")

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def durable(self) -> bool:
        """Whether its files must survive a power cut: not an --rm container's, which are
        gone when it exits (so they are written without fsync, ~2 ms less per run)."""
        return not self.record.get("HostConfig", {}).get("AutoRemove")

    @property
    def log_path(self) -> Path:
        return self.dir / LOG

    @property
    def socket_path(self) -> Path:
        return self.dir / "monitor.sock"

    def monitor_alive(self) -> bool:
        return process_alive(int(self.state.get("MonitorPid", 0)), int(self.state.get("MonitorStartTime", 0)))

    def init_alive(self) -> bool:
        return process_alive(int(self.state.get("Pid", 0)), int(self.state.get("StartTime", 0)))

    def status(self) -> str:
        """created | running | paused | restarting | exited | dead, derived from the kernel:
        a recorded "running" whose init is gone (its monitor killed) is reported as exited."""
        recorded = str(self.state.get("Status", "created"))
        if recorded in ("running", "paused"):
            if not self.init_alive():
                return "exited" if not self.monitor_alive() else "running"
            return "paused" if _frozen(self.state.get("CgroupPaths") or {}) else "running"
        if recorded in ("starting", "restarting") and not self.monitor_alive():
            return "exited"
        if recorded == "starting":
            return "created"
        return recorded

    def running(self) -> bool:
        return self.status() in ("running", "paused", "restarting")

    def save_state(self) -> None:
        write_json(self.dir / STATE, self.state, self.durable)

    def save_record(self) -> None:
        write_json(self.dir / RECORD, self.record, self.durable)

    def reload(self) -> Container:
        with contextlib.suppress(FileNotFoundError, ValueError):
            self.state = read_json(self.dir / STATE)
        return self


def _frozen(cgroup_paths: dict[str, str]) -> bool:
    for key, name, frozen in (("freezer", "freezer.state", "FROZEN"), ("", "cgroup.freeze", "1")):
        path = cgroup_paths.get(key)
        if path:
            with contextlib.suppress(OSError), open(os.path.join(path, name)) as f:
                return f.read().strip() == frozen
    return False


class Containers:
    """The containers under <root>/containers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "containers"

    def init(self) -> Containers:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o711)  # containers' root users must traverse to their rootfs
        return self

    @contextlib.contextmanager
    def names_lock(self) -> Iterator[None]:
        self.init()
        with file_lock(self.dir / ".lock"):
            yield

    def ids(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.dir) if len(n) == 64 and not n.startswith("."))
        except FileNotFoundError:
            return []

    def load(self, container_id: str) -> Container:
        d = self.dir / container_id
        try:
            record = read_json(d / RECORD)
        except FileNotFoundError:
            raise NoSuchContainer(f"no such container: {container_id}") from None
        except ValueError as exc:
            raise EngineError(f"container {container_id[:12]}: corrupt {RECORD}: {exc}") from None
        try:
            state = read_json(d / STATE)
        except (FileNotFoundError, ValueError):
            state = {"Status": "created"}
        return Container(d, record, state)

    def all(self) -> list[Container]:
        out = []
        for cid in self.ids():
            with contextlib.suppress(NoSuchContainer, EngineError):
                out.append(self.load(cid))
        return out

    def find(self, text: str) -> Container:
        """By name (with or without the leading /), full ID, or unique ID prefix."""
        name = text.lstrip("/")
        containers = self.all()
        for c in containers:
            if c.name == name or c.id == text:
                return c
        if text and all(ch in "0123456789abcdef" for ch in text):
            hits = [c for c in containers if c.id.startswith(text)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise EngineError(f'multiple containers match the ID prefix "{text}": be more specific')
        raise NoSuchContainer(f"no such container: {text}")

    def name_owner(self, name: str) -> Container | None:
        return next((c for c in self.all() if c.name == name), None)
