"""The cgroup v2 device filter, run on a tiny interpreter of the eBPF it is made of."""

from __future__ import annotations

import struct

import pytest

from stockade.runtime.cgroups import devicefilter as df
from stockade.runtime.cgroups.devices import device_rules
from stockade.spec.runtime import Device


def run(code: bytes, kind: str, major: int, minor: int, access: str) -> bool:
    """Execute the program for one access, as the kernel would."""
    acc = sum(df._ACCESS[c] for c in access)
    ctx = ((acc << 16) | (df.DEV_BLOCK if kind == "b" else df.DEV_CHAR), major, minor)
    regs = [0] * 11
    pc = 0
    insns = [struct.unpack("<BBhi", code[i : i + 8]) for i in range(0, len(code), 8)]
    while True:
        op, regbits, off, imm = insns[pc]
        dst, src = regbits & 0xF, regbits >> 4
        pc += 1
        if op == df.LDX_W:
            regs[dst] = ctx[off // 4]
        elif op == df.ALU32_AND_K:
            regs[dst] &= imm & 0xFFFFFFFF
        elif op == df.ALU32_RSH_K:
            regs[dst] = (regs[dst] & 0xFFFFFFFF) >> imm
        elif op == df.ALU32_MOV_X:
            regs[dst] = regs[src] & 0xFFFFFFFF
        elif op == df.ALU64_MOV_K:
            regs[dst] = imm
        elif op == df.JNE_K:
            pc += off if regs[dst] != imm else 0
        elif op == df.JNE_X:
            pc += off if regs[dst] != regs[src] else 0
        elif op == df.EXIT:
            return regs[0] == 1
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")


DEFAULT = device_rules({"devices": [{"allow": False, "access": "rwm"}]}, [])


@pytest.mark.parametrize(
    "kind,major,minor,access,allowed",
    [
        ("c", 1, 3, "rw", True),  # /dev/null
        ("c", 1, 3, "m", True),
        ("c", 136, 4, "rw", True),  # a pty
        ("c", 1, 11, "w", False),  # /dev/kmsg
        ("b", 8, 0, "r", False),  # /dev/sda
        ("b", 7, 7, "m", False),
    ],
)
def test_deny_all_then_the_default_allowlist(kind, major, minor, access, allowed):
    assert run(df.assemble(DEFAULT), kind, major, minor, access) is allowed


def test_later_rules_win_and_access_must_be_covered():
    rules = [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "b", "major": 8, "minor": None, "access": "r"},
        {"allow": False, "type": "b", "major": 8, "minor": 1, "access": "r"},
    ]
    code = df.assemble(rules)
    assert run(code, "b", 8, 0, "r")
    assert not run(code, "b", 8, 0, "rw")  # write is not covered by the allow rule
    assert not run(code, "b", 8, 1, "r")  # the later deny wins
    assert not run(code, "c", 8, 0, "r")


def test_no_reset_rule_means_allow_by_default_as_a_new_v1_cgroup():
    code = df.assemble([{"allow": False, "type": "c", "major": 10, "minor": 200, "access": "rwm"}])
    assert run(code, "b", 8, 0, "rw") and not run(code, "c", 10, 200, "r")


def test_linux_devices_are_allowed_like_runc():
    rules = device_rules(
        {"devices": [{"allow": False, "access": "rwm"}]}, [Device(type="c", path="/dev/fuse", major=10, minor=229)]
    )
    assert run(df.assemble(rules), "c", 10, 229, "rwm")
