"""The container's root filesystem, built by its init process inside the new mount namespace.

`prepare_rootfs` runs before pivot_root (host paths still reachable, for bind sources and
the cgroup hierarchy), `enter_rootfs` does the pivot, `finish_rootfs` applies what must be
done from inside (masked and read-only paths, a read-only root). Every mount destination is
resolved with openat2(RESOLVE_IN_ROOT) against an fd of the rootfs, and mounted through
/proc/self/fd/N, so a symlink in the rootfs can never redirect a mount onto the host.
"""

from __future__ import annotations

import errno
import os
import stat

from stockade.errors import ContainerError
from stockade.kernel import mounts as km
from stockade.spec.mountopts import MountPlan
from stockade.spec.runtime import Config, Device

DEFAULT_DEVICES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
DEV_SYMLINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)
PROPAGATION = {
    "private": km.MS_PRIVATE,
    "rprivate": km.MS_PRIVATE | km.MS_REC,
    "slave": km.MS_SLAVE,
    "rslave": km.MS_SLAVE | km.MS_REC,
    "shared": km.MS_SHARED,
    "rshared": km.MS_SHARED | km.MS_REC,
    "unbindable": km.MS_UNBINDABLE,
    "runbindable": km.MS_UNBINDABLE | km.MS_REC,
}


class RootfsContext:
    """What the mount steps need to know about the container beyond its config."""

    __slots__ = (
        "bundle",
        "cgroup_paths",
        "config",
        "deferred",
        "in_userns",
        "new_cgroupns",
        "new_ipcns",
        "new_netns",
        "rootfd",
    )

    def __init__(self, config: Config, bundle: str, cgroup_paths: dict[str, str]) -> None:
        linux = config.linux
        self.config = config
        self.bundle = bundle
        self.in_userns = linux.namespace("user") is not None
        self.new_netns = linux.new_namespace("network")
        self.new_ipcns = linux.new_namespace("ipc")
        self.new_cgroupns = linux.new_namespace("cgroup")
        self.cgroup_paths = cgroup_paths
        self.rootfd = -1
        self.deferred: list[MountPlan] = []  # fresh cgroup2 mounts, made once in the new cgroupns


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def open_in_root(rootfd: int, path: str, flags: int = km.O_PATH) -> int:
    """Open `path` inside the root behind `rootfd`; symlinks resolve as if chrooted there."""
    return km.openat2(rootfd, path.lstrip("/") or ".", flags, km.RESOLVE_IN_ROOT)


def ensure_target(rootfd: int, path: str, directory: bool, _depth: int = 0) -> int:
    """Create `path` (and its parents) inside the root if missing; return an O_PATH fd to it.

    Each component is resolved from the root with RESOLVE_IN_ROOT and created with
    mkdirat/openat relative to the already-resolved parent, which never follows a symlink
    in the last component: nothing is ever created outside the root. A dangling symlink on
    the way is followed as the kernel would inside the root (absolute targets and ".."
    start and stop at the rootfs), and its target created there."""
    if _depth > 40:
        raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
    parts = [p for p in path.split("/") if p]
    # Usually the whole path exists (one openat2), else most of it: start from the deepest
    # part that does, and make the rest one component at a time.
    found = len(parts)
    while found > 0:
        try:
            parent = open_in_root(rootfd, "/".join(parts[:found]))
            break
        except FileNotFoundError:
            found -= 1
    else:
        parent = os.dup(rootfd)
    redirect = None
    try:
        for i in range(found, len(parts)):
            part = parts[i]
            try:
                if i == len(parts) - 1 and not directory:
                    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                    os.close(os.open(part, flags, 0o644, dir_fd=parent))
                else:
                    os.mkdir(part, 0o755, dir_fd=parent)
            except FileExistsError:
                link = _link_target(parent, part)
                if link is not None:  # a dangling symlink: create what it points to, inside the root
                    resolved = os.path.normpath(os.path.join("/" + "/".join(parts[:i]), link))
                    redirect = os.path.join(resolved, "/".join(parts[i + 1 :]))
                    break
            fd = open_in_root(rootfd, "/".join(parts[: i + 1]))
            os.close(parent)
            parent = fd
    except BaseException:
        os.close(parent)
        raise
    if redirect is not None:
        os.close(parent)
        return ensure_target(rootfd, redirect, directory, _depth + 1)
    return parent


