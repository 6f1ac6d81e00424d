"""`update` and `events`: change a live container's limits; report its usage and OOM kills."""

from __future__ import annotations

import os
import sys
import time

from stockade import jsonfast
from stockade.errors import ContainerError
from stockade.runtime.container import cgroup_manager, require
from stockade.runtime.state import CONFIG_FILE, State
from stockade.spec.resources import check_resources

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_bytes(text: str) -> int:
    """ "64m", "1G", "512kb", "1048576", "-1" (as runc's --memory accepts them)."""
    value = text.strip().lower()
    if value == "-1":
        return -1
    number = value.rstrip("bkmgtp")
    unit = value[len(number) :].rstrip("b") or ""
    if not number.replace(".", "", 1).isdigit() or unit not in _UNITS:
        raise ContainerError(f'invalid size "{text}" (use a number of bytes or a suffix: k, m, g, t, p)')
    return int(float(number) * _UNITS[unit])


def update(root: str, container_id: str, resources: dict[str, Any]) -> None:
    state = State.load(root, container_id)
    require(state, "update")
    check_resources(resources)
    manager = cgroup_manager(state)
    if manager is None:
        raise ContainerError("the container has no cgroup (it runs rootless without delegation)")
    manager.apply(resources)
    _remember(state, resources)


def _remember(state: State, resources: dict[str, Any]) -> None:
    """Merge the new values into the container's saved config, atomically."""
    config = state.config()
    current = config.setdefault("linux", {}).setdefault("resources", {})
    for key, value in resources.items():
        if isinstance(value, dict) and isinstance(current.get(key), dict):
            current[key].update(value)
        else:
            current[key] = value
    path = os.path.join(state.dir, CONFIG_FILE)
    with open(path + ".tmp", "w") as f:
        f.write(jsonfast.dumps(config))
        f.flush()
        os.fsync(f.fileno())
    os.rename(path + ".tmp", path)


def events(root: str, container_id: str, stats_once: bool, interval: float, out: TextIO = sys.stdout) -> None:
    """Print runc-style event lines: a stats event now (and each interval), an oom event each
    time the kernel's OOM killer strikes in the container; ends when the container stops."""
    state = State.load(root, container_id)
    require(state, "events")
    manager = cgroup_manager(state)
    if manager is None:
        raise ContainerError("the container has no cgroup to report on")
    if stats_once:
        _emit(out, {"type": "stats", "id": container_id, "data": manager.stats()})
        return
    ooms = manager.oom_kills()
    next_stats = 0.0
    while state.status() not in ("stopped",):
        now = time.monotonic()
        count = manager.oom_kills()
        for _ in range(count - ooms):
            _emit(out, {"type": "oom", "id": container_id})
        ooms = count
        if now >= next_stats:
            _emit(out, {"type": "stats", "id": container_id, "data": manager.stats()})
            next_stats = now + interval
        time.sleep(min(interval, 0.1))


def _emit(out: TextIO, event: dict[str, Any]) -> None:
    out.write(jsonfast.dumps(event) + "\n")
    out.flush()
