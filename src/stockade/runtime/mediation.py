"""Syscall mediation: create harmless device nodes for unprivileged containers.

The kernel refuses mknod of any device inside a user namespace, yet programs expect to make
/dev/null-like nodes. A container whose seccomp profile sends mknod/mknodat to a listener
(SCMP_ACT_NOTIFY, see `with_mknod_mediation`) has them answered here: character devices on
an allowlist are created on the caller's behalf inside its root, owned by the caller; block
devices and anything else get EPERM; fifos, sockets and regular files the kernel allows
anyway, so those calls continue as usual.

    python -m stockade.runtime.mediation LISTENER_SOCKET

serves every container whose listenerPath is that socket until SIGTERM. It must run as root
on the host (it writes into the containers' roots and reads their memory).

Checks, in order: the architecture and syscall; the device against the allowlist; the
caller's CAP_MKNOD (in its own user namespace) and its right to write the parent
directory; and, before reading the caller's memory is trusted and again before acting, that
the notification is still pending (SECCOMP_IOCTL_NOTIF_ID_VALID), so a pid that died and was
reused in between is never acted for.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import stat
import sys

from stockade import jsonfast
from stockade.kernel import caps
from stockade.kernel import mounts as km
from stockade.kernel import seccomp_notify as notify
from stockade.kernel.process import set_fs_ids

# (major, minor) of the character devices a container may create: null, zero, full, random,
# urandom, tty. Nothing that reaches hardware or another terminal.
ALLOWED_DEVICES = {(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0)}
CAP_DAC_OVERRIDE = 1
CAP_MKNOD = 27
AT_FDCWD = -100
NATIVE_ARCH = {"x86_64": notify.AUDIT_ARCH_X86_64, "aarch64": notify.AUDIT_ARCH_AARCH64}.get(os.uname().machine)
SYSCALLS = {"x86_64": {133: "mknod", 259: "mknodat"}, "aarch64": {33: "mknodat"}}.get(os.uname().machine, {})


class Denied(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(os.strerror(code))
        self.code = code


class Caller:
    """What /proc says about the calling task (its IDs as the host sees them)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        fields: dict[str, str] = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        self.fsuid = int(fields["Uid"].split()[3])
        self.fsgid = int(fields["Gid"].split()[3])
        self.groups = {int(g) for g in fields.get("Groups", "").split()}
        self.umask = int(fields.get("Umask", "0022"), 8)
        self.cap_eff = int(fields["CapEff"], 16)
        with open(f"/proc/{pid}/uid_map") as f:
            self.uid_map = [tuple(int(x) for x in line.split()) for line in f if line.strip()]

    def has_cap(self, cap: int) -> bool:
        return bool(self.cap_eff & (1 << cap))

    def maps_host_uid(self, uid: int) -> bool:
        return any(host <= uid < host + size for _inner, host, size in self.uid_map)

    def may_write(self, st: os.stat_result) -> bool:
        """The kernel's write check on a directory, for this caller."""
        if self.has_cap(CAP_DAC_OVERRIDE) and self.maps_host_uid(st.st_uid):
            return True
        if st.st_uid == self.fsuid:
            return bool(st.st_mode & stat.S_IWUSR)
        if st.st_gid == self.fsgid or st.st_gid in self.groups:
            return bool(st.st_mode & stat.S_IWGRP)
        return bool(st.st_mode & stat.S_IWOTH)


def read_string(pid: int, address: int, limit: int = 4096) -> str:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, limit, address)
    finally:
        os.close(fd)
    end = data.find(b"\0")
    if end < 0:
        raise Denied(errno.ENAMETOOLONG)
    return data[:end].decode("utf-8", "surrogateescape")


def handle(fd: int) -> None:
    """Receive one notification and answer it."""
    try:
        n = notify.receive(fd)
    except OSError:
        return  # interrupted, or the caller vanished between poll and receive
    try:
        flags = mediate(fd, n)
        notify.respond(fd, n.id, flags=flags)
    except Denied as e:
        notify.respond(fd, n.id, error=e.code)
    except OSError as e:
        notify.respond(fd, n.id, error=e.errno or errno.EPERM)
    except Exception as e:  # a bug must not take the mediator, and every container's mknod, down
        print(f"stockade-mediation: {type(e).__name__}: {e}", file=sys.stderr)
        notify.respond(fd, n.id, error=errno.EPERM)


