"""Mounts: mount(2), umount2(2), pivot_root(2), the new mount API, and in-root path resolution."""

from __future__ import annotations

import ctypes
import os

from stockade.kernel.libc import check, cstr, libc, syscall

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MS_LAZYTIME = 0x2000000

PROPAGATION_FLAGS = MS_SHARED | MS_SLAVE | MS_PRIVATE | MS_UNBINDABLE

MNT_FORCE = 1
MNT_DETACH = 2

# openat2 resolve flags
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

# open_tree / move_mount / mount_setattr
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_IDMAP = 0x100000

O_PATH = 0o10000000


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(2); errors name the target."""
    ret = libc.mount(cstr(source), cstr(target), cstr(fstype), ctypes.c_ulong(flags), cstr(data))
    check(ret, "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    check(libc.umount2(cstr(target), flags), "umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    syscall("pivot_root", cstr(new_root), cstr(put_old), obj=new_root)


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): open `path` relative to `dirfd` under the given RESOLVE_* rules."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return syscall(
        "openat2", ctypes.c_int(dirfd), cstr(path), ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)), obj=path
    )


def open_tree(dirfd: int, path: str, flags: int) -> int:
    return syscall("open_tree", ctypes.c_int(dirfd), cstr(path), ctypes.c_uint(flags), obj=path)


def move_mount(from_fd: int, from_path: str, to_fd: int, to_path: str, flags: int) -> None:
    syscall(
        "move_mount",
        ctypes.c_int(from_fd),
        cstr(from_path),
        ctypes.c_int(to_fd),
        cstr(to_path),
        ctypes.c_uint(flags),
        obj=to_path,
    )


def mount_setattr(dirfd: int, path: str, flags: int, attr_set: int, attr_clr: int = 0, userns_fd: int = 0) -> None:
    attr = _MountAttr(attr_set, attr_clr, 0, userns_fd)
    syscall(
        "mount_setattr",
        ctypes.c_int(dirfd),
        cstr(path),
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
        obj=path,
    )


_ST_TO_MS = (
    (os.ST_RDONLY, MS_RDONLY),
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)


def locked_flags(path: str) -> int:
    """The mount flags a bind remount must repeat: in a user namespace the kernel locks
    nosuid/nodev/noexec/atime flags inherited from a more privileged mount, and a remount
    that would clear one fails with EPERM."""
    st = os.statvfs(path)
    flags = 0
    for st_flag, ms_flag in _ST_TO_MS:
        if st.f_flag & st_flag:
            flags |= ms_flag
    return flags & ~MS_RDONLY


# The new mount API: fsopen/fsconfig/fsmount. Overlayfs takes its layers one by one
# ("lowerdir+", 6.8+) and as file descriptors (6.13+), so neither the 4 KiB option-page
# limit nor attached intermediate mounts (idmapped layers) get in the way.
FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6


def fsopen(fstype: str) -> int:
    return syscall("fsopen", cstr(fstype), ctypes.c_uint(FSOPEN_CLOEXEC), obj=fstype)


def fsconfig_string(fs_fd: int, key: str, value: str) -> None:
    syscall(
        "fsconfig",
        ctypes.c_int(fs_fd),
        ctypes.c_uint(FSCONFIG_SET_STRING),
        cstr(key),
        cstr(value),
        ctypes.c_int(0),
        obj=f"{key}={value}",
    )


def fsconfig_flag(fs_fd: int, key: str) -> None:
    syscall(
        "fsconfig", ctypes.c_int(fs_fd), ctypes.c_uint(FSCONFIG_SET_FLAG), cstr(key), None, ctypes.c_int(0), obj=key
    )


def fsconfig_fd(fs_fd: int, key: str, fd: int) -> None:
    syscall("fsconfig", ctypes.c_int(fs_fd), ctypes.c_uint(FSCONFIG_SET_FD), cstr(key), None, ctypes.c_int(fd), obj=key)


def fsconfig_create(fs_fd: int, what: str) -> None:
    syscall("fsconfig", ctypes.c_int(fs_fd), ctypes.c_uint(FSCONFIG_CMD_CREATE), None, None, ctypes.c_int(0), obj=what)


def fsmount(fs_fd: int, attr_flags: int = 0) -> int:
    return syscall(
        "fsmount", ctypes.c_int(fs_fd), ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attr_flags), obj="fsmount"
    )


def fs_error_log(fs_fd: int) -> str:
    """The messages the filesystem left on its fs context (read until empty); '' if none."""
    lines = []
    while True:
        try:
            data = os.read(fs_fd, 4096)
        except OSError:
            break
        if not data:
            break
        lines.append(data.decode(errors="replace").strip())
    return "; ".join(lines)


def syncfs(fd: int, what: str) -> None:
    """Flush the whole filesystem `fd` lives on (cheaper than fsync of every unpacked file)."""
    check(libc.syncfs(fd), "syncfs", what)
