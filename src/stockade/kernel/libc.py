"""The system libc through ctypes, and the one helper that turns a failed call into OSError.

This is the only place ctypes is loaded; every other kernel module takes `libc` and `check`
from here. Syscalls glibc has no wrapper for go through `syscall()` with the x86_64 numbers.
"""

from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
_syscall = libc.syscall
_syscall.restype = ctypes.c_long

# x86_64 and aarch64 numbers for the calls glibc 2.36 does not wrap.
_NR_X86_64 = {
    "pivot_root": 155,
    "keyctl": 250,
    "pidfd_send_signal": 424,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "pidfd_open": 434,
    "openat2": 437,
    "mount_setattr": 442,
    "seccomp": 317,
}
_NR_AARCH64 = {
    "pivot_root": 41,
    "keyctl": 219,
    "pidfd_send_signal": 424,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "pidfd_open": 434,
    "openat2": 437,
    "mount_setattr": 442,
    "seccomp": 277,
}
NR = _NR_AARCH64 if os.uname().machine == "aarch64" else _NR_X86_64


def raise_errno(what: str, obj: object = None) -> None:
    """Raise OSError for the errno the last libc call left, naming the call and the object."""
    err = ctypes.get_errno()
    msg = f"{what}: {os.strerror(err)}"
    if obj is None:
        raise OSError(err, msg)
    raise OSError(err, msg, str(obj))


def check(ret: int, what: str, obj: object = None) -> int:
    """Return `ret`, or raise OSError if the call reported failure with -1."""
    if ret == -1:
        raise_errno(what, obj)
    return ret


def syscall(name: str, *args: object, obj: object = None) -> int:
    """Call a raw syscall by name; raises OSError naming `name` and `obj` on failure."""
    ret = int(_syscall(ctypes.c_long(NR[name]), *args))
    return check(ret, name, obj)


def cstr(s: str | bytes | None) -> bytes | None:
    """Encode a path or string for a char* argument (None stays NULL)."""
    if s is None:
        return None
    return os.fsencode(s)
