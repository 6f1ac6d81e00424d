"""The default config.json that `stockade-runtime spec` writes (runc's, with a user namespace
option and stockade's safe defaults). Pure data."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]

MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi", "/sys/devices/virtual/powercap",
]  # fmt: skip
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def default_config(rootless: bool = False, args: list[str] | None = None, terminal: bool = True) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
    ]
    namespaces = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")]
    linux: dict[str, Any] = {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": namespaces,
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if rootless:
        namespaces.append({"type": "user"})
        linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
        linux.pop("resources")
        mounts = [m for m in mounts if m["type"] != "cgroup"]
        for m in mounts:
            if m["type"] == "devpts":
                m["options"] = [o for o in m["options"] if not o.startswith("gid=")]
    return {
        "ociVersion": "1.2.0",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args or ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {name: list(DEFAULT_CAPS) for name in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "stockade",
        "mounts": mounts,
        "linux": linux,
    }


def apply_secure_defaults(config: dict[str, Any], host_id: int, size: int = 65536) -> dict[str, Any]:
    """What every container gets unless someone asks, by name, for less: its own user
    namespace (root inside is `host_id` outside), Docker's default capabilities, the default
    seccomp profile, no_new_privs, masked and read-only /proc paths, a pids limit."""
    from stockade.spec.profiles import DOCKER_DEFAULT_CAPS, default_seccomp

    linux = config.setdefault("linux", {})
    namespaces = linux.setdefault("namespaces", [])
    if not any(ns.get("type") == "user" for ns in namespaces):
        namespaces.append({"type": "user"})
    linux["uidMappings"] = [{"containerID": 0, "hostID": host_id, "size": size}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": host_id, "size": size}]
    caps = list(DOCKER_DEFAULT_CAPS)
    process = config.setdefault("process", {})
    process["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
    process["noNewPrivileges"] = True
    linux["seccomp"] = default_seccomp(caps)
    linux.setdefault("maskedPaths", list(MASKED_PATHS))
    linux.setdefault("readonlyPaths", list(READONLY_PATHS))
    resources = linux.setdefault("resources", {})
    resources.setdefault("pids", {"limit": 2048})
    resources.setdefault("devices", [{"allow": False, "access": "rwm"}])
    return config
