"""The device allowlist a container's cgroup gets (pure planning, shared by v1 and v2).

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

Like runc, the rules of linux.resources.devices come first, then allow rules for the
devices every container gets (null, zero, full, random, urandom, tty, ptmx and the pty
slaves) and for each node listed in linux.devices, so that a deny-all rule still leaves a
working /dev.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_ALLOWED = (
    ("c", 1, 3), ("c", 1, 5), ("c", 1, 7), ("c", 1, 8), ("c", 1, 9),  # null zero full random urandom
    ("c", 5, 0), ("c", 5, 1), ("c", 5, 2),  # tty console ptmx
    ("c", 136, None),  # /dev/pts/*
)  # fmt: skip


def device_rules(resources: dict[str, Any] | None, devices: list[Any]) -> list[dict[str, Any]]:
    rules = list((resources or {}).get("devices") or [])
    if not rules:
        return []
    for kind, major, minor in DEFAULT_ALLOWED:
        rules.append({"allow": True, "type": kind, "major": major, "minor": minor, "access": "rwm"})
    for device in devices:
        if device.type in ("c", "b", "u"):
            kind = "c" if device.type == "u" else device.type
            rules.append({"allow": True, "type": kind, "major": device.major, "minor": device.minor, "access": "rwm"})
    return rules
