"""Seccomp user notification: receive a trapped syscall, check it is still pending, answer it."""

from __future__ import annotations

import ctypes
import fcntl

# _IOWR('!', 0, struct seccomp_notif) and friends, as <linux/seccomp.h> defines them.
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x40082102
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7


class SeccompData(ctypes.Structure):
    _fields_ = [
        ("nr", ctypes.c_int),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("args", ctypes.c_uint64 * 6),
    ]


class SeccompNotif(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("data", SeccompData)]


class SeccompNotifResp(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("val", ctypes.c_int64), ("error", ctypes.c_int32), ("flags", ctypes.c_uint32)]


def receive(fd: int) -> SeccompNotif:
    """The next notification (the kernel wants the buffer zeroed)."""
    notif = SeccompNotif()
    fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, notif, True)
    return notif


def still_valid(fd: int, notification_id: int) -> bool:
    """Is the trapped syscall still waiting? (Its task may have died and its pid been reused.)"""
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, ctypes.c_uint64(notification_id), False)
        return True
    except OSError:
        return False


def respond(fd: int, notification_id: int, value: int = 0, error: int = 0, flags: int = 0) -> None:
    """Finish the syscall: return `value`, or fail with `error` (a positive errno), or let the
    kernel carry it out as usual (flags=SECCOMP_USER_NOTIF_FLAG_CONTINUE)."""
    resp = SeccompNotifResp(notification_id, value, -error if error else 0, flags)
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, resp, False)
    except OSError:
        pass  # ENOENT: the caller is gone (killed, or the syscall interrupted); nothing to answer
