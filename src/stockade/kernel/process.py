"""Process attributes: prctl, hostname, personality, close_range, pidfds."""

from __future__ import annotations

import contextlib
import ctypes
import os

from stockade.kernel.libc import check, libc, syscall

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

PER_LINUX = 0x0000
PER_LINUX32 = 0x0008

CLOSE_RANGE_CLOEXEC = 1 << 2

libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def prctl(option: int, arg2: int = 0, arg3: int = 0, what: str = "prctl") -> int:
    return check(libc.prctl(option, arg2, arg3, 0, 0), what)


def set_name(name: str) -> None:
    """The calling thread's name as ps, top and pgrep show it (comm; at most 15 bytes)."""
    with contextlib.suppress(OSError):
        fd = os.open("/proc/thread-self/comm", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, name.encode()[:15])
        finally:
            os.close(fd)


def set_child_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1, what="prctl(PR_SET_CHILD_SUBREAPER)")


def set_dumpable(on: bool) -> None:
    prctl(PR_SET_DUMPABLE, int(on), what="prctl(PR_SET_DUMPABLE)")


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1, what="prctl(PR_SET_NO_NEW_PRIVS)")


def set_keepcaps(on: bool) -> None:
    prctl(PR_SET_KEEPCAPS, int(on), what="prctl(PR_SET_KEEPCAPS)")


def set_parent_death_signal(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig, what="prctl(PR_SET_PDEATHSIG)")


def sethostname(name: str) -> None:
    raw = name.encode()
    check(libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname", name)


def setdomainname(name: str) -> None:
    raw = name.encode()
    check(libc.setdomainname(raw, ctypes.c_size_t(len(raw))), "setdomainname", name)


def personality(persona: int) -> None:
    check(libc.personality(ctypes.c_ulong(persona)), "personality", hex(persona))


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    check(libc.close_range(ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_int(flags)), "close_range")


def pidfd_open(pid: int) -> int:
    return syscall("pidfd_open", ctypes.c_int(pid), ctypes.c_uint(0), obj=f"pid {pid}")


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    syscall("pidfd_send_signal", ctypes.c_int(pidfd), ctypes.c_int(sig), None, ctypes.c_uint(0), obj=f"signal {sig}")


KEYCTL_JOIN_SESSION_KEYRING = 1


def join_session_keyring(name: str) -> int:
    """Give the calling process a new session keyring called `name` (keyctl(2)); returns its id."""
    return syscall("keyctl", ctypes.c_int(KEYCTL_JOIN_SESSION_KEYRING), name.encode(), obj=name)


def write_proc_file(path: str, value: str) -> None:
    """Write a /proc or /sys file in one write(2), as the kernel expects for map and knob files."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks); None if the process is gone
    or is a zombie. A recorded start time guards every later use of a PID against reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def detach_stdio(keep: int) -> None:
    """A daemon's start: stdio on /dev/null, every other descriptor but `keep` closed."""
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    for fd in map(int, os.listdir("/proc/self/fd")):
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def set_fs_ids(uid: int, gid: int) -> tuple[int, int]:
    """setfsuid/setfsgid: the IDs files are created with and checked against, nothing else.
    Leaving fsuid 0 drops the file capabilities (CAP_MKNOD, CAP_CHOWN, DAC...) from the
    effective set, as the kernel does; the caller raises what it needs again (capset).
    Returns the previous pair."""
    old_gid = int(libc.setfsgid(ctypes.c_uint(gid)))
    old_uid = int(libc.setfsuid(ctypes.c_uint(uid)))
    if int(libc.setfsuid(ctypes.c_uint(uid))) != uid or int(libc.setfsgid(ctypes.c_uint(gid))) != gid:
        libc.setfsuid(ctypes.c_uint(old_uid))
        libc.setfsgid(ctypes.c_uint(old_gid))
        raise OSError(1, f"setfsuid/setfsgid({uid}, {gid}) refused")
    return old_uid, old_gid