def _link_target(parent: int, name: str) -> str | None:
    """What the symlink `name` points to; None if it is no symlink (made meanwhile)."""
    try:
        return os.readlink(name, dir_fd=parent)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return None
        raise


# -- before pivot_root --------------------------------------------------------------------


def prepare_rootfs(ctx: RootfsContext) -> None:
    config = ctx.config
    # Nothing mounted from here on may propagate back to the host: make every mount in this
    # namespace private (or slave, if asked) before the first mount of our own.
    requested = config.linux.rootfs_propagation or "rprivate"
    base = km.MS_SLAVE if requested in ("slave", "rslave") else km.MS_PRIVATE
    _step("make / private", lambda: km.mount(None, "/", None, km.MS_REC | base))
    # pivot_root needs the new root to be a mount point: bind the rootfs onto itself.
    rootfs = config.root_path
    try:
        if not stat.S_ISDIR(os.stat(rootfs).st_mode):
            raise ContainerError(f"root.path: {rootfs} is not a directory")
    except PermissionError:
        raise ContainerError(
            f"root.path: {rootfs} is not reachable by the container's root: every directory above it "
            "must be searchable by the host uid that root maps to"
        ) from None
    except FileNotFoundError:
        raise ContainerError(f"root.path: {rootfs} does not exist") from None
    _step(f"bind rootfs {rootfs}", lambda: km.mount(rootfs, rootfs, None, km.MS_BIND | km.MS_REC))
    ctx.rootfd = os.open(rootfs, km.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    for mount in config.mounts:
        assert mount.plan is not None  # made and checked by load_config
        _mount_entry(ctx, mount.plan)
    if _dev_is_tmpfs(config):
        _default_devices(ctx)
    for device in config.linux.devices:
        _create_device(ctx, device)


def _step(what: str, action: object) -> None:
    try:
        action()  # type: ignore[operator]
    except OSError as e:
        raise ContainerError(
            f"{what}: {errno.errorcode.get(e.errno or 0, 'error')} ({os.strerror(e.errno or 0)})"
        ) from None


def _dev_is_tmpfs(config: Config) -> bool:
    return any(m.destination == "/dev" and m.type == "tmpfs" for m in config.mounts)


def _mount_entry(ctx: RootfsContext, plan: MountPlan) -> None:
    what = f"mount {plan.type or 'bind'} on {plan.destination}"
    try:
        if plan.bind:
            _bind_mount(ctx, plan)
        elif plan.type == "cgroup" or plan.type == "cgroup2":
            _cgroup_mount(ctx, plan)
        else:
            _fs_mount(ctx, plan)
    except OSError as e:
        code = errno.errorcode.get(e.errno or 0, "error")
        raise ContainerError(f"{what}: {code} ({os.strerror(e.errno or 0)})") from None


def _bind_mount(ctx: RootfsContext, plan: MountPlan) -> None:
    source = plan.source or ""
    if not source.startswith("/"):
        source = os.path.join(ctx.bundle, source)
    if not os.path.exists(source):
        raise ContainerError(f"mount bind on {plan.destination}: source {source} does not exist")
    target = ensure_target(ctx.rootfd, plan.destination, os.path.isdir(source))
    try:
        km.mount(source, fd_path(target), None, plan.flags & (km.MS_BIND | km.MS_REC))
    finally:
        os.close(target)
    _remount_and_propagate(ctx, plan)


def _remount_and_propagate(ctx: RootfsContext, plan: MountPlan) -> None:
    """Apply flags a bind mount ignored at creation, then per-mount propagation."""
    if not plan.needs_remount() and not plan.propagation:
        return
    fd = open_in_root(ctx.rootfd, plan.destination)
    try:
        target = fd_path(fd)
        if plan.needs_remount():
            flags = km.MS_BIND | km.MS_REMOUNT | (plan.flags & ~km.MS_REC) | km.locked_flags(target)
            km.mount(None, target, None, flags)
        if plan.propagation:
            km.mount(None, target, None, plan.propagation)
    finally:
        os.close(fd)


def _fs_mount(ctx: RootfsContext, plan: MountPlan) -> None:
    fstype = plan.type or ""
    target = ensure_target(ctx.rootfd, plan.destination, True)
    try:
        try:
            km.mount(plan.source or fstype, fd_path(target), fstype, plan.flags, plan.data_string)
        except PermissionError:
            # In a user namespace the kernel refuses a new sysfs without a network namespace
            # of our own, and a new mqueue without our own IPC namespace: bind the host's,
            # read-only for sysfs.
            host = {"sysfs": "/sys", "mqueue": "/dev/mqueue"}.get(fstype)
            if host is None or not ctx.in_userns:
                raise
            km.mount(host, fd_path(target), None, km.MS_BIND | km.MS_REC)
            if fstype == "sysfs" or plan.flags & km.MS_RDONLY:
                # Read-only all the way down: the host's sysfs carries submounts (its cgroup
                # hierarchies among them) that a plain remount of the top would leave writable.
                _read_only_tree(ctx, plan.destination)
            return
        except OSError as e:
            # devpts: gid=5 is not mapped in every user namespace; the kernel says EINVAL.
            if fstype != "devpts" or e.errno != errno.EINVAL or not any(d.startswith("gid=") for d in plan.data):
                raise
            data = ",".join(d for d in plan.data if not d.startswith("gid="))
            km.mount(plan.source or fstype, fd_path(target), fstype, plan.flags, data)
    finally:
        os.close(target)
    if plan.propagation:
        _remount_and_propagate(ctx, plan)


def _read_only_tree(ctx: RootfsContext, destination: str) -> None:
    fd = open_in_root(ctx.rootfd, destination)
    try:
        km.mount_setattr(fd, "", km.AT_EMPTY_PATH | km.AT_RECURSIVE, km.MOUNT_ATTR_RDONLY)
    finally:
        os.close(fd)


def _cgroup_mount(ctx: RootfsContext, plan: MountPlan) -> None:
    """/sys/fs/cgroup inside: only the container's own cgroups, read-only as asked.

    cgroup2 is mounted fresh when the container has its own cgroup namespace (the kernel then
    shows its cgroup as the root); otherwise, and on v1, the container's directories in the
    host's hierarchies are bind-mounted, one per hierarchy under a tmpfs."""
    unified_only = set(ctx.cgroup_paths) == {""}
    if unified_only and ctx.new_cgroupns and plan not in ctx.deferred:
        ctx.deferred.append(plan)  # see mount_deferred
        return
    target = ensure_target(ctx.rootfd, plan.destination, True)
    try:
        if unified_only and ctx.new_cgroupns:
            km.mount("cgroup2", fd_path(target), "cgroup2", plan.flags)
            return
        if unified_only:
            km.mount(ctx.cgroup_paths[""], fd_path(target), None, km.MS_BIND | km.MS_REC)
        else:
            km.mount("tmpfs", fd_path(target), "tmpfs", km.MS_NOSUID | km.MS_NODEV | km.MS_NOEXEC, "mode=755")
    finally:
        os.close(target)
    if not unified_only:
        for name, host_dir in sorted(ctx.cgroup_paths.items()):
            sub = os.path.join(plan.destination, _hierarchy_dir(name))
            sub_fd = ensure_target(ctx.rootfd, sub, True)
            try:
                km.mount(host_dir, fd_path(sub_fd), None, km.MS_BIND | km.MS_REC)
            finally:
                os.close(sub_fd)
            _remount_and_propagate(ctx, _bind_plan(sub, plan.flags))
    if plan.flags & km.MS_RDONLY:
        _remount_and_propagate(ctx, _bind_plan(plan.destination, plan.flags))


def mount_deferred(ctx: RootfsContext) -> None:
    """Mounts that had to wait for the cgroup namespace (unshared once the init is in its
    cgroup): a cgroup2 mounted there shows the container's cgroup as its root."""
    for plan in ctx.deferred:
        _mount_entry(ctx, plan)
    ctx.deferred = []


def _hierarchy_dir(name: str) -> str:
    if name == "":
        return "unified"
    return name[len("name=") :] if name.startswith("name=") else name


def _bind_plan(destination: str, flags: int) -> MountPlan:
    plan = MountPlan(destination, "bind", destination)
    plan.bind = True
    plan.flags = km.MS_BIND | (flags & (km.MS_RDONLY | km.MS_NOSUID | km.MS_NODEV | km.MS_NOEXEC))
    return plan


def _default_devices(ctx: RootfsContext) -> None:
    for name, major, minor in DEFAULT_DEVICES:
        _create_device(
            ctx, Device(type="c", path=f"/dev/{name}", major=major, minor=minor, file_mode=0o666, uid=0, gid=0)
        )
    devfd = open_in_root(ctx.rootfd, "/dev")
    try:
        for name, target in (*DEV_SYMLINKS, ("ptmx", "pts/ptmx")):
            try:
                os.symlink(target, name, dir_fd=devfd)
            except FileExistsError:
                pass
    finally:
        os.close(devfd)


def _create_device(ctx: RootfsContext, device: Device) -> None:
    """mknod when really privileged; inside a user namespace the kernel refuses mknod, so the
    host's node is bind-mounted onto an empty file instead."""
    what = f"create device {device.path}"
    parent_path, name = os.path.split(device.path)
    try:
        parent = ensure_target(ctx.rootfd, parent_path, True)
        try:
            _remove_existing(parent, name)
            if ctx.in_userns:
                if not os.path.exists(device.path):
                    raise ContainerError(f"{what}: no such device on the host to bind into the user namespace")
                os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent))
                target = open_in_root(ctx.rootfd, device.path)
                try:
                    km.mount(device.path, fd_path(target), None, km.MS_BIND)
                finally:
                    os.close(target)
                return
            kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[device.type]
            mode = device.file_mode if device.file_mode is not None else 0o666
            dev = os.makedev(device.major or 0, device.minor or 0)
            os.mknod(name, kind | (mode & 0o7777), dev, dir_fd=parent)
            os.chown(name, device.uid or 0, device.gid or 0, dir_fd=parent, follow_symlinks=False)
            os.chmod(name, mode & 0o7777, dir_fd=parent)  # mknod's mode was filtered by the umask
        finally:
            os.close(parent)
    except OSError as e:
        raise ContainerError(
            f"{what}: {errno.errorcode.get(e.errno or 0, 'error')} ({os.strerror(e.errno or 0)})"
        ) from None


