"""linux.seccomp validated into a plan (pure). Unknown actions, operators, architectures and
flags are errors naming their JSON path; unknown syscall names are left for the runtime to
skip, as runc does, since they depend on the kernel and libseccomp at hand."""

from __future__ import annotations

from stockade.errors import SpecError
from stockade.spec.reader import Reader

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ACTIONS = (
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
)
OPERATORS = (
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
)
ARCHITECTURES = (
    "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X", "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64",
)  # fmt: skip
FLAGS = (
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
)


class SeccompArg:
    __slots__ = ("index", "op", "value", "value_two")

    def __init__(self, index: int, op: str, value: int, value_two: int) -> None:
        self.index = index
        self.op = op
        self.value = value
        self.value_two = value_two


class SeccompRule:
    __slots__ = ("action", "args", "errno_ret", "names", "where")

    def __init__(
        self, where: str, names: list[str], action: str, errno_ret: int | None, args: list[SeccompArg]
    ) -> None:
        self.where = where
        self.names = names
        self.action = action
        self.errno_ret = errno_ret
        self.args = args


class SeccompPlan:
    __slots__ = (
        "architectures",
        "default_action",
        "default_errno",
        "flags",
        "listener_metadata",
        "listener_path",
        "rules",
    )

    def __init__(self) -> None:
        self.default_action = "SCMP_ACT_ALLOW"
        self.default_errno: int | None = None
        self.architectures: list[str] = []
        self.flags: list[str] = []
        self.rules: list[SeccompRule] = []
        self.listener_path: str | None = None
        self.listener_metadata = ""

    def uses_notify(self) -> bool:
        return self.default_action == "SCMP_ACT_NOTIFY" or any(r.action == "SCMP_ACT_NOTIFY" for r in self.rules)


def _one_of(r: Reader, key: str, allowed: tuple[str, ...], what: str, required: bool = False) -> Any:
    value = r.string(key, required=required)
    if value is not None and value not in allowed:
        raise r.fail(key, f'unknown {what} "{value}"')
    return value


def plan_seccomp(raw: dict[str, Any], path: str = "linux.seccomp") -> SeccompPlan:
    r = Reader(raw, path)
    plan = SeccompPlan()
    plan.default_action = _one_of(r, "defaultAction", ACTIONS, "action", required=True)
    plan.default_errno = r.integer("defaultErrnoRet", minimum=0)
    for i, arch in enumerate(r.strings("architectures")):
        if arch not in ARCHITECTURES:
            raise SpecError(f"{path}.architectures[{i}]", f'unknown architecture "{arch}"')
        plan.architectures.append(arch)
    for i, flag in enumerate(r.strings("flags")):
        if flag not in FLAGS:
            raise SpecError(f"{path}.flags[{i}]", f'unknown flag "{flag}"')
        plan.flags.append(flag)
    plan.listener_path = r.string("listenerPath")
    plan.listener_metadata = r.string("listenerMetadata", "")
    for rule in r.objects("syscalls"):
        names = rule.strings("names")
        if not names:
            raise rule.fail("names", "must list at least one syscall")
        action = _one_of(rule, "action", ACTIONS, "action", required=True)
        args = []
        for arg in rule.objects("args"):
            args.append(
                SeccompArg(
                    arg.integer("index", required=True, minimum=0),
                    _one_of(arg, "op", OPERATORS, "operator", required=True),
                    arg.integer("value", 0, minimum=0),
                    arg.integer("valueTwo", 0, minimum=0),
                )
            )
            if args[-1].index > 5:
                raise arg.fail("index", f"syscalls have at most 6 arguments (0-5), not {args[-1].index}")
        plan.rules.append(SeccompRule(rule.path, names, action, rule.integer("errnoRet", minimum=0), args))
    if plan.uses_notify() and not plan.listener_path:
        raise SpecError(f"{path}.listenerPath", "SCMP_ACT_NOTIFY needs a listenerPath to send the notify fd to")
    if plan.default_action == "SCMP_ACT_NOTIFY":
        raise SpecError(f"{path}.defaultAction", "SCMP_ACT_NOTIFY cannot be the default action")
    return plan
