"""The monitor host: one warm process per run root that forks a monitor per container start.

A monitor that is a fresh interpreter costs ~9 MB of private memory and ~40 ms to start; a fork
of a process that has already imported the runtime shares those pages (copy-on-write, kept
clean by gc.freeze) with every other monitor and starts in about a millisecond. The host is
itself forked from the first CLI that needs it (no exec either), listens on
<runroot>/monitor-host.sock, and exits after a while without requests or monitors. Monitors
run in their own sessions and outlive the host: killing it never touches a container.

Request: one JSON line {"root", "id", "hello"}; the host forks, and the monitor keeps the
connection as its first client (so a foreground `run` misses none of the output).

The host also serves whole commands (request line `cli 2`): bin/stockade, a small client that
imports next to nothing, sends its argv, environment, working directory and stdio descriptors
(SCM_RIGHTS); a fork of the host runs the command with everything already imported and sends
back the exit status. The serving code belongs to the CLI layer, which registers it here
(`set_cli_handler`) before the host is forked. A client that dies takes its worker with it
(SIGKILL, as if the command itself had been killed).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stockade.engine import stream
from stockade.kernel import process as kproc

SOCKET = "monitor-host.sock"
IDLE_SECONDS = float(os.environ.get("STOCKADE_HOST_IDLE", "30"))
# A spare worker is kept while commands come (it holds ~3.5 MB of its own pages, rehearsed):
# it goes after this long without one, and the next command brings the next spare.
SPARE_SECONDS = 2.0
REHEARSALS = 64  # of a monitor's steps, in the zygote (monitor.rehearse): enough to warm them
ZYGOTE_SOCKET = "monitor-zygote.sock"
CLI_REQUEST = b"cli 2\n"  # (the protocol's version: a host of another one answers nothing)

_in_worker = False  # this process is a command worker (see serving_commands)
_host_runroot = Path(".")  # the serving host's run root (its working directory)
_preforked: socket.socket | None = None  # a monitor-to-be, waiting for its container
# The CLI layer's command server: serve(conn) in a fresh fork, warm_up() once in the host,
# rehearse() in a spare worker while it waits (see _SpareWorker).
_cli_handler: tuple[Callable[[socket.socket], None], Callable[[], None], Callable[[], None]] | None = None


def set_cli_handler(
    serve: Callable[[socket.socket], None], warm_up: Callable[[], None], rehearse: Callable[[], None]
) -> None:
    global _cli_handler
    _cli_handler = (serve, warm_up, rehearse)


def spawn_monitor(root: Path, runroot: Path, cid: str, hello: dict[str, object]) -> socket.socket:
    """Ask the host (started now if need be) for a monitor for container `cid`; the returned
    socket is connected to that monitor. A command the host serves is a fork of it already:
    it forks the monitor itself (saving the round trip and the host's own fork)."""
    global _preforked
    if _in_worker:  # forked here (at the command's start if it was foreseen: prefork_monitor)
        if _preforked is None:
            prefork_monitor()
        assert _preforked is not None
        sock, _preforked = _preforked, None
        sock.sendall(json.dumps({"root": str(root), "runroot": str(runroot), "id": cid}).encode() + b"\n")
    else:
        sock = _connect_or_start(runroot)
        sock.sendall(json.dumps({"root": str(root), "id": cid}).encode() + b"\n")
    sock.sendall(stream.json_frame(stream.HELLO, hello))
    return sock


def serving_commands() -> None:
    """Called in a command worker (cli/served.py): monitors are forked here from now on."""
    global _in_worker
    _in_worker = True


def prefork_monitor() -> None:
    """In a command worker that will likely start a container: ask the monitor zygote for its
    monitor now, while the command does its work. The monitor-to-be waits for {"root",
    "runroot", "id"} on this connection (or EOF: not needed after all, it exits)."""
    global _preforked
    try:
        _preforked = stream.connect(str(_host_runroot / ZYGOTE_SOCKET))
    except OSError:  # the host is going away: a fork of this worker will do
        _preforked = _fork_spare()


def _fork_spare() -> socket.socket:
    """A monitor-to-be forked here (double fork: nobody's child, so no one waits for it), at
    the other end of the returned socket."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            ours.close()
            if os.fork():
                os._exit(0)
            _be_spare(theirs)
        finally:
            os._exit(0)
    theirs.close()
    os.waitpid(pid, 0)
    return ours


def _be_spare(conn: socket.socket) -> None:
    """A monitor-to-be: it drops the stdio it inherited at once (a command's must see EOF
    without it), forks its starter at once (monitor.Starter: the fork is then off the start's
    path) and hands it the connection: the starter reads which container (or EOF: not needed
    after all, both exit)."""
    from stockade.engine.monitor import Starter

    kproc.detach_stdio(keep=conn.fileno())
    os.setsid()  # (before the fork: the starter, and the container's init, in its session)
    _be_monitor(conn, None, Starter())


def ensure_running(runroot: Path) -> None:
    """Start the host for `runroot` if none runs (so the next commands are served warm)."""
    with contextlib.suppress(OSError):
        _connect_or_start(runroot).close()


def _connect_or_start(runroot: Path) -> socket.socket:
    runroot.mkdir(parents=True, exist_ok=True)
    path = runroot / SOCKET
    with contextlib.suppress(OSError):
        return stream.connect(str(path))
    lock = os.open(runroot / "monitor-host.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):
            return stream.connect(str(path))  # another command started it meanwhile
        listener = _bind(runroot)
        _fork_host(listener, runroot)
        listener.close()
    finally:
        os.close(lock)
    return stream.connect(str(path))


def _bind(runroot: Path, name: str = SOCKET) -> socket.socket:
    cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
    try:
        os.chdir(runroot)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(name)  # relative, so a long run root fits in sun_path
        listener.listen(64)
    finally:
        os.fchdir(cwd)
        os.close(cwd)
    return listener


def _fork_host(listener: socket.socket, runroot: Path) -> None:
    """Double fork: the host is nobody's child, so no command waits for it."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        kproc.detach_stdio(keep=listener.fileno())
        os.chdir(runroot)
        with open("monitor-host.pid", "w") as f:
            f.write(str(os.getpid()))
        serve(listener)
    finally:
        os._exit(0)


# What every monitor (and its starter) runs, imported once in the host: the forks then
# share these pages. (Names, not import statements: a linter would drop imports "unused".)
# None of them, nor the command modules the host imports (the CLI's warm_up), may import
# threading (subprocess does), random (secrets, tempfile do) or logging at the top: their
# at-fork hooks would run in every monitor the zygote forks, each then ~0.25 MB more of its own
# pages (threading's, measured). tests/unit/test_host_imports.py checks it. (A host forked from
# a command that imported one of them itself, a pull say, still carries its hook.)
MONITOR_MODULES = (
    "stockade.engine.create", "stockade.engine.lifecycle", "stockade.engine.monitor",
    "stockade.engine.networking", "stockade.engine.oci", "stockade.image.rootfs",
    "stockade.network.endpoints", "stockade.network.links", "stockade.network.ports",
    "stockade.runtime.container", "stockade.runtime.create", "stockade.runtime.mediation",
    "stockade.runtime.security", "stockade.engine.volumes", "stockade.kernel.seccomp",
    "stockade.runtime.cgroups.v1", "stockade.runtime.cgroups.v2", "stockade.runtime.cgroups.devices",
)  # fmt: skip


def _warm_up() -> None:
    import importlib

    for name in MONITOR_MODULES:
        importlib.import_module(name)


def serve(listener: socket.socket) -> None:
    from stockade.kernel import signals

    global _host_runroot
    _host_runroot = Path(os.getcwd())
    kproc.set_name("stockade-host")
    signals.set_handler(signals.SIGPIPE, signals.SIG_IGN)
    _warm_up()
    if _cli_handler is not None:
        _cli_handler[1]()
    gc.collect()
    gc.freeze()  # the collector would otherwise write to every shared object after fork
    zygote_end = _start_zygote(listener)
    children: set[int] = set()
    clients: dict[int, tuple[socket.socket, int]] = {}  # fd of a command's client -> (it, worker)
    spare: _SpareWorker | None = None
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    last = time.monotonic()
    while True:
        not_for_child = [listener, zygote_end, *(c for c, _ in clients.values())]
        busy = time.monotonic() - last < SPARE_SECONDS
        if spare is not None and not busy:
            spare.dismiss()
            spare = None
        if spare is None and busy and _cli_handler is not None:
            spare = _SpareWorker(not_for_child, poller)
            children.add(spare.pid)
        events = dict(poller.poll(1000))
        children -= _reaped(children)
        if spare is not None and spare.sock.fileno() in events and not spare.heard_ready():
            spare.dismiss()  # (gone: killed by someone)
            spare = None
        for fd in [fd for fd in events if fd in clients]:  # (only hang-ups are asked for)
            conn, worker = clients.pop(fd)
            poller.unregister(fd)
            _client_gone(conn, worker, children)
        if listener.fileno() in events:
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                pid, is_cli = _spawn(conn, not_for_child, spare)
                if spare is not None and pid == spare.pid:  # (the next one is forked at the top)
                    spare.dismiss()
                    spare = None
                if pid:
                    children.add(pid)
                if pid and is_cli:
                    clients[conn.fileno()] = (conn, pid)
                    # POLLRDHUP: the client's close, even while its request is still unread.
                    poller.register(conn, select.POLLRDHUP)
                else:
                    conn.close()
            last = time.monotonic()
        elif not children - {spare.pid if spare else 0} and time.monotonic() - last > IDLE_SECONDS:
            for name in (SOCKET, ZYGOTE_SOCKET):  # (relative to the run root, our cwd)
                with contextlib.suppress(OSError):
                    os.unlink(name)
            zygote_end.close()  # the zygote exits when it reads EOF
            if spare is not None:
                spare.dismiss()  # (so does the spare worker)
            return


class _SpareWorker:
    """A command worker forked before its command comes: the fork (~2 ms, the host being big)
    is then off the command's path, and so are the page faults of a command's first steps: it
    rehearses them (the CLI's rehearse). It then says it is ready (a command that comes
    before that gets a worker forked afresh), waits for the client's connection, handed to it
    as a descriptor, and exits when its socket closes without one."""

    def __init__(self, not_for_child: list[socket.socket], poller: select.poll) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the spare
            try:
                kproc.set_name("stockade-worker")
                ours.close()
                for other in not_for_child:
                    other.close()
                _await_command(theirs)
            finally:
                os._exit(0)
        theirs.close()
        self.sock = ours
        self.ready = False  # (until it has rehearsed: a command would wait for that)
        self.poller = poller
        poller.register(ours, select.POLLIN)  # (it says when it is ready)

    def heard_ready(self) -> bool:
        """Its word that it is ready; False if it is gone instead."""
        with contextlib.suppress(OSError):
            self.ready = self.sock.recv(1) == b"r"
        return self.ready

    def take(self, conn: socket.socket) -> bool:
        """Hand it a command's connection; False if it is not ready or gone."""
        if not self.ready:
            return False
        try:
            socket.send_fds(self.sock, [b"c"], [conn.fileno()])
            return True
        except OSError:
            return False

    def dismiss(self) -> None:
        """Close our end: it exits."""
        self.poller.unregister(self.sock)
        self.sock.close()


def _await_command(channel: socket.socket) -> None:
    if _cli_handler is not None:
        # (At normal priority: measured, a spare at idle priority seldom finished before the
        # next command came, while the command it overlapped lost nothing noticeable.)
        with contextlib.suppress(Exception):  # (a rehearsal that fails has done what it could)
            _cli_handler[2]()
    try:
        channel.send(b"r")
        _, fds, _, _ = socket.recv_fds(channel, 1, 1)
    except OSError:
        return
    channel.close()
    if fds and _cli_handler is not None:
        _cli_handler[0](socket.socket(fileno=fds[0]))


def _start_zygote(host_listener: socket.socket) -> socket.socket:
    """Fork the monitor zygote: a copy of this host, made once its imports are done, that only
    forks monitors-to-be for command workers (ZYGOTE_SOCKET; a connection is a request).

    Why not fork them here: a monitor shares its pages with its parent only as long as neither
    writes them. This host keeps writing its working pages (serving commands, forking workers),
    so each monitor forked from it at another moment holds its own copy of all of them; the
    zygote does next to nothing between two forks (~0.7 MB less per idle container, measured).
    It exits when the host does (EOF on the returned socket, which the host keeps)."""
    listener = _bind(_host_runroot, ZYGOTE_SOCKET)
    host_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.fork() == 0:  # pragma: no cover - the zygote
        try:
            host_listener.close()
            host_end.close()
            _zygote(listener, zygote_end)
        finally:
            os._exit(0)
    listener.close()
    zygote_end.close()
    return host_end


def _zygote(listener: socket.socket, host: socket.socket) -> None:
    from stockade.kernel import signals

    kproc.set_name("stockade-zygote")
    # Its children (monitors) are reaped by the kernel: no zombies, and no double fork (the
    # intermediate's writes would end up as every monitor's own pages).
    signals.set_handler(signals.SIGCHLD, signals.SIG_IGN)
    from stockade.engine import monitor

    for _ in range(REHEARSALS):
        with contextlib.suppress(Exception):  # (a rehearsal that fails has done what it could)
            monitor.rehearse()
    gc.collect()
    gc.freeze()
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    poller.register(host, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == host.fileno():
                return  # the host is gone
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                if os.fork() == 0:
                    try:
                        signals.set_handler(signals.SIGCHLD, signals.SIG_DFL)  # (it waits for its own)
                        listener.close()
                        host.close()
                        _be_spare(conn)
                    finally:
                        os._exit(0)
                conn.close()


def _client_gone(conn: socket.socket, worker: int, children: set[int]) -> None:
    """The client hung up. If its worker still runs, the client was killed: so is it."""
    if worker in children:  # not reaped yet, so the pid is still that worker's
        with contextlib.suppress(OSError):
            os.kill(worker, 9)
    conn.close()


def _reaped(children: set[int]) -> set[int]:
    done = set()
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0]:
                done.add(pid)
                continue
            continue
        done.add(pid)
    return done


def read_line(conn: socket.socket, timeout: float | None = 5) -> bytes:
    """One line, and not a byte more: what follows it belongs to the monitor (or the worker).
    Peeked at first, then taken to its end (not a recv per byte: ~150 for a monitor's)."""
    data = b""
    conn.settimeout(timeout)
    while not data.endswith(b"\n"):
        peeked = conn.recv(4096, socket.MSG_PEEK)
        if not peeked:
            raise OSError("monitor host: request cut short")
        end = peeked.find(b"\n")
        data += conn.recv(len(peeked) if end < 0 else end + 1)
    conn.settimeout(None)
    return data


def _spawn(conn: socket.socket, not_for_child: list[socket.socket], spare: _SpareWorker | None) -> tuple[int, bool]:
    """Fork the monitor or command worker `conn` asks for, or hand a command to the spare
    worker: (the pid or 0, whether a command)."""
    try:
        line = read_line(conn)
        is_cli = line == CLI_REQUEST and _cli_handler is not None
        req = {} if is_cli else dict(json.loads(line))
    except (OSError, ValueError):
        return 0, False
    if is_cli and spare is not None and spare.take(conn):
        return spare.pid, True
    pid = os.fork()
    if pid:
        return pid, is_cli
    try:
        for other in not_for_child:  # the listeners, the zygote's pipe, other commands' clients
            other.close()
        if is_cli and _cli_handler is not None:
            kproc.set_name("stockade-worker")
            _cli_handler[0](conn)
            return 0, True
        _be_monitor(conn, {"root": req["root"], "runroot": os.getcwd(), "id": req["id"]})
    finally:
        os._exit(0)
    return 0, False


def _be_monitor(conn: socket.socket, request: dict[str, str] | None, starter: Any = None) -> None:
    try:
        from stockade.engine.monitor import main

        main(conn, request, starter)
    except BaseException as exc:  # the monitor's last words go to its container's client
        with contextlib.suppress(Exception):
            conn.sendall(stream.frame(stream.ERROR, f"monitor: {exc}".encode()))


def stop_host(runroot: Path) -> None:
    """Stop the host of `runroot` (tests; monitors are not affected)."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((runroot / "monitor-host.pid").read_text())
        if kproc.proc_start_time(pid):
            os.kill(pid, 15)
