"""Creating a container: the set-up sequence, in the order the kernel's rules impose.

Three processes take part, talking over the sync channel (runtime/sync.py):

  parent (the runtime)         intermediate child              init (the container's PID 1)
  --------------------         ------------------              ----------------------------
  state dir, exec fifo,
  cgroup created + limits,
  seccomp filter compiled
  fork ───────────────────────> join namespaces given by path
                                unshare(user)
                  <──────────── USERNS_READY
  write uid_map/gid_map
  MAPS_WRITTEN ───────────────> become root in the new userns
                                unshare(mnt, uts, ipc, net,
                                  pid, time), lo up
                                time offsets
                                fork ─────────────────────────> setsid
                  <──────────── INIT_PID                        rootfs: propagation, bind,
  reap intermediate             exit                              mounts[], devices
  INIT_KNOWN ─────────────────────────────────────────────────> (waits for it)
  cgroup join(init)  (meanwhile)
                  <──────────────────────────────────────────── RUN_CREATE_HOOKS
  prestart, createRuntime hooks
  CREATE_HOOKS_DONE ──────────────────────────────────────────> unshare(cgroup), cgroup2 mount
                                                                createContainer hooks
                                                                pivot_root, masked/ro paths,
                                                                hostname, sysctl, console
                  <──────────────────────────────────────────── CREATED
  state.json, pid file                                          block opening exec.fifo ...
  (exit: `create` is done)                                      ... `start` opens it: write 0
                                                                startContainer hooks
                                                                rlimits, user, caps, nnp
                                                                seccomp, close fds, execve

Why this order:
- The user namespace comes first: every other new namespace is then owned by it, so the
  container's root has capabilities over them and over nothing else. Namespaces joined by
  path are joined before it, while we still hold privileges over the host's namespaces.
- Only the parent, outside the new user namespace, may write the child's ID maps.
- The init is moved into its cgroup before it unshares the cgroup namespace, so the
  container sees its own cgroup as "/". The parent moves it while the init builds its
  rootfs: the kernel makes the first migration wait an RCU grace period (~10 ms), which
  would otherwise stall the whole set-up. A fresh cgroup2 mount waits for the namespace.
- CLONE_NEWPID and CLONE_NEWTIME apply to children only: hence the second fork, and the
  time offsets written before any process enters the time namespace.
- createRuntime hooks run in the runtime's namespaces before pivot_root, createContainer
  hooks in the container's namespaces before pivot_root, as the spec says.
- Seccomp is loaded last so that its filter does not police our own set-up.
"""

from __future__ import annotations

import os
import sys
import time

from stockade.errors import ContainerError
from stockade.kernel import namespaces as kns
from stockade.kernel import process as kproc
from stockade.kernel import signals
from stockade.kernel.net import interface_up  # (imported here: the child cannot import from the host)
from stockade.runtime import rootfs, sync
from stockade.runtime.finalize import (
    apply_oom_score_adj,
    apply_rlimits,
    chdir_cwd,
    drop_privileges,
    find_executable,
    process_env,
)
from stockade.runtime.hooks import run_hooks
from stockade.runtime.idmap import write_id_maps
from stockade.runtime.lsm import LsmPlan, apply_lsm
from stockade.runtime.security import SECCOMP_CACHE, Seccomp, prepare_lsm, prepare_seccomp
from stockade.runtime.state import CONFIG_FILE, EXEC_FIFO, State
from stockade.runtime.trace import trace
from stockade.spec.runtime import Config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class CreateOptions:
    __slots__ = (
        "before_namespaces",
        "console_fd",
        "console_socket",
        "lsm",
        "no_new_keyring",
        "pid_file",
        "preserve_fds",
    )

    def __init__(
        self,
        console_socket: str | None = None,
        pid_file: str | None = None,
        preserve_fds: int = 0,
        no_new_keyring: bool = False,
    ) -> None:
        self.console_socket = console_socket
        self.console_fd: int | None = None  # an already-connected console socket (our own proxy)
        self.lsm: LsmPlan | None = None  # made by the parent, applied by the init before exec
        # The engine's step once the container's user namespace exists and is mapped (the pid
        # given is a process in it), before the other namespaces are made: the engine mounts
        # the rootfs there, idmapped through /proc/PID/ns/user (no user namespace of its own
        # to make), and in time for the init's mount namespace to copy it.
        self.before_namespaces: Callable[[int], None] | None = None
        self.pid_file = pid_file
        self.preserve_fds = preserve_fds
        self.no_new_keyring = no_new_keyring


