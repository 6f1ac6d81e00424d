"""`exec`: start another process inside a running container.

  parent (the runtime)                 intermediate child            new process
  --------------------                 ------------------            -----------
  open /proc/PID/ns/*, check the
  init is still the one we started
  fork ─────────────────────────────> not dumpable
  cgroup join(intermediate)
  MAPS_WRITTEN (= go) ──────────────> setns user, then the rest
                                      fork ────────────────────────> setsid, console
                     <─────────────── INIT_PID                        rlimits, cwd, user, caps,
  reap intermediate                   exit                            nnp, seccomp, close fds
                     <──────────────────────────────────────────────  execve (EOF: it worked)
                                                                      or ERROR <why>
The intermediate is not dumpable while it holds the container's namespaces and our memory,
so nothing inside can open /proc/<it>/mem or /proc/<it>/exe (the CVE-2019-5736 class).
"""

from __future__ import annotations

import os

from stockade.errors import ContainerError
from stockade.kernel import namespaces as kns
from stockade.kernel import process as kproc
from stockade.kernel import signals
from stockade.kernel.mounts import O_PATH
from stockade.runtime import sync
from stockade.runtime.container import _wait_child, cgroup_manager, require
from stockade.runtime.create import _console_for, _report_and_exit, _setup_console, describe, preload_for_children
from stockade.runtime.finalize import (
    apply_oom_score_adj,
    apply_rlimits,
    chdir_cwd,
    drop_privileges,
    find_executable,
    process_env,
)
from stockade.runtime.lsm import LsmPlan, apply_lsm
from stockade.runtime.security import SECCOMP_CACHE, Seccomp, prepare_lsm, prepare_seccomp
from stockade.runtime.state import State
from stockade.spec.runtime import Config, Process, load_config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class ExecOptions:
    __slots__ = ("console_fd", "console_socket", "detach", "lsm", "pid_file", "preserve_fds")

    def __init__(self, console_socket: str | None, pid_file: str | None, detach: bool, preserve_fds: int) -> None:
        self.console_socket = console_socket
        self.console_fd: int | None = None
        self.lsm: LsmPlan | None = None
        self.pid_file = pid_file
        self.detach = detach
        self.preserve_fds = preserve_fds


def container_config(state: State) -> Config:
    return load_config(state.config(), state.bundle)