def mediate(fd: int, n: notify.SeccompNotif) -> int:
    """Act for the call or raise Denied; returns the response flags (CONTINUE or 0)."""
    data = n.data
    name = SYSCALLS.get(data.nr) if data.arch == NATIVE_ARCH else None
    if name is None:
        raise Denied(errno.EPERM)
    args = list(data.args)
    dirfd, path_ptr, mode, dev = (AT_FDCWD, *args[:3]) if name == "mknod" else args[:4]
    kind = stat.S_IFMT(mode)
    if kind in (0, stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK):
        return notify.SECCOMP_USER_NOTIF_FLAG_CONTINUE  # needs no privilege: the kernel decides
    device = (os.major(dev), os.minor(dev))
    if kind != stat.S_IFCHR or device not in ALLOWED_DEVICES:
        raise Denied(errno.EPERM)
    caller = Caller(n.pid)
    path = read_string(n.pid, path_ptr)
    if not notify.still_valid(fd, n.id):  # what we read may belong to a reused pid
        raise Denied(errno.ESRCH)
    if not caller.has_cap(CAP_MKNOD):
        raise Denied(errno.EPERM)
    parent, leaf = _open_parent(n.pid, dirfd if dirfd < 2**31 else dirfd - 2**64, path)
    try:
        if not caller.may_write(os.fstat(parent)):
            raise Denied(errno.EACCES)
        if not notify.still_valid(fd, n.id):
            raise Denied(errno.ESRCH)
        # Created as the caller's file IDs: owned by it, and valid on a filesystem of the
        # container's own user namespace (its /dev, /dev/shm, tmpfs mounts), where a node of
        # the host's root could not be made (EOVERFLOW: root is not mapped there).
        effective, permitted, inheritable = caps.capget()
        previous = set_fs_ids(caller.fsuid, caller.fsgid)
        try:
            caps.capset(effective | (1 << CAP_MKNOD), permitted, inheritable)  # (dropped with fsuid 0)
            os.mknod(leaf, stat.S_IFCHR | (mode & 0o7777 & ~caller.umask), os.makedev(*device), dir_fd=parent)
        finally:
            set_fs_ids(*previous)
            caps.capset(effective, permitted, inheritable)
    finally:
        os.close(parent)
    return 0


def _open_parent(pid: int, dirfd: int, path: str) -> tuple[int, str]:
    """The directory the node goes in, resolved as the caller sees its filesystem and never
    outside its root: absolute paths from its root (RESOLVE_IN_ROOT), relative ones beneath
    its cwd or dirfd (RESOLVE_BENEATH)."""
    head, leaf = os.path.split(path)
    if not leaf or leaf in (".", ".."):
        raise Denied(errno.EEXIST)
    if path.startswith("/"):
        base, resolve = f"/proc/{pid}/root", km.RESOLVE_IN_ROOT
    else:
        base = f"/proc/{pid}/cwd" if dirfd == AT_FDCWD else f"/proc/{pid}/fd/{dirfd}"
        resolve = km.RESOLVE_BENEATH
    base_fd = os.open(base, km.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        parent = km.openat2(
            base_fd, head.lstrip("/") or ".", km.O_PATH | os.O_DIRECTORY, resolve | km.RESOLVE_NO_MAGICLINKS
        )
    finally:
        os.close(base_fd)
    return parent, leaf


def serve(listener_path: str) -> None:
    """Accept notify fds on `listener_path` and answer their notifications until killed."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(listener_path)
    server.listen(16)
    poller = select.poll()
    poller.register(server.fileno(), select.POLLIN)
    fds: set[int] = set()
    while True:
        for fd, events in poller.poll():
            if fd == server.fileno():
                new = accept_notify_fd(server)
                if new is not None:
                    fds.add(new)
                    poller.register(new, select.POLLIN)
            elif events & select.POLLIN:
                handle(fd)
            elif events & (select.POLLHUP | select.POLLERR):
                poller.unregister(fd)  # every process under this filter has exited
                fds.discard(fd)
                os.close(fd)


def accept_notify_fd(server: socket.socket) -> int | None:
    """Accept one connection and take the notify fd it sends with the container state (the
    runtime spec's listenerPath protocol); None if it sent anything else."""
    conn, _ = server.accept()
    with conn:
        try:
            message, fds, _flags, _addr = socket.recv_fds(conn, 65536, 4)
            state = jsonfast.loads(message)
        except (OSError, ValueError):
            return None
    if state.get("fds") != ["seccompFd"] or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    return fds[0]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        serve(argv[0])
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