def _remove_existing(parent: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        pass


# -- pivot_root and after -----------------------------------------------------------------


def enter_rootfs(ctx: RootfsContext) -> None:
    """pivot_root(".", "."): the old root ends up stacked on the new one and is detached, so
    no path to the host's filesystem remains (never chroot, which can be escaped)."""
    try:
        os.fchdir(ctx.rootfd)
        km.pivot_root(".", ".")
        km.umount2(".", km.MNT_DETACH)
        os.chdir("/")
    except OSError as e:
        raise ContainerError(
            f"pivot_root: {errno.errorcode.get(e.errno or 0, 'error')} ({os.strerror(e.errno or 0)})"
        ) from None
    finally:
        os.close(ctx.rootfd)
        ctx.rootfd = -1


def finish_rootfs(config: Config) -> None:
    linux = config.linux
    for path in linux.masked_paths:
        _mask(path)
    for path in linux.readonly_paths:
        _readonly(path)
    if config.root_readonly:
        _step(
            "remount / read-only",
            lambda: km.mount(None, "/", None, km.MS_BIND | km.MS_REMOUNT | km.MS_RDONLY | km.locked_flags("/")),
        )
    propagation = linux.rootfs_propagation
    if propagation in ("shared", "rshared", "unbindable", "runbindable"):
        _step(f"set / {propagation}", lambda: km.mount(None, "/", None, PROPAGATION[propagation]))


def _mask(path: str) -> None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(st.st_mode):
        _step(f"mask {path}", lambda: km.mount("tmpfs", path, "tmpfs", km.MS_RDONLY, "size=0,mode=000"))
    else:
        _step(f"mask {path}", lambda: km.mount("/dev/null", path, None, km.MS_BIND))


def _readonly(path: str) -> None:
    if not os.path.exists(path):
        return
    _step(f"bind {path} read-only", lambda: km.mount(path, path, None, km.MS_BIND | km.MS_REC))
    flags = km.MS_BIND | km.MS_REMOUNT | km.MS_RDONLY | km.locked_flags(path)
    _step(f"remount {path} read-only", lambda: km.mount(None, path, None, flags))