def exec_process(state: State, config: Config, process: Process, opts: ExecOptions) -> int:
    require(state, "exec")
    ns_fds = _open_namespaces(state, config)
    # The init's root, to enter after joining its mount namespace: setns(2) puts us at the
    # namespace's root mount, which is the container's rootfs only when the runtime that
    # created it was not itself chrooted (as it is in the cgroup v2 test VM).
    root_fd = os.open(f"/proc/{state.pid}/root", O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    console = None
    seccomp = None
    try:
        if kproc.proc_start_time(state.pid) != state.start_time:
            raise ContainerError(f"container {state.id} is stopped, cannot exec in it")
        manager = cgroup_manager(state)
        seccomp = prepare_seccomp(config, os.path.join(os.path.dirname(state.dir), SECCOMP_CACHE))
        opts.lsm = prepare_lsm(config)
        proxy = None
        if process.terminal and not opts.console_socket and not opts.detach:
            from stockade.runtime.console import ConsoleProxy, our_terminal_size

            proxy = ConsoleProxy()
            opts.console_fd = proxy.child_end
            process.console_size = our_terminal_size() or process.console_size
        console = _console_for(process.terminal, opts.console_socket, opts.console_fd)
        preload_for_children([], console is not None or (seccomp is not None and seccomp.listener is not None))
        parent, child = sync.channel_pair()
        kproc.set_child_subreaper()
        pid = os.fork()
        if pid == 0:
            try:  # a child never returns into the runtime's code
                parent.close()
                _intermediate(child, ns_fds, root_fd, process, opts, console, seccomp, state)
            finally:
                os._exit(1)
        child.close()
    finally:
        for fd, _kind in ns_fds:
            os.close(fd)
        os.close(root_fd)
        if console is not None:
            os.close(console)
        if seccomp is not None:
            seccomp.release()
    try:
        if manager is not None:
            manager.join(pid)
        parent.send(sync.MAPS_WRITTEN)
        new_pid = int(parent.expect(sync.INIT_PID))
        os.waitpid(pid, 0)
        _wait_exec(parent, new_pid)
    except sync.ChildFailed as e:
        _reap_quietly(pid)
        raise ContainerError(str(e) or "the process exited during set-up") from None
    finally:
        parent.close()
    if opts.pid_file:
        with open(opts.pid_file + ".tmp", "w") as f:
            f.write(str(new_pid))
        os.rename(opts.pid_file + ".tmp", opts.pid_file)
    if opts.detach:
        return 0
    previous = _forward(new_pid)
    try:
        if proxy is not None:
            proxy.receive_master()
            proxy.run()
        return _wait_child(new_pid)
    finally:
        for sig, handler in previous.items():
            signals.set_handler(sig, handler)


def _wait_exec(ch: sync.Channel, pid: int) -> None:
    """EOF on the channel means execve closed the new process's end: it runs."""
    try:
        name, arg = ch.recv()
    except sync.ChildFailed:
        return
    _reap_quietly(pid)
    raise sync.ChildFailed(arg if name == sync.ERROR else f"protocol error: {name}")


def _reap_quietly(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _forward(pid: int) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    for sig in signals.FORWARDED:
        previous[sig] = signals.set_handler(sig, lambda s, _f: _kill_quietly(pid, s))
    return previous


def _kill_quietly(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _open_namespaces(state: State, config: Config) -> list[tuple[int, str]]:
    """fds for each of the container's namespaces that differs from ours, user first."""
    fds: list[tuple[int, str]] = []
    kinds = sorted((ns.type for ns in config.linux.namespaces), key=lambda t: t != "user")
    try:
        for kind in kinds:
            name = kns.NAMESPACES[kind][1]
            path = f"/proc/{state.pid}/ns/{name}"
            if kns.ns_inode(state.pid, name) == kns.ns_inode("self", name):
                continue  # already ours (setns into our own user namespace is EINVAL)
            fds.append((os.open(path, os.O_RDONLY | os.O_CLOEXEC), kind))
    except OSError as e:
        for fd, _kind in fds:
            os.close(fd)
        raise ContainerError(f"container {state.id}: open its namespaces: {os.strerror(e.errno or 0)}") from None
    return fds


def _intermediate(
    ch: sync.Channel,
    ns_fds: list[tuple[int, str]],
    root_fd: int,
    process: Process,
    opts: ExecOptions,
    console: int | None,
    seccomp: Seccomp | None,
    state: State,
) -> None:
    try:
        kproc.set_parent_death_signal(signals.SIGKILL)
        kproc.set_dumpable(False)
        ch.expect(sync.MAPS_WRITTEN)
        for fd, kind in ns_fds:
            kns.setns(fd, kns.NAMESPACES[kind][0], kind)
        os.fchdir(root_fd)
        os.chroot(".")  # the container's root, exactly as its init sees it
        os.close(root_fd)
        pid = os.fork()
        if pid == 0:
            try:
                _new_process(ch, process, opts, console, seccomp, state)
            finally:
                os._exit(127)
        ch.send(sync.INIT_PID, str(pid))
        os._exit(0)
    except BaseException as e:
        _report_and_exit(ch, e)


def _new_process(
    ch: sync.Channel, process: Process, opts: ExecOptions, console: int | None, seccomp: Seccomp | None, state: State
) -> None:
    try:
        os.setsid()
        if console is not None:
            _setup_console(console, process.console_size)
        apply_oom_score_adj(process)
        apply_rlimits(process)
        chdir_cwd(process)
        executable = find_executable(process)
        # Only stdio and the preserved fds cross exec; everything else is close-on-exec.
        kproc.close_range(3 + opts.preserve_fds, flags=kproc.CLOSE_RANGE_CLOEXEC)
        if opts.lsm is not None:
            apply_lsm(opts.lsm)
        load = (lambda: seccomp.load(state.oci_state())) if seccomp else None
        drop_privileges(process, load)
        # The channel's fds are close-on-exec: a successful execve is the EOF the parent waits for.
        os.execve(executable, process.args, process_env(process))
    except BaseException as e:
        try:
            ch.send(sync.ERROR, describe(e))
        finally:
            os._exit(127)