def create_container(
    root: str, container_id: str, bundle: str, config: Config, raw_config: bytes, opts: CreateOptions
) -> State:
    """The parent's half. Returns the saved state of a container in status "created";
    on any failure removes everything it made (process, cgroup, state dir) and raises."""
    if config.process is None:
        raise ContainerError("process: is required to create a container")
    state = _make_state_dir(root, container_id, bundle, config)
    cleanup = _Cleanup(state)
    try:
        _write_file(os.path.join(state.dir, CONFIG_FILE), raw_config)
        os.mkfifo(state.fifo_path(), 0o622)
        os.chmod(state.fifo_path(), 0o622)  # mkfifo's mode went through the umask
        trace("parent: state dir and exec fifo made")
        cgroup = _create_cgroup(state, config, cleanup)
        trace("parent: cgroup made, limits applied")
        seccomp = prepare_seccomp(config, os.path.join(root, SECCOMP_CACHE))
        cleanup.seccomp = seccomp
        if opts.lsm is None:
            opts.lsm = prepare_lsm(config)
        console = _console_for(config.process.terminal, opts.console_socket, opts.console_fd)
        hooks = config.hooks_of("createContainer") + config.hooks_of("startContainer")
        preload_for_children(hooks, console is not None or (seccomp is not None and seccomp.listener is not None))
        parent, child = sync.channel_pair()
        kproc.set_child_subreaper()  # the init is reparented to us when the intermediate exits
        trace("parent: state dir, cgroup, seccomp ready; fork")
        pid = os.fork()
        if pid == 0:
            try:  # a child never returns into the runtime's code
                parent.close()
                _intermediate(child, state, config, opts, console, seccomp)
            finally:
                os._exit(1)
        child.close()
        if console is not None:
            os.close(console)
        cleanup.pids.append(pid)
        _parent_half(parent, pid, state, config, cgroup, cleanup, opts.before_namespaces)
        parent.close()
        cleanup.release()
    except BaseException as e:
        cleanup.run()
        if isinstance(e, sync.ChildFailed):
            raise ContainerError(str(e) or "container init exited during set-up") from None
        raise
    if opts.pid_file:
        _write_file(opts.pid_file, str(state.pid).encode(), atomic=True)
    return state


def _parent_half(
    ch: sync.Channel,
    pid: int,
    state: State,
    config: Config,
    cgroup: Any,
    cleanup: _Cleanup,
    before_namespaces: Callable[[int], None] | None,
) -> None:
    linux = config.linux
    if linux.new_namespace("user"):
        ch.expect(sync.USERNS_READY)
        write_id_maps(pid, linux.uid_mappings, linux.gid_mappings)
        trace("parent: ID maps written")
    if before_namespaces is not None:
        before_namespaces(pid)  # (the intermediate waits for MAPS_WRITTEN to make the rest)
    ch.send(sync.MAPS_WRITTEN)
    init_pid = int(ch.expect(sync.INIT_PID))
    cleanup.pids.append(init_pid)
    os.waitpid(pid, 0)  # the intermediate exits once it has reported the init's pid
    cleanup.pids.remove(pid)
    ch.send(sync.INIT_KNOWN)
    state.pid = init_pid
    state.start_time = kproc.proc_start_time(init_pid) or 0
    trace(f"parent: init is pid {init_pid}")
    if cgroup is not None:
        # The first migration after a quiet spell waits for an RCU grace period (~10 ms) unless
        # primed (cgroups.prime_migration, since the cgroup was made); the init builds its
        # rootfs meanwhile, and unshares its cgroup namespace only once we say so.
        cgroup.join(init_pid)
        trace("parent: init joined its cgroup")
        from stockade.runtime.cgroups import end_priming

        end_priming()
    ch.expect(sync.RUN_CREATE_HOOKS)
    hook_state = _hook_state(state, "creating")
    run_hooks("prestart", config.hooks_of("prestart"), hook_state)
    run_hooks("createRuntime", config.hooks_of("createRuntime"), hook_state)
    ch.send(sync.CREATE_HOOKS_DONE, str(init_pid))  # the init cannot see its own host pid
    ch.expect(sync.CREATED)
    state.save()
    trace("parent: created")


