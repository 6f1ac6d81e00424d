"""Seccomp (and LSM checks) for a container.

The filter is compiled by the runtime before it forks (`prepare_seccomp`): every error in
linux.seccomp surfaces before anything is made, and the children only load it (seccomp_load,
or seccomp(2) with a program compiled for an earlier container and cached).
When a rule uses SCMP_ACT_NOTIFY, the runtime also connects to listenerPath before forking;
after loading, the container's process sends the notify fd there with the container process
state (SCM_RIGHTS), as the runtime spec describes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys

from stockade import jsonfast
from stockade.errors import ContainerError
from stockade.runtime.lsm import Host, LsmPlan, plan_lsm
from stockade.spec.runtime import Config
from stockade.spec.seccomp import SeccompPlan, plan_seccomp

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# The native architecture's companion ABIs are always in the filter: without them a 32-bit
# (int 0x80) or x32 syscall would bypass rules written for the 64-bit numbers.
COMPANION_ARCHS = {"x86_64": ("x86_64", "x86", "x32"), "aarch64": ("aarch64", "arm")}

_OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}


def prepare_lsm(config: Config, host: Host | None = None) -> LsmPlan:
    """The AppArmor/SELinux writes the container's process does before exec; prints the
    warnings for what this host cannot apply, raises for what must not be ignored."""
    process = config.process
    plan = plan_lsm(
        process.apparmor_profile if process else None,
        process.selinux_label if process else None,
        config.linux.mount_label,
        host or Host(),
    )
    for warning in plan.warnings:
        print(f"stockade-runtime: warning: {warning}", file=sys.stderr)
    plan.warnings = []
    return plan


class Seccomp:
    """A compiled filter, ready to load in the container's process."""

    def __init__(
        self, plan: SeccompPlan, seccomp_filter: Any, listener: int | None, program: bytes | None = None, flags: int = 0
    ) -> None:
        self.plan = plan
        self.filter = seccomp_filter  # a libseccomp context, or None with a cached `program`
        self.listener = listener
        self.program = program
        self.flags = flags

    def load(self, state: dict[str, Any]) -> None:
        try:
            if self.program is not None:
                from stockade.kernel.seccomp import load_program

                load_program(self.program, self.flags)
            else:
                self.filter.load()
        except OSError as e:
            raise ContainerError(f"load seccomp filter: {os.strerror(e.errno or 0)}") from None
        if self.listener is not None:
            self._send_notify_fd(state)

    def _send_notify_fd(self, state: dict[str, Any]) -> None:
        import socket

        notify_fd = self.filter.notify_fd()
        message = {
            "ociVersion": state.get("ociVersion", "1.2.0"),
            "fds": ["seccompFd"],
            "pid": os.getpid() if state.get("pid") is None else state["pid"],
            "metadata": self.plan.listener_metadata,
            "state": state,
        }
        sock = socket.socket(fileno=self.listener)
        try:
            socket.send_fds(sock, [jsonfast.dumps(message).encode()], [notify_fd])
        except OSError as e:
            raise ContainerError(
                f"send seccomp notify fd to {self.plan.listener_path}: {os.strerror(e.errno or 0)}"
            ) from None
        finally:
            sock.close()
            os.close(notify_fd)

    def release(self) -> None:
        if self.filter is not None:
            self.filter.release()
        if self.listener is not None:
            os.close(self.listener)
            self.listener = None


SECCOMP_CACHE = ".seccomp-cache"  # under the runtime's state root
# linux.seccomp.flags that seccomp(2) takes as they are: a cached program can carry them.
_CACHEABLE_FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": 1, "SECCOMP_FILTER_FLAG_LOG": 2, "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4}


def prepare_seccomp(config: Config, cache_dir: str | None = None) -> Seccomp | None:
    """Validate and compile linux.seccomp; connect to the notify listener if one is used.

    With `cache_dir`, a filter without notify rules is compiled once per profile: the BPF
    program libseccomp generates is kept there under a hash of the profile, the native
    architecture and libseccomp's version, and later containers load it with seccomp(2)
    directly (libseccomp costs ~10 ms to build the rules and again to generate the program)."""
    if config.linux.seccomp is None:
        return None
    plan = plan_seccomp(config.linux.seccomp)
    if cache_dir is not None and not plan.uses_notify() and set(plan.flags) <= set(_CACHEABLE_FLAGS):
        flags = sum(_CACHEABLE_FLAGS[f] for f in set(plan.flags))
        return Seccomp(plan, None, None, _cached_program(plan, config.linux.seccomp, cache_dir), flags)
    seccomp_filter = compile_filter(plan)
    listener = None
    if plan.uses_notify():
        listener = _connect_listener(plan.listener_path or "")
    return Seccomp(plan, seccomp_filter, listener)


def _cached_program(plan: SeccompPlan, profile: Any, cache_dir: str) -> bytes:
    from stockade.kernel import seccomp as ks
    from stockade.spec.image import sha256_digest

    # ("tree": programs cached before _prefer_binary_tree are not reused.)
    key = sha256_digest(f"{os.uname().machine} {ks.library_version()} tree {profile!r}".encode())[7:47]
    path = os.path.join(cache_dir, key)
    try:
        with open(path, "rb") as f:
            program = f.read()
        if program and len(program) % 8 == 0:
            return program
    except OSError:
        pass
    seccomp_filter = compile_filter(plan)
    try:
        program = seccomp_filter.export_bpf()
    except OSError as e:
        raise ContainerError(f"linux.seccomp: export the compiled filter: {e.strerror}") from None
    finally:
        seccomp_filter.release()
    try:  # best effort: a cache that can't be written only costs the next container the compile
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(program)
        os.replace(tmp, path)
    except OSError:
        pass
    return program


