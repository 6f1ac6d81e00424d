"""The cgroup v2 device filter: OCI device rules assembled into an eBPF program (pure).

cgroup v2 has no devices.allow/deny files: a BPF_PROG_TYPE_CGROUP_DEVICE program decides
each access. Its context is struct bpf_cgroup_dev_ctx { u32 access_type (access << 16 |
type); u32 major; u32 minor; }; it returns 1 to allow, 0 to deny.

The rules keep v1's meaning: they are applied in order and a later rule overrides an
earlier one, and a rule for every device ("a *:* rwm") resets the whole list. So the
program checks the rules after the last such reset from the last one back, first match
deciding; no match means that reset's verdict (allow when there is none, as a new v1 cgroup).
A rule matches when the type and numbers match (or are wildcards) and the requested access
is within the rule's access, as runc's filter does.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEV_BLOCK, DEV_CHAR = 1, 2
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4
_ACCESS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}

# eBPF opcodes used here
LDX_W = 0x61  # dst = *(u32 *)(src + off)
ALU32_AND_K = 0x54
ALU32_RSH_K = 0x74
ALU32_MOV_X = 0xBC
ALU64_MOV_K = 0xB7
JNE_K = 0x55
JNE_X = 0x5D
EXIT = 0x95


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _wildcard(value: Any) -> bool:
    return value is None or value == -1


def _resets(rule: dict[str, Any]) -> bool:
    kind = rule.get("type") or "a"
    return (
        kind == "a"
        and _wildcard(rule.get("major"))
        and _wildcard(rule.get("minor"))
        and set(rule.get("access") or "rwm") == set("rwm")
    )


def effective_rules(rules: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """(the rules that still matter, in order; the verdict when none matches)."""
    default, start = True, 0
    for index, rule in enumerate(rules):
        if _resets(rule):
            default, start = bool(rule.get("allow")), index + 1
    return rules[start:], default


def _rule_block(rule: dict[str, Any]) -> list[tuple[bytes, bool]]:
    """Instructions for one rule; the bool marks jumps to patch to "next block"."""
    block: list[tuple[bytes, bool]] = []
    kind = rule.get("type") or "a"
    if kind in ("b", "c"):
        block.append((insn(JNE_K, dst=2, imm=DEV_BLOCK if kind == "b" else DEV_CHAR), True))
    access = 0
    for char in rule.get("access") or "rwm":
        access |= _ACCESS[char]
    if access != ACC_MKNOD | ACC_READ | ACC_WRITE:
        block += [
            (insn(ALU32_MOV_X, dst=1, src=3), False),
            (insn(ALU32_AND_K, dst=1, imm=access), False),
            (insn(JNE_X, dst=1, src=3), True),  # asked for more than the rule covers
        ]
    if not _wildcard(rule.get("major")):
        block.append((insn(JNE_K, dst=4, imm=int(rule["major"])), True))
    if not _wildcard(rule.get("minor")):
        block.append((insn(JNE_K, dst=5, imm=int(rule["minor"])), True))
    block += [(insn(ALU64_MOV_K, dst=0, imm=1 if rule.get("allow") else 0), False), (insn(EXIT), False)]
    return block


def assemble(rules: list[dict[str, Any]]) -> bytes:
    """The program's bytes for these rules (in OCI order)."""
    relevant, default = effective_rules(rules)
    code = [
        insn(LDX_W, dst=2, src=1, off=0),
        insn(ALU32_AND_K, dst=2, imm=0xFFFF),  # r2 = type
        insn(LDX_W, dst=3, src=1, off=0),
        insn(ALU32_RSH_K, dst=3, imm=16),  # r3 = access
        insn(LDX_W, dst=4, src=1, off=4),  # r4 = major
        insn(LDX_W, dst=5, src=1, off=8),  # r5 = minor
    ]
    for rule in reversed(relevant):  # the last rule wins: check it first
        block = _rule_block(rule)
        for position, (raw, jumps_to_next) in enumerate(block):
            if jumps_to_next:
                code_, regs, _off, imm = struct.unpack("<BBhi", raw)
                raw = struct.pack("<BBhi", code_, regs, len(block) - position - 1, imm)
            code.append(raw)
    code += [insn(ALU64_MOV_K, dst=0, imm=1 if default else 0), insn(EXIT)]
    return b"".join(code)