def _hook_state(state: State, status: str) -> dict[str, Any]:
    doc = state.oci_state()
    doc["status"] = status
    doc["pid"] = state.pid
    return doc


class _Cleanup:
    """Undo a half-made container: kill its processes, remove its cgroup and state dir."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.pids: list[int] = []
        self.cgroup: Any = None
        self.seccomp: Seccomp | None = None

    def release(self) -> None:
        if self.seccomp is not None:
            self.seccomp.release()

    def run(self) -> None:
        self.release()
        for pid in self.pids:
            try:
                os.kill(pid, signals.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        if self.cgroup is not None:
            try:
                self.cgroup.destroy()
            except ContainerError:
                pass
        remove_state_dir(self.state.dir)


def remove_state_dir(directory: str) -> None:
    for name in (EXEC_FIFO, CONFIG_FILE, "state.json", "state.json.tmp"):
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        pass


def _make_state_dir(root: str, container_id: str, bundle: str, config: Config) -> State:
    os.makedirs(root, mode=0o711, exist_ok=True)
    directory = os.path.join(root, container_id)
    try:
        os.mkdir(directory, 0o711)  # atomic: the first create of an ID wins
    except FileExistsError:
        raise ContainerError(f"container {container_id} already exists") from None
    os.chmod(directory, 0o711)  # the container's root (a mapped uid) must reach exec.fifo
    state = State(container_id, directory, bundle, config.root_path)
    state.annotations = dict(config.annotations)
    state.created = _now_rfc3339()
    return state


def _now_rfc3339() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"


def _write_file(path: str, data: bytes, atomic: bool = False) -> None:
    target = path + ".tmp" if atomic else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    if atomic:
        os.rename(target, path)


def _create_cgroup(state: State, config: Config, cleanup: _Cleanup) -> Any:
    from stockade.runtime import cgroups

    layout = cgroups.detect_layout()
    if layout.kind == "none":
        return None
    own = cgroups.own_cgroups()
    if not kns.host_root():  # (root of a rootless user namespace owns no cgroups either)
        delegated = cgroups.delegated_parent(layout, own) if layout.kind == "unified" else None
        if delegated is None:
            if not any(k != "devices" for k in (config.linux.resources or {})):
                return None  # nothing asked that a cgroup would give
            print(
                "stockade-runtime: warning: running rootless without a delegated cgroup: no resource limits",
                file=sys.stderr,
            )
            return None
        path = f"{delegated.rstrip('/')}/stockade-{state.id}"
    else:
        path = cgroups.resolve_path(config.linux.cgroups_path, state.id, own.get("", "/"))
    manager = cgroups.manager_for(layout).for_path(layout, own, path)
    manager.create()
    cleanup.cgroup = manager
    # From here to the init's join (~8 ms): the longer, the less the join waits.
    cgroups.prime_migration(layout, own)
    manager.apply(config.linux.resources, config.linux.devices)
    state.cgroup_paths = dict(manager.paths)
    return manager


def _console_for(terminal: bool, path: str | None, connected: int | None) -> int | None:
    if not terminal:
        return None
    return connected if connected is not None else _connect_console(path)


def _connect_console(path: str | None) -> int:
    if not path:
        raise ContainerError("process.terminal is true but no --console-socket was given")
    from stockade.kernel import unixsock

    try:
        return unixsock.connect(path)
    except OSError as e:
        raise ContainerError(f"connect to console socket {path}: {os.strerror(e.errno or 0)}") from None


# -- child: the intermediate process --------------------------------------------------------


def _intermediate(
    ch: sync.Channel, state: State, config: Config, opts: CreateOptions, console: int | None, seccomp: Seccomp | None
) -> None:
    try:
        kproc.set_parent_death_signal(signals.SIGKILL)  # the runtime died: so do we
        linux = config.linux
        join_namespaces(config)
        if linux.new_namespace("user"):
            kns.unshare(kns.CLONE_NEWUSER)
            trace("intermediate: user namespace unshared")
            ch.send(sync.USERNS_READY)
        ch.expect(sync.MAPS_WRITTEN)
        if linux.namespace("user") is not None:
            _become_root()
        flags = 0
        for ns in linux.namespaces:
            # The cgroup namespace is the init's to unshare, once it has joined its cgroup.
            if ns.path is None and ns.type not in ("user", "cgroup"):
                flags |= kns.NAMESPACES[ns.type][0]
        kns.unshare(flags)
        trace("intermediate: namespaces unshared")
        if flags & kns.CLONE_NEWNET:
            # A new network namespace starts with lo down; bring it up as runc does, while we
            # hold every capability over the namespace (it belongs to the container's userns).
            interface_up("lo")
        if linux.time_offsets:
            kns.write_time_offsets(linux.time_offsets)
        pid = os.fork()
        if pid == 0:
            try:
                _init(ch, state, config, opts, console, seccomp)
            finally:
                os._exit(127)
        ch.send(sync.INIT_PID, str(pid))
        os._exit(0)
    except BaseException as e:
        _report_and_exit(ch, e)


def join_namespaces(config: Config) -> None:
    """setns into every namespace given by path: the user namespace first (it owns the
    others), the rest while we still have privileges over the namespaces they belong to."""
    ordered = sorted((ns for ns in config.linux.namespaces if ns.path), key=lambda ns: ns.type != "user")
    fds = []
    try:
        for ns in ordered:
            assert ns.path is not None
            try:
                fds.append((os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC), ns))
            except OSError as e:
                raise ContainerError(f"open {ns.type} namespace {ns.path}: {os.strerror(e.errno or 0)}") from None
        for fd, ns in fds:
            try:
                kns.setns(fd, kns.NAMESPACES[ns.type][0], ns.path or "")
            except OSError as e:
                raise ContainerError(f"join {ns.type} namespace {ns.path}: {os.strerror(e.errno or 0)}") from None
    finally:
        for fd, _ns in fds:
            os.close(fd)


def _become_root() -> None:
    """In a user namespace, act as its root (if root is mapped) so files we create are root's."""
    try:
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    except OSError:
        pass  # root is not mapped: keep the IDs we have (the capabilities are ours anyway)


