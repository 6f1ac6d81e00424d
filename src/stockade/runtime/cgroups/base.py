"""What both cgroup drivers share: directories per hierarchy, joining, listing, removal."""

from __future__ import annotations

import contextlib
import errno
import os
import time

from stockade.errors import ContainerError
from stockade.kernel.signals import SIGKILL

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def write(path: str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ContainerError(f"cgroup: open {path}: {os.strerror(e.errno or 0)}") from None
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise ContainerError(f"cgroup: write {value!r} to {path}: {os.strerror(e.errno or 0)}") from None
    finally:
        os.close(fd)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


class Manager:
    """A container's cgroup: `paths` maps hierarchy name -> absolute directory."""

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths

    @classmethod
    def for_path(cls, layout: Any, own: dict[str, str], path: str) -> Manager:
        """The manager for cgroup `path` (absolute, within each hierarchy) on this layout."""
        raise NotImplementedError

    # -- set-up --------------------------------------------------------------------------
    def create(self) -> None:
        made: list[str] = []
        try:
            for path in self.paths.values():
                if not os.path.isdir(path):
                    os.makedirs(path, exist_ok=True)
                    made.append(path)
        except OSError as e:
            for path in reversed(made):
                _rmdir_quiet(path)
            raise ContainerError(f"cgroup: create {e.filename}: {os.strerror(e.errno or 0)}") from None

    def join(self, pid: int) -> None:
        for path in self.paths.values():
            write(os.path.join(path, "cgroup.procs"), str(pid))

    def apply(self, resources: dict | None, devices: list | None = None) -> None:
        raise NotImplementedError

    # -- queries -------------------------------------------------------------------------
    def pids(self) -> list[int]:
        """Every process in the container's cgroup (and below it)."""
        path = self._pid_source()
        found: list[int] = []
        if path is None:
            return found
        for dirpath, _dirs, _files in os.walk(path):
            try:
                found.extend(int(p) for p in read(os.path.join(dirpath, "cgroup.procs")).split())
            except OSError:
                continue
        return found

    def _pid_source(self) -> str | None:
        for name in ("pids", "memory", "freezer", "cpu", "", "systemd"):
            path = self.paths.get(name)
            if path and os.path.isdir(path):
                return path
        return None

    def stats(self) -> dict[str, Any]:
        """runc's `events --stats` data: cpu, memory, pids, blkio."""
        raise NotImplementedError

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer took in this cgroup so far."""
        raise NotImplementedError

    def frozen(self) -> bool:
        raise NotImplementedError

    def freeze(self, on: bool) -> None:
        raise NotImplementedError

    # -- tear-down -----------------------------------------------------------------------
    def kill_all(self, sig: int = SIGKILL) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def destroy(self, timeout: float = 5.0) -> None:
        """Kill what is left and remove every directory. The parent (/stockade by default)
        stays, as Docker's /docker does: removed with the last container, it had to be made
        again (and its cpuset filled) at every next start, and its rmdir raced with a
        concurrent start's mkdir under it."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                break
            if self.frozen():
                self.freeze(False)
            self.kill_all()
            if time.monotonic() > deadline:
                raise ContainerError(f"cgroup: processes {pids[:5]} do not die")
            time.sleep(0.01)
        for path in self.paths.values():
            _remove_tree(path, deadline)


# linux.resources fields neither driver applies yet (issue 4 has the rest of the work).
NOT_APPLIED = {
    "memory": ("kernel", "kernelTCP", "checkBeforeUpdate"),
    "cpu": ("idle",),
    "blockIO": ("leafWeight",),
}
NOT_APPLIED_TOP: tuple[str, ...] = ()


def hugepage_files(resources: dict[str, Any], suffix: str) -> list[tuple[str, int]]:
    """hugepageLimits as (file, limit): pageSize "2MB" -> hugetlb.2MB.<suffix>."""
    return [
        (f"hugetlb.{limit['pageSize']}.{suffix}", int(limit["limit"]))
        for limit in resources.get("hugepageLimits") or []
    ]


def rdma_lines(resources: dict[str, Any]) -> list[str]:
    """linux.resources.rdma as rdma.max lines: "mlx4_0 hca_handle=2 hca_object=2000"."""
    lines = []
    for device, limits in (resources.get("rdma") or {}).items():
        values = (("hca_handle", limits.get("hcaHandles")), ("hca_object", limits.get("hcaObjects")))
        lines.append(f"{device} {' '.join(f'{k}={v}' for k, v in values if v is not None)}")
    return lines


def enable_controllers(leaf: str, controllers: list[str]) -> None:
    """cgroup2: enable `controllers` in cgroup.subtree_control from the mount's root down to
    `leaf`'s parent, so that `leaf` gets their files."""
    chain = []
    directory = os.path.dirname(leaf)
    while True:
        chain.append(directory)
        if os.path.ismount(directory) or directory == "/":
            break
        directory = os.path.dirname(directory)
    for directory in reversed(chain):
        available = read(os.path.join(directory, "cgroup.controllers")).split()
        wanted = " ".join(f"+{c}" for c in controllers if c in available)
        if wanted:
            try:
                write(os.path.join(directory, "cgroup.subtree_control"), wanted)
            except ContainerError:
                pass  # a controller may be busy; the write of its setting says which


def warn_not_applied(resources: dict[str, Any], extra: list[str] | None = None) -> None:
    """Say once, on stderr, which requested limits this runtime does not enforce."""
    import sys

    missing = [key for key in NOT_APPLIED_TOP if resources.get(key)]
    for group, keys in NOT_APPLIED.items():
        section = resources.get(group) or {}
        missing += [f"{group}.{key}" for key in keys if section.get(key) not in (None, False, 0)]
    missing += extra or []
    if missing:
        print(
            f"stockade-runtime: warning: not enforced yet: linux.resources.{', linux.resources.'.join(missing)}",
            file=sys.stderr,
        )


def read_int(path: str, default: int = 0) -> int:
    try:
        text = read(path).strip()
    except OSError:
        return default
    return int(text) if text.lstrip("-").isdigit() else default


def read_keyed(path: str) -> dict[str, int]:
    """A flat "key value" file (memory.stat, cpu.stat, memory.events) as a dict."""
    out: dict[str, int] = {}
    try:
        for line in read(path).splitlines():
            key, _, value = line.partition(" ")
            if value.strip().lstrip("-").isdigit():
                out[key] = int(value)
    except OSError:
        pass
    return out


def _rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _remove_tree(path: str, deadline: float) -> None:
    """rmdir children first; a cgroup directory is removable once its tasks are reaped. (Its
    control files do not count: without child cgroups, one rmdir does, and the walk through
    its ~30 files is spared, ~0.1 ms per hierarchy.)"""
    with contextlib.suppress(OSError):
        os.rmdir(path)
        return
    if not os.path.isdir(path):
        return
    for dirpath, dirs, _files in os.walk(path, topdown=False):
        for d in dirs:
            _rmdir_quiet(os.path.join(dirpath, d))
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise ContainerError(f"cgroup: remove {path}: {os.strerror(e.errno or 0)}") from None
            time.sleep(0.01)
