"""Translate OCI mount options into mount(2) flags and data (pure; the table follows runc's)."""

from __future__ import annotations

from stockade.errors import SpecError

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MS_LAZYTIME = 0x2000000

# option -> (flag, set?)  set=False means the option clears the flag
FLAG_OPTIONS: dict[str, tuple[int, bool]] = {
    "ro": (MS_RDONLY, True),
    "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True),
    "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True),
    "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True),
    "exec": (MS_NOEXEC, False),
    "sync": (MS_SYNCHRONOUS, True),
    "async": (MS_SYNCHRONOUS, False),
    "dirsync": (MS_DIRSYNC, True),
    "mand": (MS_MANDLOCK, True),
    "nomand": (MS_MANDLOCK, False),
    "noatime": (MS_NOATIME, True),
    "atime": (MS_NOATIME, False),
    "nodiratime": (MS_NODIRATIME, True),
    "diratime": (MS_NODIRATIME, False),
    "relatime": (MS_RELATIME, True),
    "norelatime": (MS_RELATIME, False),
    "strictatime": (MS_STRICTATIME, True),
    "nostrictatime": (MS_STRICTATIME, False),
    "lazytime": (MS_LAZYTIME, True),
    "nolazytime": (MS_LAZYTIME, False),
    "nosymfollow": (MS_NOSYMFOLLOW, True),
    "symfollow": (MS_NOSYMFOLLOW, False),
}

PROPAGATION_OPTIONS: dict[str, int] = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}

# Options that mean something to runtimes (crun, podman) but not to mount(2): accepted, ignored.
RUNTIME_ONLY_OPTIONS = frozenset({"tmpcopyup", "notmpcopyup", "copy-symlink", "z", "Z", "U", "nocopy"})

UNSUPPORTED_OPTIONS = frozenset(
    {"idmap", "ridmap", "rro", "rrw", "rnosuid", "rsuid", "rnodev", "rdev", "rnoexec", "rexec"}
)


class MountPlan:
    """One entry of `mounts[]`, translated: what to call mount(2) with."""

    __slots__ = ("bind", "data", "destination", "flags", "propagation", "recursive", "source", "type")

    def __init__(self, destination: str, type: str | None, source: str | None) -> None:
        self.destination = destination
        self.type = type
        self.source = source
        self.flags = 0
        self.propagation = 0
        self.data: list[str] = []
        self.bind = type == "bind"
        self.recursive = False

    @property
    def data_string(self) -> str | None:
        return ",".join(self.data) or None

    def needs_remount(self) -> bool:
        """A bind mount ignores every flag but MS_REC on creation: these need a second call."""
        return self.bind and bool(self.flags & ~(MS_BIND | MS_REC))


def plan_mount(where: str, destination: str, type: str | None, source: str | None, options: list[str]) -> MountPlan:
    """Translate one mount; `where` is its JSON path (mounts[3]) for errors."""
    plan = MountPlan(destination, type, source)
    for option in options:
        if option in ("bind", "rbind"):
            plan.bind = True
            plan.recursive = plan.recursive or option == "rbind"
        elif option in FLAG_OPTIONS:
            flag, on = FLAG_OPTIONS[option]
            plan.flags = plan.flags | flag if on else plan.flags & ~flag
        elif option in PROPAGATION_OPTIONS:
            plan.propagation = PROPAGATION_OPTIONS[option]
        elif option in RUNTIME_ONLY_OPTIONS:
            continue
        elif option in UNSUPPORTED_OPTIONS:
            raise SpecError(f"{where}.options", f'option "{option}" is not supported yet')
        else:
            plan.data.append(option)
    if plan.bind:
        plan.flags |= MS_BIND | (MS_REC if plan.recursive else 0)
        if not source:
            raise SpecError(f"{where}.source", "a bind mount needs a source")
        if plan.data:
            raise SpecError(f"{where}.options", f'unknown option "{plan.data[0]}" for a bind mount')
    elif not type:
        raise SpecError(f"{where}.type", "is required for a mount that is not a bind mount")
    return plan