def _report_and_exit(ch: sync.Channel, e: BaseException) -> None:
    try:
        ch.send(sync.ERROR, describe(e))
    finally:
        os._exit(1)


def describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno:
        import errno as errno_mod

        code = errno_mod.errorcode.get(e.errno, "")
        detail = f" {e.filename}" if e.filename and str(e.filename) not in str(e.strerror) else ""
        return f"{e.strerror}{detail}" + (f" ({code})" if code and code not in str(e.strerror) else "")
    return str(e) or type(e).__name__


# -- child: the container's init ------------------------------------------------------------


def _init(
    ch: sync.Channel, state: State, config: Config, opts: CreateOptions, console: int | None, seccomp: Seccomp | None
) -> None:
    fifo_fd = -1
    process = config.process
    assert process is not None
    try:
        os.setsid()
        ctx = rootfs.RootfsContext(config, state.bundle, state.cgroup_paths)
        rootfs.prepare_rootfs(ctx)
        trace("init: rootfs prepared")
        # The intermediate and we write to the same pipe: speak only once the parent has
        # read its INIT_PID, or our message could overtake it.
        ch.expect(sync.INIT_KNOWN)
        state_dir = os.open(state.dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        ch.send(sync.RUN_CREATE_HOOKS)
        state.pid = int(ch.expect(sync.CREATE_HOOKS_DONE))
        if config.linux.new_namespace("cgroup"):
            kns.unshare(kns.CLONE_NEWCGROUP)  # we are in our cgroup now: it becomes our "/"
        rootfs.mount_deferred(ctx)
        run_hooks("createContainer", config.hooks_of("createContainer"), _hook_state(state, "creating"))
        rootfs.enter_rootfs(ctx)
        trace("init: pivoted")
        rootfs.finish_rootfs(config)
        _set_names_and_sysctls(config)
        if console is not None:
            _setup_console(console, process.console_size)
        if config.linux.personality == "LINUX32":
            kproc.personality(kproc.PER_LINUX32)
        apply_oom_score_adj(process)
        apply_rlimits(process)
        if not opts.no_new_keyring:
            # Keys are not namespaced: without its own session keyring the container would share
            # the runtime caller's (the keys of whoever ran us).
            kproc.join_session_keyring(f"_ses.{state.id}")
        chdir_cwd(process)
        executable = find_executable(process)
        trace("init: created, waiting for start")
        ch.send(sync.CREATED)
        ch.close()
        # Wait for `start`: opening a fifo for writing blocks until someone opens it to read.
        fifo_fd = os.open(EXEC_FIFO, os.O_WRONLY | os.O_CLOEXEC, dir_fd=state_dir)
        os.close(state_dir)  # the last handle on the host's filesystem: gone before exec
        os.write(fifo_fd, b"\0")
        run_hooks("startContainer", config.hooks_of("startContainer"), _hook_state(state, "created"))
        # Only stdio and the preserved fds cross exec; everything else is close-on-exec.
        kproc.close_range(3 + opts.preserve_fds, flags=kproc.CLOSE_RANGE_CLOEXEC)
        if opts.lsm is not None:
            apply_lsm(opts.lsm)  # an exec attribute: takes effect at execve
        load = (lambda: seccomp.load(_hook_state(state, "running"))) if seccomp else None
        drop_privileges(process, load)
        trace(f"init: execve {executable}")
        os.execve(executable, process.args, process_env(process))
    except BaseException as e:
        if fifo_fd < 0:
            _report_and_exit(ch, e)
        try:
            os.write(fifo_fd, describe(e).encode())
        finally:
            os._exit(127)


def preload_for_children(hooks: list, console: bool) -> None:
    """Import, before forking, every module the children may need. Once a child runs as the
    container's root (a mapped uid with no rights on the host's files) or has pivoted or
    setns'd into the container's mount namespace, the host's Python library may be out of
    reach: an import there fails (seen with an interpreter installed under /root)."""
    if hooks:
        import subprocess  # noqa: F401
    if console:
        import socket  # noqa: F401
        import struct  # noqa: F401

        from stockade.kernel import pty  # noqa: F401


def _set_names_and_sysctls(config: Config) -> None:
    try:
        if config.hostname:
            kproc.sethostname(config.hostname)
        if config.domainname:
            kproc.setdomainname(config.domainname)
    except OSError as e:
        raise ContainerError(f"set hostname: {os.strerror(e.errno or 0)}") from None
    for key, value in config.linux.sysctl.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            kproc.write_proc_file(path, value)
        except OSError as e:
            raise ContainerError(f"linux.sysctl: set {key}={value}: {os.strerror(e.errno or 0)}") from None


def _setup_console(sock_fd: int, size: tuple[int, int] | None) -> None:
    """Open a pty on the container's own devpts, hand the master to the console socket
    (SCM_RIGHTS, as runc does) and make the slave our stdio and controlling terminal."""
    import socket
    import struct

    from stockade.kernel import pty

    ptmx = "/dev/ptmx" if os.path.exists("/dev/ptmx") else "/dev/pts/ptmx"
    master, slave = pty.open_pty(ptmx)
    if size and size[0] and size[1]:
        pty.set_winsize(master, struct.pack("HHHH", size[0], size[1], 0, 0))
    sock = socket.socket(fileno=sock_fd)
    try:
        socket.send_fds(sock, [b"/dev/ptmx"], [master])
    except OSError as e:
        raise ContainerError(f"send pty master to console socket: {os.strerror(e.errno or 0)}") from None
    finally:
        sock.close()
        os.close(master)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)
    pty.make_controlling_tty(0)
