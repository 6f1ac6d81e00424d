"""bpf(2): load a program and attach it to a cgroup (for the cgroup v2 device filter)."""

from __future__ import annotations

import ctypes
import os

from stockade.kernel.libc import NR, syscall

BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2

NR.setdefault("bpf", 280 if os.uname().machine == "aarch64" else 321)


class _ProgLoad(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


class _ProgAttach(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("replace_bpf_fd", ctypes.c_uint32),
    ]


def load_device_program(code: bytes, name: bytes = b"stockade_dev") -> int:
    """Load a BPF_PROG_TYPE_CGROUP_DEVICE program; OSError carries the verifier's log."""
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"Apache-2.0")
    log = ctypes.create_string_buffer(65536)
    attr = _ProgLoad(
        prog_type=BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt=len(code) // 8,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license_),
        log_level=1,
        log_size=len(log),
        log_buf=ctypes.addressof(log),
        prog_name=name[:15],
        expected_attach_type=BPF_CGROUP_DEVICE,
    )
    try:
        return syscall(
            "bpf",
            ctypes.c_int(BPF_PROG_LOAD),
            ctypes.byref(attr),
            ctypes.c_uint(ctypes.sizeof(attr)),
            obj="device filter",
        )
    except OSError as e:
        detail = log.value.decode(errors="replace").strip().splitlines()
        raise OSError(
            e.errno, f"bpf(BPF_PROG_LOAD): {os.strerror(e.errno or 0)}" + (f": {detail[-1]}" if detail else "")
        ) from None


def attach_to_cgroup(prog_fd: int, cgroup_dir: str) -> None:
    target = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        attr = _ProgAttach(
            target_fd=target, attach_bpf_fd=prog_fd, attach_type=BPF_CGROUP_DEVICE, attach_flags=BPF_F_ALLOW_MULTI
        )
        syscall(
            "bpf", ctypes.c_int(BPF_PROG_ATTACH), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr)), obj=cgroup_dir
        )
    finally:
        os.close(target)
