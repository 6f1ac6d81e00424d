"""cgroup v2 (unified hosts): one directory, controllers enabled down the tree."""

from __future__ import annotations

import os
import time

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


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2..262144) to cpu.weight (1..10000), as runc converts it."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


class V2Manager(Manager):
    @classmethod
    def for_path(cls, layout: Layout, own: dict[str, str], path: str) -> V2Manager:
        assert layout.unified
        return cls({"": os.path.join(layout.unified, path.lstrip("/"))})

    @property
    def path(self) -> str:
        return self.paths[""]

    def create(self) -> None:
        super().create()
        self._enable_controllers()

    def _enable_controllers(self) -> None:
        """Every controller this hierarchy offers, from its root down to our parent."""
        enable_controllers(self.path, ["cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"])

    def apply(self, resources: dict[str, Any] | None, devices: list[Any] | None = None) -> None:
        if not resources:
            return
        warn_not_applied(resources)
        rules = device_rules(resources, devices or [])
        if rules:
            self._attach_device_filter(rules)
        memory = resources.get("memory") or {}
        self._set("memory.max", _max(memory.get("limit")))
        self._set("memory.low", memory.get("reservation"))
        if memory.get("swap") is not None and memory.get("limit") is not None:
            swap = memory["swap"]
            self._set("memory.swap.max", "max" if swap < 0 else max(swap - memory["limit"], 0))
        cpu = resources.get("cpu") or {}
        if cpu.get("shares"):
            self._set("cpu.weight", shares_to_weight(cpu["shares"]))
        if cpu.get("quota") is not None or cpu.get("period") is not None:
            quota = cpu.get("quota")
            self._set("cpu.max", f"{'max' if quota in (None, -1) else quota} {cpu.get('period') or 100000}")
        self._set("cpu.max.burst", cpu.get("burst"))
        if cpu.get("realtimeRuntime") or cpu.get("realtimePeriod"):
            raise ContainerError("linux.resources.cpu.realtimeRuntime: cgroup v2 has no real-time group scheduling")
        for name, limit in hugepage_files(resources, "max"):
            self._set(name, limit)
        for line in rdma_lines(resources):
            self._set("rdma.max", line)
        self._block_io(resources.get("blockIO") or {})
        if resources.get("network"):
            raise ContainerError("linux.resources.network: cgroup v2 has no net_cls/net_prio controllers")
        if memory.get("swappiness") is not None:
            raise ContainerError("linux.resources.memory.swappiness: cgroup v2 has no per-cgroup swappiness")
        self._set("cpuset.cpus", cpu.get("cpus") or None)
        self._set("cpuset.mems", cpu.get("mems") or None)
        pids = resources.get("pids") or {}
        if pids.get("limit") is not None:
            self._set("pids.max", _max(pids["limit"]))
        for key, value in (resources.get("unified") or {}).items():
            if "/" in key or not os.path.exists(os.path.join(self.path, key)):
                raise ContainerError(f'linux.resources.unified: unknown cgroup file "{key}"')
            self._set(key, value)

    def _block_io(self, block: dict[str, Any]) -> None:
        """blockIO on v2: io.weight (or BFQ's io.bfq.weight) and io.max per device."""
        weight_file = "io.bfq.weight" if os.path.exists(os.path.join(self.path, "io.bfq.weight")) else "io.weight"
        if block.get("weight") is not None:
            self._set(weight_file, f"default {block['weight']}")
        for rule in block.get("weightDevice") or []:
            if rule.get("weight") is not None:
                self._set(weight_file, f"{rule['major']}:{rule['minor']} {rule['weight']}")
        limits: dict[str, list[str]] = {}
        for key, name in (
            ("throttleReadBpsDevice", "rbps"),
            ("throttleWriteBpsDevice", "wbps"),
            ("throttleReadIOPSDevice", "riops"),
            ("throttleWriteIOPSDevice", "wiops"),
        ):
            for rule in block.get(key) or []:
                limits.setdefault(f"{rule['major']}:{rule['minor']}", []).append(f"{name}={rule['rate']}")
        for device, values in limits.items():
            self._set("io.max", f"{device} {' '.join(values)}")

    def _attach_device_filter(self, rules: list[dict[str, Any]]) -> None:
        """v2 has no devices.allow: an eBPF program decides each access (BPF_F_ALLOW_MULTI, as
        runc attaches it, so a parent's filter still applies too)."""
        from stockade.kernel import bpf
        from stockade.runtime.cgroups.devicefilter import assemble

        try:
            prog = bpf.load_device_program(assemble(rules))
            try:
                bpf.attach_to_cgroup(prog, self.path)
            finally:
                os.close(prog)
        except OSError as e:
            raise ContainerError(f"cgroup: device filter for {self.path}: {e.strerror or e}") from None

    def _set(self, name: str, value: object) -> None:
        if value is not None:
            write(os.path.join(self.path, name), str(value))

    def stats(self) -> dict[str, Any]:
        cpu = read_keyed(os.path.join(self.path, "cpu.stat"))
        raw = read_keyed(os.path.join(self.path, "memory.stat"))
        memory_max = _read(os.path.join(self.path, "memory.max")).strip()
        pids_max = _read(os.path.join(self.path, "pids.max")).strip()
        return {
            "cpu": {
                "usage": {
                    "total": cpu.get("usage_usec", 0) * 1000,
                    "kernel": cpu.get("system_usec", 0) * 1000,
                    "user": cpu.get("user_usec", 0) * 1000,
                },
                "throttling": {
                    "periods": cpu.get("nr_periods", 0),
                    "throttledPeriods": cpu.get("nr_throttled", 0),
                    "throttledTime": cpu.get("throttled_usec", 0) * 1000,
                },
            },
            "memory": {
                "usage": {
                    "limit": 0 if memory_max in ("max", "") else int(memory_max),
                    "usage": read_int(os.path.join(self.path, "memory.current")),
                    "max": read_int(os.path.join(self.path, "memory.peak")),
                    "failcnt": read_keyed(os.path.join(self.path, "memory.events")).get("max", 0),
                },
                "cache": raw.get("file", 0),
                "raw": raw,
            },
            "pids": {
                "current": read_int(os.path.join(self.path, "pids.current")),
                "limit": 0 if pids_max in ("max", "") else int(pids_max),
            },
            "blkio": {},
        }

    def oom_kills(self) -> int:
        return read_keyed(os.path.join(self.path, "memory.events")).get("oom_kill", 0)

    def frozen(self) -> bool:
        path = os.path.join(self.path, "cgroup.freeze")
        return os.path.exists(path) and read(path).strip() == "1"

    def freeze(self, on: bool) -> None:
        write(os.path.join(self.path, "cgroup.freeze"), "1" if on else "0")
        want = "frozen 1" if on else "frozen 0"
        for _ in range(1000):
            if want in read(os.path.join(self.path, "cgroup.events")):
                return
            time.sleep(0.005)
        raise ContainerError(f"cgroup: {self.path} did not reach {want}")

    def kill_all(self, sig: int = 9) -> None:
        kill = os.path.join(self.path, "cgroup.kill")
        if sig == 9 and os.path.exists(kill):
            write(kill, "1")
        else:
            super().kill_all(sig)


def _read(path: str) -> str:
    try:
        return read(path)
    except OSError:
        return ""


def _max(value: int | None) -> object:
    if value is None:
        return None
    return "max" if value < 0 else value
