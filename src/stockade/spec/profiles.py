"""The default seccomp profile (package data) rendered into an OCI linux.seccomp. Pure.

The profile's rules may be conditional: `ifCaps` (kept only if the container holds every
listed capability in its bounding set), `unlessCaps` (dropped if it holds any), `ifArch`
(kept only on these machine architectures, as `uname -m` names them). The engine renders it
for every container that does not ask for another profile.
"""

from __future__ import annotations

import os

from stockade import jsonfast

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_PROFILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "seccomp-default.json")

ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "riscv64": ["SCMP_ARCH_RISCV64"],
    "ppc64le": ["SCMP_ARCH_PPC64LE"],
    "s390x": ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
}

# Docker's default capability set, which the engine grants unless told otherwise.
DOCKER_DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip


def load_profile(path: str = DEFAULT_PROFILE) -> dict[str, Any]:
    with open(path, "rb") as f:
        data: dict[str, Any] = jsonfast.loads(f.read())
    return data


def render(profile: dict[str, Any], capabilities: list[str], machine: str | None = None) -> dict[str, Any]:
    """The OCI linux.seccomp object for a container with these (bounding) capabilities."""
    machine = machine or os.uname().machine
    caps = set(capabilities)
    syscalls = []
    for rule in profile["rules"]:
        if "ifCaps" in rule and not caps.issuperset(rule["ifCaps"]):
            continue
        if "unlessCaps" in rule and caps.intersection(rule["unlessCaps"]):
            continue
        if "ifArch" in rule and machine not in rule["ifArch"]:
            continue
        entry = {"names": list(rule["names"]), "action": rule["action"]}
        for key in ("args", "errnoRet"):
            if key in rule:
                entry[key] = rule[key]
        syscalls.append(entry)
    return {
        "defaultAction": profile["defaultAction"],
        "defaultErrnoRet": profile.get("defaultErrnoRet", 1),
        "architectures": ARCHITECTURES.get(machine, []),
        "syscalls": syscalls,
    }


def default_seccomp(capabilities: list[str], machine: str | None = None) -> dict[str, Any]:
    return render(load_profile(), capabilities, machine)


def with_mknod_mediation(seccomp: dict[str, Any], listener_path: str) -> dict[str, Any]:
    """The profile with mknod/mknodat sent to a mediator (stockade.runtime.mediation) instead
    of being allowed, so that unprivileged containers can create harmless device nodes."""
    trapped = {"mknod", "mknodat"}
    syscalls = []
    for rule in seccomp.get("syscalls", []):
        names = [n for n in rule["names"] if n not in trapped]
        if names:
            syscalls.append({**rule, "names": names})
    syscalls.append({"names": sorted(trapped), "action": "SCMP_ACT_NOTIFY"})
    return {**seccomp, "syscalls": syscalls, "listenerPath": listener_path}
