"""Cgroups: detect the host's layout and pick the driver.

Three layouts exist: unified (cgroup v2 only), legacy (v1 only) and hybrid (v1 controllers
plus a cgroup2 mount, usually at /sys/fs/cgroup/unified, holding whatever controllers no v1
hierarchy took; on this project's host that is hugetlb). One driver interface serves all
three: `V1Manager` handles legacy and hybrid (using each controller where it is mounted),
`V2Manager` handles unified. A container's cgroup paths are recorded in its state as a map
hierarchy-name -> absolute directory ("" is the cgroup2 hierarchy).
"""

from __future__ import annotations

import os

from stockade.errors import ContainerError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from stockade.runtime.cgroups.base import Manager

CGROUP_ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = frozenset(
    [
        "cpuset",
        "cpu",
        "cpuacct",
        "blkio",
        "memory",
        "devices",
        "freezer",
        "net_cls",
        "perf_event",
        "net_prio",
        "hugetlb",
        "pids",
        "rdma",
        "misc",
    ]
)


class Layout:
    """Where each hierarchy is mounted: {"memory": "/sys/fs/cgroup/memory", ..., "": cgroup2 mount}."""

    __slots__ = ("unified", "v1")

    def __init__(self, v1: dict[str, str], unified: str | None) -> None:
        self.v1 = v1
        self.unified = unified

    @property
    def kind(self) -> str:
        if not self.v1:
            return "unified" if self.unified else "none"
        return "hybrid" if self.unified else "legacy"


def detect_layout(mountinfo: str = "/proc/self/mountinfo") -> Layout:
    """Read the cgroup mounts from mountinfo (injectable for unit tests)."""
    v1: dict[str, str] = {}
    unified = None
    with open(mountinfo) as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields = pre.split()
            fstype, _source, super_opts = ([*post.split(), "", "", ""])[:3]
            mount_point = fields[4]
            if fstype == "cgroup2":
                unified = unified or mount_point
            elif fstype == "cgroup":
                for opt in super_opts.split(","):
                    # super options mix controllers with flags (xattr, noprefix, release_agent=...)
                    if opt in V1_CONTROLLERS or opt.startswith("name="):
                        v1.setdefault(opt, mount_point)
    return Layout(v1, unified)


def own_cgroups(pid: str = "self") -> dict[str, str]:
    """The calling process's cgroup per hierarchy: {"memory": "/a/b", "": "/" (v2)}."""
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _hid, controllers, path = line.rstrip("\n").split(":", 2)
            if not controllers:
                out[""] = path
            for controller in controllers.split(","):
                out[controller] = path
    return out


def resolve_path(cgroups_path: str | None, container_id: str, own: str) -> str:
    """linux.cgroupsPath as runc reads it: absolute as given, relative under the runtime's
    own cgroup; a default of /stockade/<id> when unset."""
    if not cgroups_path:
        return f"/stockade/{container_id}"
    if ":" in cgroups_path and not cgroups_path.startswith("/"):
        raise ContainerError(
            f'cgroupsPath "{cgroups_path}" is in systemd form (slice:prefix:name); '
            "the systemd cgroup driver is not supported, use a cgroupfs path"
        )
    if cgroups_path.startswith("/"):
        return os.path.normpath(cgroups_path)
    return os.path.normpath(os.path.join(own, cgroups_path))


def delegated_parent(layout: Layout, own: dict[str, str]) -> str | None:
    """For an unprivileged caller on cgroup v2: the cgroup above its own, if it was delegated
    to the caller (systemd's user@UID.service, or any subtree chowned to it), else None. A
    container's cgroup goes there, beside the caller's: cgroup v2 lets a process move others
    only between cgroups whose common ancestor's cgroup.procs it may write."""
    if layout.unified is None or "" not in own:
        return None
    parent = os.path.dirname(own[""].rstrip("/")) or "/"
    directory = os.path.join(layout.unified, parent.lstrip("/"))
    needed = (directory, os.path.join(directory, "cgroup.procs"), os.path.join(directory, "cgroup.subtree_control"))
    if all(os.access(path, os.W_OK) for path in needed):
        return parent
    return None


_priming: list[bool] = []  # [still wanted], once priming has started in this process
PRIMING_CAP = 0.2  # seconds: a set-up that takes longer than this pays the wait


def prime_migration(layout: Layout, own: dict[str, str]) -> None:
    """Start, in a thread, migrations that move nothing: this process into the cgroup it is
    already in (`own`), every 5 ms until end_priming(). Why: the first migration after a quiet spell
    waits for an RCU grace period (~7-10 ms here: the kernel puts cgroup_threadgroup_rwsem's
    readers on their slow path, and lets them back only a grace period after the last
    migration; measured, later migrations stay fast for 20-50 ms). Started once the cgroup is
    made (`stockade-runtime create`), the wait runs beside the namespaces and the mounts, and
    the init's join finds the way clear (measured: 9 ms -> ~0.3). Not sooner: the write waits
    holding cgroup_mutex, and every cgroup mkdir on the machine waits with it (started with
    `run`, it made the mkdirs take 3-26 ms instead of 1). The file is opened here, so that the
    thread's first act is the write (it waited ~3 ms for the interpreter's lock to read
    mountinfo itself). Once per process; errors (no cgroups, rootless) are ignored."""
    if _priming:
        return
    _priming.append(True)
    hierarchy = "" if layout.unified and "" in own else next((h for h in layout.v1 if h in own), None)
    if hierarchy is None:
        return
    mount = layout.unified if hierarchy == "" else layout.v1[hierarchy]
    try:
        fd = os.open(os.path.join(str(mount), own[hierarchy].lstrip("/"), "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    import _thread

    _thread.start_new_thread(_migrate_self_until_ended, (fd,))


def end_priming() -> None:
    if _priming:
        _priming[0] = False


def _migrate_self_until_ended(fd: int) -> None:
    import time

    pid = str(os.getpid()).encode()
    try:
        deadline = time.monotonic() + PRIMING_CAP
        while _priming[0] and time.monotonic() < deadline:
            os.write(fd, pid)
            time.sleep(0.005)
    except OSError:
        pass
    finally:
        os.close(fd)


def manager_for(layout: Layout) -> type[Manager]:
    from stockade.runtime.cgroups import v1, v2

    return v2.V2Manager if layout.kind == "unified" else v1.V1Manager