def _connect_listener(path: str) -> int:
    from stockade.kernel import unixsock

    try:
        return unixsock.connect(path)
    except OSError as e:
        raise ContainerError(f"linux.seccomp.listenerPath: connect to {path}: {os.strerror(e.errno or 0)}") from None


def action_value(name: str, errno_ret: int | None) -> int:
    from stockade.kernel import seccomp as ks

    if name == "SCMP_ACT_ERRNO":
        return ks.act_errno(errno.EPERM if errno_ret is None else errno_ret)
    if name == "SCMP_ACT_TRACE":
        return ks.act_trace(errno.EPERM if errno_ret is None else errno_ret)
    return {
        "SCMP_ACT_KILL": ks.SCMP_ACT_KILL_THREAD,
        "SCMP_ACT_KILL_THREAD": ks.SCMP_ACT_KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS": ks.SCMP_ACT_KILL_PROCESS,
        "SCMP_ACT_TRAP": ks.SCMP_ACT_TRAP,
        "SCMP_ACT_ALLOW": ks.SCMP_ACT_ALLOW,
        "SCMP_ACT_LOG": ks.SCMP_ACT_LOG,
        "SCMP_ACT_NOTIFY": ks.SCMP_ACT_NOTIFY,
    }[name]


def compile_filter(plan: SeccompPlan) -> Any:
    from stockade.kernel import seccomp as ks

    default = action_value(plan.default_action, plan.default_errno)
    try:
        seccomp_filter = ks.Filter(default)
    except OSError as e:
        raise ContainerError(f"linux.seccomp: {e.strerror}") from None
    try:
        seccomp_filter.set_attr(ks.SCMP_FLTATR_CTL_NNP, 0, "seccomp: leave no_new_privs to the runtime")
        _prefer_binary_tree(seccomp_filter)
        _add_architectures(seccomp_filter, plan)
        _set_flags(seccomp_filter, plan)
        for rule in plan.rules:
            _add_rule(seccomp_filter, rule, default)
    except BaseException:
        seccomp_filter.release()
        raise
    return seccomp_filter


def _add_architectures(seccomp_filter: Any, plan: SeccompPlan) -> None:
    from stockade.kernel import seccomp as ks

    names = [a[len("SCMP_ARCH_") :].lower() for a in plan.architectures]
    native = os.uname().machine
    if not names or native in names:
        names += [n for n in COMPANION_ARCHS.get(native, ()) if n not in names]
    for name in names:
        token = ks.resolve_arch(name)
        if token == 0:
            raise ContainerError(f'linux.seccomp.architectures: libseccomp does not know "{name}"')
        seccomp_filter.add_arch(token, name)


def _set_flags(seccomp_filter: Any, plan: SeccompPlan) -> None:
    from stockade.kernel import seccomp as ks

    attrs = {
        "SECCOMP_FILTER_FLAG_TSYNC": ks.SCMP_FLTATR_CTL_TSYNC,
        "SECCOMP_FILTER_FLAG_LOG": ks.SCMP_FLTATR_CTL_LOG,
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW": ks.SCMP_FLTATR_CTL_SSB,
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": ks.SCMP_FLTATR_CTL_WAITKILL,
    }
    for flag in plan.flags:
        try:
            seccomp_filter.set_attr(attrs[flag], 1, flag)
        except OSError:
            print(f"stockade-runtime: warning: {flag} is not supported by this libseccomp, ignored", file=sys.stderr)


def _prefer_binary_tree(seccomp_filter: Any) -> None:
    """Rules as a binary search tree on the syscall number rather than libseccomp's default
    list. Same verdicts; but the kernel, when it attaches a filter, runs it for every syscall
    number to find those it always allows (its action cache), and a list of ~300 syscalls costs
    that ~0.9 ms at each container's start, a tree ~0.3 (measured here with Docker's default
    profile); each syscall in the container is checked in ~9 comparisons instead of up to 300.
    An older libseccomp without the option builds the list."""
    from stockade.kernel import seccomp as ks

    with contextlib.suppress(OSError):
        seccomp_filter.set_attr(ks.SCMP_FLTATR_CTL_OPTIMIZE, 2, "seccomp: binary tree")


def _add_rule(seccomp_filter: Any, rule: Any, default: int) -> None:
    from stockade.kernel import seccomp as ks

    action = action_value(rule.action, rule.errno_ret)
    if action == default:
        return  # libseccomp refuses a rule that repeats the default action; it changes nothing
    args = [(a.index, _OPERATORS[a.op], a.value, a.value_two) for a in rule.args]
    # libseccomp takes one comparison per argument in a rule; several on the same argument
    # mean "any of them" in OCI profiles, so each becomes a rule of its own (as runc does).
    indexes = [a[0] for a in args]
    groups = [[a] for a in args] if len(set(indexes)) != len(indexes) else [args]
    for name in rule.names:
        number = ks.resolve_syscall(name)
        if number == ks.NR_SCMP_ERROR:
            continue  # unknown to this libseccomp/arch: skipped, as runc does
        for group in groups:
            try:
                seccomp_filter.add_rule(action, number, group, name)
            except OSError as e:
                raise ContainerError(f"{rule.where}: add rule for {name}: {e.strerror}") from None
