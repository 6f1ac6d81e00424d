"""The runtime's verbs on one container: create, start, run, kill, delete, state, list, ps.

Every verb loads the state, derives the status from the kernel, checks that the verb is
allowed in that status (one clear error if not), then acts. Signals go through pidfds
opened after checking the recorded start time, so a recycled PID is never signalled.
"""

from __future__ import annotations

import os
import select
import sys
import time

from stockade import jsonfast
from stockade.errors import ContainerError, SpecError
from stockade.kernel import process as kproc
from stockade.kernel import signals
from stockade.runtime.create import CreateOptions, create_container, remove_state_dir
from stockade.runtime.hooks import run_hooks
from stockade.runtime.state import CONFIG_FILE, State, list_ids
from stockade.runtime.trace import trace
from stockade.spec.runtime import Config, load_config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# status -> verbs allowed in it (youki's can_start/can_kill/... as a table)
ALLOWED = {
    "creating": {"delete-force"},
    "created": {"start", "kill", "delete", "delete-force", "exec", "ps", "pause", "update", "events"},
    "running": {"kill", "delete-force", "exec", "ps", "pause", "update", "events"},
    "paused": {"kill", "delete-force", "ps", "resume", "update", "events"},
    "stopped": {"delete", "delete-force", "ps"},
}


def require(state: State, verb: str) -> str:
    status = state.status()
    if verb not in ALLOWED[status]:
        label = verb.replace("-force", "")
        raise ContainerError(f"container {state.id} is {status}, cannot {label} it")
    return status


def load_bundle(bundle: str) -> tuple[Config, bytes]:
    bundle = os.path.abspath(bundle)
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ContainerError(f"read {path}: {os.strerror(e.errno or 0)}") from None
    try:
        data = jsonfast.loads(raw)
    except ValueError as e:
        raise SpecError("", f"{path}: invalid JSON: {e}") from None
    return load_config(data, bundle), raw


def create(root: str, container_id: str, bundle: str, opts: CreateOptions) -> State:
    return _create(root, container_id, bundle, opts)[0]


def _create(
    root: str, container_id: str, bundle: str, opts: CreateOptions, proxy_terminal: bool = False
) -> tuple[State, Config, Any]:
    """create, and with `proxy_terminal` a ConsoleProxy for a terminal with no console socket."""
    from stockade.runtime.security import prepare_lsm
    from stockade.runtime.state import check_id

    check_id(container_id)
    trace("create: start")
    config, raw = load_bundle(bundle)
    trace("create: config loaded and validated")
    opts.lsm = prepare_lsm(config)  # refuse what the host cannot enforce before anything is made
    proxy = None
    if proxy_terminal and config.process is not None and config.process.terminal and not opts.console_socket:
        from stockade.runtime.console import ConsoleProxy, our_terminal_size

        proxy = ConsoleProxy()
        opts.console_fd = proxy.child_end
        config.process.console_size = our_terminal_size() or config.process.console_size
    return create_container(root, container_id, os.path.abspath(bundle), config, raw, opts), config, proxy


def start(root: str, container_id: str, config: Config | None = None) -> State:
    state = State.load(root, container_id)
    require(state, "start")
    _release_init(state)
    os.unlink(state.fifo_path())
    config = config or load_config(state.config(), state.bundle)
    try:
        run_hooks("poststart", config.hooks_of("poststart"), state.oci_state())
    except ContainerError as e:
        print(f"stockade-runtime: warning: {e}", file=sys.stderr)
    return state


