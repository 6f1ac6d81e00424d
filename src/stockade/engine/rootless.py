"""Rootless: the user's own user and mount namespace, kept open by a pause process.

An unprivileged user can't, in the host's namespaces, chown files to other IDs (image layers
keep their owners), mount overlayfs, or map more than its own uid into a container. So, as
podman does, every command of a non-root user first joins one user namespace mapping the
user's uid to 0 and its /etc/subuid range to 1..N (written by newuidmap/newgidmap), with its
own mount namespace. Inside, the engine works as it does for root: layers unpacked with their
owners, overlay mounts (userxattr), each container in its own user namespace nested in this
one. What stays out of reach is what only the host's root has: cgroups on a v1 host, bridges
and nftables (rootless networking is pasta or slirp4netns instead), idmapped mounts.

The namespaces live as long as something is in them: a pause process (a fork of the first
command, in its own session, doing nothing) holds them between commands; its pid and start
time are in <runroot>/pause.pid. Monitors and the monitor host are forks of commands that
joined, so they are inside too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from stockade.errors import StockadeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from stockade.spec.runtime import IDMapping

ENV = "STOCKADE_ROOTLESS"
PAUSE_PID = "pause.pid"
NS_KINDS = (("user", 0x10000000), ("mnt", 0x00020000))  # joined in this order: user owns mnt


class RootlessError(StockadeError):
    pass


def active() -> bool:
    """Whether this process works for a non-root user (inside the rootless namespace)."""
    return os.environ.get(ENV) == "1"


def enter(runroot: Path) -> None:
    """Join the rootless namespace of `runroot`, starting its pause process if there is none."""
    if active() and os.geteuid() == 0:
        return  # a fork of a command that already joined
    runroot.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = os.open(runroot / "pause.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pid = _running_pause(runroot) or _start_pause(runroot)
        fds = [(os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC), flag, kind) for kind, flag in NS_KINDS]
    finally:
        os.close(lock)
    _join(fds)
    os.environ[ENV] = "1"


def _running_pause(runroot: Path) -> int | None:
    from stockade.kernel.process import proc_start_time

    with contextlib.suppress(OSError, ValueError):
        pid, start = (int(x) for x in (runroot / PAUSE_PID).read_text().split())
        if proc_start_time(pid) == start:
            return pid
    return None


def _join(fds: list[tuple[int, int, str]]) -> None:
    from stockade.kernel.namespaces import setns

    cwd = os.getcwd()
    try:
        for fd, flag, kind in fds:
            setns(fd, flag, f"the rootless {kind} namespace")
    except OSError as exc:
        raise RootlessError(f"cannot join the rootless namespace: {exc.strerror}") from None
    finally:
        for fd, _flag, _kind in fds:
            os.close(fd)
    with contextlib.suppress(OSError):
        os.chdir(cwd)  # joining a mount namespace moves us to its root


def id_maps() -> tuple[list[IDMapping], list[IDMapping]]:
    """The rootless namespace's maps: own uid/gid as 0, the subordinate ranges from 1."""
    import pwd

    from stockade.engine.idranges import find_range, parse_subid
    from stockade.spec.runtime import IDMapping

    uid, gid = os.geteuid(), os.getegid()
    names: tuple[str, ...] = (str(uid),)
    with contextlib.suppress(KeyError):
        names = (pwd.getpwuid(uid).pw_name, str(uid))
    maps = []
    for path, own in (("/etc/subuid", uid), ("/etc/subgid", gid)):
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            text = ""
        found = find_range(parse_subid(text, path), names)
        if found is None:
            raise RootlessError(
                f"{path}: no subordinate IDs for {names[0]} (ask your admin: usermod --add-subuids/--add-subgids)"
            )
        maps.append([IDMapping(0, own, 1), IDMapping(1, found.start, found.count)])
    return maps[0], maps[1]


def _start_pause(runroot: Path) -> int:
    """Fork the pause process (double fork: nobody's child), map it, record it."""
    from stockade.kernel.namespaces import CLONE_NEWNS, CLONE_NEWUSER, unshare
    from stockade.kernel.process import detach_stdio, proc_start_time
    from stockade.runtime.idmap import write_id_maps

    uid_maps, gid_maps = id_maps()
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - child
        try:
            os.close(ready_r)
            os.close(go_w)
            os.setsid()
            if os.fork():
                os._exit(0)
            unshare(CLONE_NEWUSER | CLONE_NEWNS)
            os.write(ready_w, str(os.getpid()).encode())
            os.close(ready_w)
            if os.read(go_r, 1) != b"1":
                os._exit(1)
            detach_stdio(keep=-1)
            import signal

            for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
                signal.signal(sig, signal.SIG_IGN)
            while True:
                signal.pause()
        finally:
            os._exit(1)
    os.close(ready_w)
    os.close(go_r)
    os.waitpid(first, 0)
    try:
        data = os.read(ready_r, 32)
        if not data:
            raise RootlessError("the rootless namespace could not be made (unshare failed: are user namespaces off?)")
        pid = int(data)
        try:
            write_id_maps(pid, uid_maps, gid_maps)  # (newuidmap/newgidmap: not our own uid alone)
        except StockadeError:
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
            raise
        os.write(go_w, b"1")
    finally:
        os.close(ready_r)
        os.close(go_w)
    tmp = runroot / f".{PAUSE_PID}.tmp"
    tmp.write_text(f"{pid} {proc_start_time(pid)}\n")
    os.replace(tmp, runroot / PAUSE_PID)
    return pid


def container_id_map_size() -> int:
    """IDs the rootless namespace maps (1 + the subordinate range): what containers can use."""
    from stockade.kernel.namespaces import own_id_map

    return sum(count for _inside, _outside, count in own_id_map())


def host_ids() -> tuple[int, int]:
    """The user's own uid and gid on the host (rootless namespace ID 0), from our maps."""
    from stockade.kernel.namespaces import own_id_map

    uid, gid = (next(outside for inside, outside, _n in own_id_map(kind) if inside == 0) for kind in ("uid", "gid"))
    return uid, gid
