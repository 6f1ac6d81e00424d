"""The last steps before exec, shared by a container's init and by `exec`, in the kernel's order.

Privileges only ever go down here, and each step needs what the previous one still has:
rlimits and oom_score_adj while we are root; the bounding set while we hold CAP_SETPCAP;
the uid switch with KEEPCAPS so capset can then set exactly the requested sets; ambient caps
after capset (they must be permitted and inheritable); no_new_privs; seccomp last, since
its filter would otherwise police the set-up itself.
"""

from __future__ import annotations

import os
import resource
import sys

from stockade.errors import ContainerError
from stockade.kernel import caps as kcaps
from stockade.kernel.process import set_keepcaps, set_no_new_privs, write_proc_file
from stockade.spec.runtime import Capabilities, Process

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def find_executable(process: Process) -> str:
    """Resolve args[0] against the process's PATH, as execvp would, inside the container."""
    name = process.args[0]
    if "/" in name:
        path = name if name.startswith("/") else os.path.join(process.cwd, name)
        _check_executable(path, name)
        return path
    search = process.env_dict().get("PATH", DEFAULT_PATH)
    for directory in search.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ContainerError(f'exec: "{name}": executable file not found in $PATH')


def _check_executable(path: str, name: str) -> None:
    if not os.path.exists(path):
        raise ContainerError(f'exec: "{name}": no such file or directory')
    if os.path.isdir(path):
        raise ContainerError(f'exec: "{name}": is a directory')


def apply_rlimits(process: Process) -> None:
    for limit in process.rlimits:
        number = getattr(resource, limit.type)
        try:
            resource.setrlimit(number, (limit.soft, limit.hard))
        except (ValueError, OSError):
            current = resource.getrlimit(number)[1]
            raise ContainerError(
                f"setrlimit {limit.type} (soft {limit.soft}, hard {limit.hard}): EPERM: above the current hard "
                f"limit {'unlimited' if current == resource.RLIM_INFINITY else current}, and raising it needs CAP_SYS_RESOURCE"
            ) from None


def apply_oom_score_adj(process: Process) -> None:
    if process.oom_score_adj is None:
        return
    try:
        write_proc_file("/proc/self/oom_score_adj", str(process.oom_score_adj))
    except OSError as e:
        raise ContainerError(
            f"set oom_score_adj {process.oom_score_adj}: {os.strerror(e.errno or 0)} (lowering it needs CAP_SYS_RESOURCE)"
        ) from None


def chdir_cwd(process: Process) -> None:
    try:
        os.chdir(process.cwd)
    except FileNotFoundError:
        raise ContainerError(f"process.cwd: {process.cwd} does not exist in the container") from None
    except NotADirectoryError:
        raise ContainerError(f"process.cwd: {process.cwd} is not a directory") from None
    except PermissionError:
        pass  # may become reachable as the container user; retried after the switch


class CapabilitySets:
    """The five sets as bit masks, restricted to what the running kernel knows."""

    __slots__ = ("ambient", "bounding", "effective", "inheritable", "permitted", "top")
    bounding: int
    effective: int
    permitted: int
    inheritable: int
    ambient: int

    def __init__(self, caps: Capabilities | None) -> None:
        self.top = kcaps.last_cap()
        for name in ("bounding", "effective", "permitted", "inheritable", "ambient"):
            numbers = []
            for cap in caps.get(name) if caps else []:
                number = kcaps.CAP_NUMBERS[cap]
                if number > self.top:
                    print(f"stockade-runtime: warning: {cap} is unknown to this kernel, skipped", file=sys.stderr)
                    continue
                numbers.append(number)
            setattr(self, name, kcaps.mask(numbers))


def switch_user(process: Process, capabilities: CapabilitySets) -> None:
    user = process.user
    try:
        kcaps.drop_bounding_except(capabilities.bounding, capabilities.top)
        set_keepcaps(True)
        if user.additional_gids or _setgroups_allowed():
            os.setgroups(user.additional_gids)
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
        set_keepcaps(False)
        kcaps.capset(capabilities.effective, capabilities.permitted, capabilities.inheritable)
        # The kernel keeps ambient within permitted & inheritable; runc skips the rest (with a
        # warning it logs), and configs written for runc (its `spec`) rely on that.
        kcaps.set_ambient(capabilities.ambient & capabilities.permitted & capabilities.inheritable, capabilities.top)
    except OSError as e:
        raise ContainerError(f"set user {user.uid}:{user.gid} and capabilities: {e.strerror or e}") from None
    if user.umask is not None:
        os.umask(user.umask)
    if os.getcwd() != process.cwd:
        chdir_cwd(process)


def _setgroups_allowed() -> bool:
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() == "allow"
    except FileNotFoundError:
        return True


def drop_privileges(process: Process, load_seccomp: Callable[[], None] | None = None) -> None:
    """The uid switch, capabilities, no_new_privs and the seccomp filter.

    With no_new_privs the filter is loaded last, right before execve, so it never polices our
    own set-up. Without it the kernel lets only a CAP_SYS_ADMIN holder load a filter, so it
    is loaded first, while we still hold that (the filter must then allow setresuid, capset
    and prctl; every profile that allows execve does)."""
    if load_seccomp is not None and not process.no_new_privileges:
        load_seccomp()
    switch_user(process, CapabilitySets(process.capabilities))
    if process.no_new_privileges:
        set_no_new_privs()
        if load_seccomp is not None:
            load_seccomp()


def process_env(process: Process) -> dict[str, str]:
    env = process.env_dict()
    env.setdefault("PATH", DEFAULT_PATH)
    if process.terminal:
        env.setdefault("TERM", "xterm")
    env.setdefault("HOME", "/root" if process.user.uid == 0 else "/")
    return env
