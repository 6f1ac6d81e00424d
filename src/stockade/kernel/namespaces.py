"""Namespaces: unshare(2), setns(2), and the names the OCI spec and /proc/PID/ns use for them."""

from __future__ import annotations

import errno
import os

from stockade.kernel.libc import check, libc

TYPE_CHECKING = False
if TYPE_CHECKING:  # the runtime's start-up path imports this module: no typing imports
    from collections.abc import Callable

CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# OCI namespace type -> (clone flag, name of the file under /proc/PID/ns)
NAMESPACES: dict[str, tuple[int, str]] = {
    "user": (CLONE_NEWUSER, "user"),
    "mount": (CLONE_NEWNS, "mnt"),
    "pid": (CLONE_NEWPID, "pid"),
    "uts": (CLONE_NEWUTS, "uts"),
    "ipc": (CLONE_NEWIPC, "ipc"),
    "network": (CLONE_NEWNET, "net"),
    "cgroup": (CLONE_NEWCGROUP, "cgroup"),
    "time": (CLONE_NEWTIME, "time"),
}


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (pid and time apply to children only)."""
    check(libc.unshare(flags), "unshare", hex(flags))


def setns(fd: int, nstype: int, what: str) -> None:
    """Join the namespace behind `fd`; `what` names it (path or type) in errors."""
    check(libc.setns(fd, nstype), "setns", what)


def ns_inode(pid: int | str, kind: str) -> int:
    """Inode of /proc/PID/ns/KIND: equal inodes mean the same namespace."""
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def write_time_offsets(offsets: dict[str, tuple[int, int]]) -> None:
    """Set a new time namespace's clock offsets; allowed only before any process enters it."""
    lines = "".join(f"{clock} {secs} {nsecs}\n" for clock, (secs, nsecs) in offsets.items())
    fd = os.open("/proc/self/timens_offsets", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, lines.encode())
    except OSError as e:
        raise OSError(e.errno, f"write timens_offsets: {os.strerror(e.errno or 0)}") from None
    finally:
        os.close(fd)


def user_namespace_fd(write_maps: Callable[[int], None]) -> int:
    """An fd for a new user namespace whose ID maps `write_maps(pid)` writes.

    A user namespace lives as long as something refers to it: a short-lived child unshares
    it, the parent writes the maps and opens /proc/CHILD/ns/user, then the child exits. The
    fd is what mount_setattr(MOUNT_ATTR_IDMAP) takes to make an idmapped mount.
    """
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(ready_r)
            os.close(done_w)
            unshare(CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(done_r, 1)
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError(errno.EPERM, "unshare(CLONE_NEWUSER) failed in the helper")
        write_maps(pid)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)
        os.waitpid(pid, 0)


def own_id_map(kind: str = "uid") -> list[tuple[int, int, int]]:
    """This process's /proc/self/uid_map (or gid_map): (inside, outside, count) lines."""
    with open(f"/proc/self/{kind}_map") as f:
        return [(int(a), int(b), int(c)) for a, b, c in (line.split() for line in f if line.strip())]


def in_initial_user_namespace() -> bool:
    """Whether this process sees the whole ID space: the initial user namespace's uid_map."""
    try:
        return own_id_map() == [(0, 0, 4294967295)]
    except OSError:
        return True  # no /proc: nothing suggests a user namespace


def host_root() -> bool:
    """Root of the host: uid 0 in the initial user namespace, the only uid that may set trusted.*
    xattrs, make cgroups and idmapped mounts on the host's filesystems. Root of a rootless
    user namespace may chown within its map and mount overlayfs, not those."""
    return os.geteuid() == 0 and in_initial_user_namespace()
