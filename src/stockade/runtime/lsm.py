"""AppArmor and SELinux: what to write before exec, and what to say when the host lacks them.

With the LSM enabled, the container's process writes its profile or label to its exec
attribute just before execve, so the new program starts confined. Without it: a requested
AppArmor profile is ignored with a warning (as runc does, since engines ask for one on every
host), a requested SELinux label is an error (as runc's validator does), and an SELinux
mount label is ignored with a warning.
"""

from __future__ import annotations

import os

from stockade.errors import NotSupported


class Host:
    """Where to look for the LSMs (injectable: tests point it at a temporary tree)."""

    def __init__(self, sys_root: str = "/sys", proc_self: str = "/proc/self") -> None:
        self.sys_root = sys_root
        self.proc_self = proc_self

    def apparmor_enabled(self) -> bool:
        try:
            with open(os.path.join(self.sys_root, "module/apparmor/parameters/enabled")) as f:
                return f.read().strip().upper().startswith("Y")
        except OSError:
            return False

    def selinux_enabled(self) -> bool:
        return os.path.exists(os.path.join(self.sys_root, "fs/selinux/enforce"))

    def exec_attr(self, lsm: str) -> str:
        """The per-LSM exec attribute where the kernel has it, else the shared one."""
        specific = os.path.join(self.proc_self, "attr", lsm, "exec")
        return specific if os.path.exists(specific) else os.path.join(self.proc_self, "attr/exec")


class LsmPlan:
    """(path, value) writes to do right before execve, and warnings to print at create."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []
        self.warnings: list[str] = []


def plan_lsm(apparmor_profile: str | None, selinux_label: str | None, mount_label: str | None, host: Host) -> LsmPlan:
    plan = LsmPlan()
    if apparmor_profile:
        if host.apparmor_enabled():
            plan.writes.append((host.exec_attr("apparmor"), f"exec {apparmor_profile}"))
        else:
            plan.warnings.append(
                f'process.apparmorProfile "{apparmor_profile}" ignored: AppArmor is not enabled on this host'
            )
    if selinux_label:
        if not host.selinux_enabled():
            raise NotSupported(f'process.selinuxLabel "{selinux_label}": SELinux is not enabled on this host')
        plan.writes.append((host.exec_attr("selinux"), selinux_label))
    if mount_label and not host.selinux_enabled():
        plan.warnings.append(f'linux.mountLabel "{mount_label}" ignored: SELinux is not enabled on this host')
    return plan


def apply_lsm(plan: LsmPlan) -> None:
    """In the container's process, last before seccomp and execve."""
    for path, value in plan.writes:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
