"""cgroup v1 (legacy and hybrid hosts): one directory per controller hierarchy."""

from __future__ import annotations

import os

from stockade.errors import ContainerError
from stockade.runtime.cgroups import Layout
from stockade.runtime.cgroups.base import (
    Manager,
    enable_controllers,
    hugepage_files,
    rdma_lines,
    read,
    read_int,
    read_keyed,
    warn_not_applied,
    write,
)
from stockade.runtime.cgroups.devices import device_rules

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def device_rule(rule: dict[str, Any]) -> str:
    """An OCI device rule as a devices.allow/deny line: "c 1:3 rwm"."""
    kind = rule.get("type") or "a"
    major = rule.get("major")
    minor = rule.get("minor")
    access = rule.get("access") or "rwm"
    return f"{kind} {'*' if major in (None, -1) else major}:{'*' if minor in (None, -1) else minor} {access}"


class V1Manager(Manager):
    @classmethod
    def for_path(cls, layout: Layout, own: dict[str, str], path: str) -> V1Manager:
        paths = {name: os.path.join(mount, path.lstrip("/")) for name, mount in layout.v1.items()}
        if layout.unified:
            # Hybrid: the cgroup2 hierarchy holds the controllers no v1 hierarchy took.
            paths[""] = os.path.join(layout.unified, path.lstrip("/"))
        return cls(paths)

    def create(self) -> None:
        cpuset = self.paths.get("cpuset")
        missing = cpuset is not None and not os.path.isdir(cpuset)
        super().create()
        if missing and cpuset:
            _inherit_cpuset(cpuset)

    def apply(self, resources: dict[str, Any] | None, devices: list[Any] | None = None) -> None:
        if not resources:
            return
        if resources.get("unified"):
            raise ContainerError("linux.resources.unified: needs cgroup v2, this host's controllers are on cgroup v1")
        memory = resources.get("memory") or {}
        self._set("memory", "memory.limit_in_bytes", memory.get("limit"))
        self._set("memory", "memory.soft_limit_in_bytes", memory.get("reservation"))
        skipped = []
        if memory.get("swap") is not None:
            if os.path.exists(self._file("memory", "memory.memsw.limit_in_bytes")):
                self._set("memory", "memory.memsw.limit_in_bytes", memory.get("swap"))
            else:
                skipped.append("memory.swap (this kernel has no swap accounting)")
        warn_not_applied(resources, skipped)
        if memory.get("disableOOMKiller"):
            self._set("memory", "memory.oom_control", 1)
        self._set("memory", "memory.swappiness", memory.get("swappiness"))
        if memory.get("useHierarchy") is not None:
            self._set("memory", "memory.use_hierarchy", int(bool(memory["useHierarchy"])))
        cpu = resources.get("cpu") or {}
        self._set("cpu", "cpu.shares", cpu.get("shares"))
        self._set("cpu", "cpu.cfs_period_us", cpu.get("period"))
        self._set("cpu", "cpu.cfs_quota_us", cpu.get("quota"))
        self._set("cpu", "cpu.cfs_burst_us", cpu.get("burst"))
        self._set("cpu", "cpu.rt_period_us", cpu.get("realtimePeriod"))
        self._set("cpu", "cpu.rt_runtime_us", cpu.get("realtimeRuntime"))
        self._set("cpuset", "cpuset.cpus", cpu.get("cpus") or None)
        self._set("cpuset", "cpuset.mems", cpu.get("mems") or None)
        pids = resources.get("pids") or {}
        limit = pids.get("limit")
        if limit is not None:
            self._set("pids", "pids.max", "max" if limit <= 0 else limit)
        self._hugepages(resources)
        network = resources.get("network") or {}
        self._set("net_cls", "net_cls.classid", network.get("classID"))
        for priority in network.get("priorities") or []:
            self._set("net_prio", "net_prio.ifpriomap", f"{priority['name']} {priority['priority']}")
        for line in rdma_lines(resources):
            self._set("rdma", "rdma.max", line)
        block = resources.get("blockIO") or {}
        for key, name in (
            ("throttleReadBpsDevice", "blkio.throttle.read_bps_device"),
            ("throttleWriteBpsDevice", "blkio.throttle.write_bps_device"),
            ("throttleReadIOPSDevice", "blkio.throttle.read_iops_device"),
            ("throttleWriteIOPSDevice", "blkio.throttle.write_iops_device"),
        ):
            for rule in block.get(key) or []:
                self._set("blkio", name, f"{rule['major']}:{rule['minor']} {rule['rate']}")
        for rule in block.get("weightDevice") or []:
            if rule.get("weight") is not None:
                self._set("blkio", "blkio.weight_device", f"{rule['major']}:{rule['minor']} {rule['weight']}")
        if block.get("weight") is not None:
            weight_file = "blkio.weight" if os.path.exists(self._file("blkio", "blkio.weight")) else "blkio.bfq.weight"
            self._set("blkio", weight_file, block["weight"])
        for rule in device_rules(resources, devices or []):
            name = "devices.allow" if rule.get("allow") else "devices.deny"
            self._set("devices", name, device_rule(rule))

    def _hugepages(self, resources: dict[str, Any]) -> None:
        """hugetlb on its v1 hierarchy, or (hybrid hosts) on the cgroup2 one where it lives."""
        files = hugepage_files(resources, "limit_in_bytes" if "hugetlb" in self.paths else "max")
        if not files:
            return
        if "hugetlb" not in self.paths:
            unified = self.paths.get("")
            if not unified:
                raise ContainerError("linux.resources.hugepageLimits: no hugetlb controller on this host")
            enable_controllers(unified, ["hugetlb"])
            for name, limit in files:
                write(os.path.join(unified, name), str(limit))
            return
        for name, limit in files:
            self._set("hugetlb", name, limit)

    def _file(self, controller: str, name: str) -> str:
        return os.path.join(self.paths.get(controller, ""), name)

    def _set(self, controller: str, name: str, value: object) -> None:
        if value is None:
            return
        if controller not in self.paths:
            raise ContainerError(f"cgroup: the {controller} controller is not mounted on this host")
        write(self._file(controller, name), str(value))

    def stats(self) -> dict[str, Any]:
        cpu = self.paths.get("cpuacct", "")
        percpu = [int(x) for x in _read_or(os.path.join(cpu, "cpuacct.usage_percpu")).split()]
        ticks = read_keyed(os.path.join(cpu, "cpuacct.stat"))
        tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        throttle = read_keyed(os.path.join(self.paths.get("cpu", ""), "cpu.stat"))
        mem = self.paths.get("memory", "")
        raw = read_keyed(os.path.join(mem, "memory.stat"))
        pids = self.paths.get("pids", "")
        pids_max = _read_or(os.path.join(pids, "pids.max")).strip()
        return {
            "cpu": {
                "usage": {
                    "total": read_int(os.path.join(cpu, "cpuacct.usage")),
                    "percpu": percpu,
                    "kernel": ticks.get("system", 0) * tick_ns,
                    "user": ticks.get("user", 0) * tick_ns,
                },
                "throttling": {
                    "periods": throttle.get("nr_periods", 0),
                    "throttledPeriods": throttle.get("nr_throttled", 0),
                    "throttledTime": throttle.get("throttled_time", 0),
                },
            },
            "memory": {
                "usage": {
                    "limit": read_int(os.path.join(mem, "memory.limit_in_bytes")),
                    "usage": read_int(os.path.join(mem, "memory.usage_in_bytes")),
                    "max": read_int(os.path.join(mem, "memory.max_usage_in_bytes")),
                    "failcnt": read_int(os.path.join(mem, "memory.failcnt")),
                },
                "cache": raw.get("cache", 0),
                "raw": raw,
            },
            "pids": {
                "current": read_int(os.path.join(pids, "pids.current")),
                "limit": 0 if pids_max == "max" else read_int(os.path.join(pids, "pids.max")),
            },
            "blkio": {
                "ioServiceBytesRecursive": _blkio_entries(
                    os.path.join(self.paths.get("blkio", ""), "blkio.throttle.io_service_bytes")
                )
            },
        }

    def oom_kills(self) -> int:
        return read_keyed(os.path.join(self.paths.get("memory", ""), "memory.oom_control")).get("oom_kill", 0)

    def frozen(self) -> bool:
        path = self.paths.get("freezer")
        if not path or not os.path.isdir(path):
            return False
        return read(os.path.join(path, "freezer.state")).strip() == "FROZEN"

    def freeze(self, on: bool) -> None:
        import time

        path = self.paths.get("freezer")
        if not path:
            raise ContainerError("cgroup: the freezer controller is not mounted on this host")
        want = "FROZEN" if on else "THAWED"
        for _ in range(1000):
            write(os.path.join(path, "freezer.state"), want)
            if read(os.path.join(path, "freezer.state")).strip() == want:
                return
            time.sleep(0.005)
        raise ContainerError(f"cgroup: {path} did not reach {want}")


def _read_or(path: str, default: str = "") -> str:
    try:
        return read(path)
    except OSError:
        return default


def _blkio_entries(path: str) -> list[dict[str, Any]]:
    entries = []
    for line in _read_or(path).splitlines():
        parts = line.split()
        if len(parts) == 3 and ":" in parts[0]:
            major, _, minor = parts[0].partition(":")
            entries.append({"major": int(major), "minor": int(minor), "op": parts[1], "value": int(parts[2])})
    return entries


def _inherit_cpuset(path: str) -> None:
    """A new v1 cpuset starts with empty cpus/mems and refuses tasks: copy them down from the
    nearest ancestor that has them, into every level we may have just created. (Both are
    checked: a parent another start is filling in may have its cpus and not yet its mems.)"""
    chain = []
    cur = path
    while not all(read(os.path.join(cur, name)).strip() for name in ("cpuset.cpus", "cpuset.mems")):
        chain.append(cur)
        cur = os.path.dirname(cur)
    for directory in reversed(chain):
        parent = os.path.dirname(directory)
        for name in ("cpuset.cpus", "cpuset.mems"):
            write(os.path.join(directory, name), read(os.path.join(parent, name)).strip())
