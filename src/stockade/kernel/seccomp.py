"""A thin binding of the system's libseccomp.so.2 (we never hand-assemble seccomp BPF), and
seccomp(2) itself for loading a program libseccomp compiled earlier (`export_bpf`)."""

from __future__ import annotations

import ctypes
import os

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_NOTIFY = 0x7FC00000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000


def act_errno(errno: int) -> int:
    return 0x00050000 | (errno & 0xFFFF)


def act_trace(msg: int) -> int:
    return 0x7FF00000 | (msg & 0xFFFF)


# enum scmp_compare
SCMP_CMP_NE, SCMP_CMP_LT, SCMP_CMP_LE, SCMP_CMP_EQ, SCMP_CMP_GE, SCMP_CMP_GT, SCMP_CMP_MASKED_EQ = range(1, 8)

# enum scmp_filter_attr
SCMP_FLTATR_CTL_NNP = 3
SCMP_FLTATR_CTL_TSYNC = 4
SCMP_FLTATR_CTL_LOG = 6
SCMP_FLTATR_CTL_SSB = 7
SCMP_FLTATR_CTL_OPTIMIZE = 8  # libseccomp >= 2.5
SCMP_FLTATR_CTL_WAITKILL = 11  # libseccomp >= 2.6 only

NR_SCMP_ERROR = -1


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


_lib: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    """Load libseccomp once (in the runtime, before any fork: a child in the container's
    user namespace may not be able to read the host's library directories)."""
    global _lib
    if _lib is None:
        name = "libseccomp.so.2"  # its soname: no ldconfig run (ctypes.util) when it is there
        try:
            handle = ctypes.CDLL(name, use_errno=True)
        except OSError:
            from ctypes.util import find_library

            name = find_library("seccomp") or name
            try:
                handle = ctypes.CDLL(name, use_errno=True)
            except OSError as e:
                raise OSError(0, f"load libseccomp ({name}): {e}; install Debian's libseccomp2") from None
        handle.seccomp_init.restype = ctypes.c_void_p
        handle.seccomp_init.argtypes = [ctypes.c_uint32]
        handle.seccomp_release.argtypes = [ctypes.c_void_p]
        handle.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        handle.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        handle.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        handle.seccomp_arch_native.restype = ctypes.c_uint32
        handle.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        handle.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(ScmpArgCmp),
        ]
        handle.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        handle.seccomp_load.argtypes = [ctypes.c_void_p]
        handle.seccomp_notify_fd.argtypes = [ctypes.c_void_p]
        handle.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        handle.seccomp_version.restype = ctypes.c_void_p
        _lib = handle
    return _lib


def _check(ret: int, what: str) -> int:
    """libseccomp returns -errno on failure."""
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


class Filter:
    """A libseccomp filter context."""

    def __init__(self, default_action: int) -> None:
        self.ctx = lib().seccomp_init(default_action)
        if not self.ctx:
            raise OSError(0, "seccomp_init failed (invalid default action?)")

    def release(self) -> None:
        if self.ctx:
            lib().seccomp_release(self.ctx)
            self.ctx = None

    def add_arch(self, token: int, name: str) -> None:
        ret = lib().seccomp_arch_add(self.ctx, token)
        if ret != -17:  # -EEXIST: already in the filter (the native arch is added by init)
            _check(ret, f"seccomp_arch_add({name})")

    def add_rule(self, action: int, syscall: int, args: list[tuple[int, int, int, int]], what: str) -> None:
        array = (ScmpArgCmp * len(args))(*(ScmpArgCmp(*a) for a in args)) if args else None
        _check(lib().seccomp_rule_add_array(self.ctx, action, syscall, len(args), array), what)

    def set_attr(self, attr: int, value: int, what: str) -> None:
        _check(lib().seccomp_attr_set(self.ctx, attr, value), what)

    def load(self) -> None:
        _check(lib().seccomp_load(self.ctx), "seccomp_load")

    def notify_fd(self) -> int:
        return _check(lib().seccomp_notify_fd(self.ctx), "seccomp_notify_fd")

    def export_bpf(self) -> bytes:
        """The compiled program, as seccomp_load would load it."""
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            _check(lib().seccomp_export_bpf(self.ctx, fd), "seccomp_export_bpf")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)


# seccomp(2) operation and the filter flags libseccomp's attributes stand for
SECCOMP_SET_MODE_FILTER = 1
FILTER_FLAG_TSYNC = 1
FILTER_FLAG_LOG = 2
FILTER_FLAG_SPEC_ALLOW = 4
FILTER_FLAG_WAIT_KILLABLE_RECV = 32


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_program(program: bytes, flags: int) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER, flags, program): the caller must have no_new_privs set
    or CAP_SYS_ADMIN in its user namespace."""
    from stockade.kernel.libc import syscall

    buffer = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    syscall("seccomp", ctypes.c_uint(SECCOMP_SET_MODE_FILTER), ctypes.c_uint(flags), ctypes.byref(prog), obj="filter")


def library_version() -> str:
    class _Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]

    v = ctypes.cast(lib().seccomp_version(), ctypes.POINTER(_Version)).contents
    return f"{v.major}.{v.minor}.{v.micro}"


def resolve_syscall(name: str) -> int:
    return int(lib().seccomp_syscall_resolve_name(name.encode()))


def resolve_arch(name: str) -> int:
    return int(lib().seccomp_arch_resolve_name(name.encode()))


def native_arch() -> int:
    return int(lib().seccomp_arch_native())