def _release_init(state: State) -> None:
    """Open the exec fifo for reading: the init's blocked open for writing completes, it writes
    one byte, then execs (closing its end) or writes why it could not."""
    fifo = os.open(state.fifo_path(), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    pidfd = kproc.pidfd_open(state.pid)
    received = b""
    try:
        poller = select.poll()
        poller.register(fifo, select.POLLIN | select.POLLHUP)
        poller.register(pidfd, select.POLLIN)
        while True:
            events = dict(poller.poll())
            if fifo in events:
                chunk = os.read(fifo, 4096)
                if chunk:
                    received += chunk
                    continue
                if received:
                    break  # EOF after the byte: the init has exec'd (or reported failure)
            if pidfd in events and fifo not in events:
                raise ContainerError("container init exited before it could start")
    finally:
        os.close(fifo)
        os.close(pidfd)
    if received[1:]:
        os.unlink(state.fifo_path())
        raise ContainerError(received[1:].decode(errors="replace"))


def parse_signal(value: str) -> int:
    import signal

    if value.isdigit():
        number = int(value)
        if not 0 < number < signal.NSIG:
            raise ContainerError(f"invalid signal number {value}")
        return number
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ContainerError(f'unknown signal "{value}"') from None


def kill(root: str, container_id: str, sig: int, all_processes: bool = False) -> None:
    state = State.load(root, container_id)
    status = require(state, "kill")
    if all_processes:
        manager = cgroup_manager(state)
        if manager is None:
            raise ContainerError("--all: the container has no cgroup to find its processes in")
        manager.kill_all(sig)
    else:
        signal_init(state, sig)
    if status == "paused" and sig == signals.SIGKILL:
        manager = cgroup_manager(state)
        if manager is not None:
            manager.freeze(False)


def signal_init(state: State, sig: int) -> None:
    try:
        pidfd = kproc.pidfd_open(state.pid)
    except ProcessLookupError:
        return
    try:
        if kproc.proc_start_time(state.pid) != state.start_time:
            return  # the pid was recycled: the container is gone
        kproc.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def wait_exit(pid: int, start_time: int, timeout: float) -> bool:
    """Wait for a process that need not be our child; True once it is gone (or a zombie)."""
    try:
        pidfd = kproc.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        deadline = time.monotonic() + timeout
        while kproc.proc_start_time(pid) == start_time:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            select.select([pidfd], [], [], min(remaining, 0.05))
        return True
    finally:
        os.close(pidfd)


def cgroup_manager(state: State) -> Any:
    """The driver for the paths the container recorded: one cgroup2 path means v2."""
    if not state.cgroup_paths:
        return None
    if set(state.cgroup_paths) == {""}:
        from stockade.runtime.cgroups.v2 import V2Manager

        return V2Manager(state.cgroup_paths)
    from stockade.runtime.cgroups.v1 import V1Manager

    return V1Manager(state.cgroup_paths)


def delete(root: str, container_id: str, force: bool = False, config: Config | None = None) -> None:
    state = State.load(root, container_id)
    status = require(state, "delete-force" if force else "delete")
    if status != "stopped" and status != "creating":
        manager = cgroup_manager(state)
        if manager is not None and status == "paused":
            manager.freeze(False)
        signal_init(state, signals.SIGKILL)
        if not wait_exit(state.pid, state.start_time, 10):
            raise ContainerError(f"init process {state.pid} does not die")
    destroy(state, config)


def destroy(state: State, config: Config | None = None) -> None:
    """Remove what the container holds (cgroup, state dir), then run its poststop hooks."""
    manager = cgroup_manager(state)
    if manager is not None:
        manager.destroy()
    config = config or _saved_config_with_poststop(state)
    hook_state = state.oci_state()
    hook_state["status"] = "stopped"
    remove_state_dir(state.dir)
    if config is not None:
        try:
            run_hooks("poststop", config.hooks_of("poststop"), hook_state)
        except ContainerError as e:
            print(f"stockade-runtime: warning: {e}", file=sys.stderr)


def _saved_config_with_poststop(state: State) -> Config | None:
    """The saved config, if it has poststop hooks: a glance at the text first, since reading
    it whole (the seccomp profile is most of it) costs ~1 ms of every container's exit."""
    try:
        with open(os.path.join(state.dir, CONFIG_FILE), "rb") as f:
            raw = f.read()
        if b'"poststop"' not in raw:
            return None
        return load_config(jsonfast.loads(raw), state.bundle)
    except (OSError, ValueError, SpecError):
        return None


def ps(root: str, container_id: str) -> list[int]:
    state = State.load(root, container_id)
    require(state, "ps")
    manager = cgroup_manager(state)
    if manager is not None:
        return sorted(manager.pids())
    return _pids_in_pidns(state)


def _pids_in_pidns(state: State) -> list[int]:
    """Without a cgroup: every process whose pid namespace is the init's."""
    from stockade.kernel.namespaces import ns_inode

    try:
        target = ns_inode(state.pid, "pid")
    except OSError:
        return []
    if target == ns_inode("self", "pid"):
        return [state.pid]
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if ns_inode(name, "pid") == target:
                    found.append(int(name))
            except OSError:
                continue
    return sorted(found)


def list_states(root: str) -> list[State]:
    states = []
    for container_id in list_ids(root):
        try:
            states.append(State.load(root, container_id))
        except ContainerError:
            continue
    return states


def run(root: str, container_id: str, bundle: str, opts: CreateOptions, detach: bool) -> int:
    """create + start; in the foreground also wait, forward signals, delete, and return the
    exit code (128+N for a signal, as shells report it)."""
    state, config, proxy = _create(root, container_id, bundle, opts, proxy_terminal=not detach)
    try:
        forward = _forward_signals(state) if not detach else None
        start(root, container_id, config)
    except BaseException:
        delete(root, container_id, force=True, config=config)
        raise
    if detach:
        return 0
    trace("run: started, waiting")
    try:
        if proxy is not None:
            proxy.receive_master()
            proxy.run()
        code = _wait_child(state.pid)
        trace("run: container exited")
    finally:
        if forward:
            forward()
        delete(root, container_id, force=True, config=config)
    return code


def _forward_signals(state: State) -> Any:
    previous: dict[int, Any] = {}
    for sig in signals.FORWARDED:
        previous[sig] = signals.set_handler(sig, lambda s, _f: signal_init(state, s))

    def restore() -> None:
        for sig, handler in previous.items():
            signals.set_handler(sig, handler)

    return restore


def _wait_child(pid: int) -> int:
    """Reap children (we are a subreaper) until `pid` exits; its status as an exit code."""
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 255
        except InterruptedError:
            continue
        if got == pid:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
