"""The monitor host: one warm process per run root that forks a monitor per container start.

A monitor that is a fresh interpreter costs ~9 MB of private memory and ~40 ms to start; a fork
of a process that has already imported the runtime shares those pages (copy-on-write, kept
clean by gc.freeze) with every other monitor and starts in about a millisecond. The host is
itself forked from the first CLI that needs it (no exec either), listens on
<runroot>/monitor-host.sock, and exits after a while without requests or monitors. Monitors
run in their own sessions and outlive the host: killing it never touches a container.

Request: one JSON line {"root", "id", "hello"}; the host forks, and the monitor keeps the
connection as its first client (so a foreground `run` misses none of the output).
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
from pathlib import Path

from stockade.engine import stream
from stockade.kernel import process as kproc

SOCKET = "monitor-host.sock"
IDLE_SECONDS = float(os.environ.get("STOCKADE_HOST_IDLE", "30"))


def spawn_monitor(root: Path, runroot: Path, cid: str, hello: dict[str, object]) -> socket.socket:
    """Ask the host (started now if need be) for a monitor for container `cid`; the returned
    socket is connected to that monitor."""
    request = json.dumps({"root": str(root), "id": cid}).encode() + b"\n"
    sock = _connect_or_start(runroot)
    sock.sendall(request)
    sock.sendall(stream.json_frame(stream.HELLO, hello))
    return sock


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


def _bind(runroot: Path) -> socket.socket:
    cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
    try:
        os.chdir(runroot)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SOCKET)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(SOCKET)  # relative, so a long run root fits in sun_path
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


def _warm_up() -> None:
    """Import what every monitor runs, once, here: the forks then share these pages."""
    import stockade.engine.create
    import stockade.engine.lifecycle
    import stockade.engine.monitor
    import stockade.image.rootfs
    import stockade.runtime.container
    import stockade.runtime.create
    import stockade.runtime.security

    with contextlib.suppress(ImportError):  # networking: pyroute2 alone is ~170 ms of imports
        import pyroute2.iproute.linux  # noqa: F401

        import stockade.engine.networking
        import stockade.network.endpoints
        import stockade.network.links
        import stockade.network.ports  # noqa: F401


def serve(listener: socket.socket) -> None:
    from stockade.kernel import signals

    signals.set_handler(signals.SIGPIPE, signals.SIG_IGN)
    _warm_up()
    gc.collect()
    gc.freeze()  # the collector would otherwise write to every shared object after fork
    children: set[int] = set()
    last = time.monotonic()
    while True:
        ready, _, _ = select.select([listener], [], [], 1.0)
        children -= _reaped(children)
        if ready:
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                pid = _spawn(conn, listener)
                if pid:
                    children.add(pid)
            last = time.monotonic()
        elif not children and time.monotonic() - last > IDLE_SECONDS:
            with contextlib.suppress(OSError):
                os.unlink(SOCKET)  # relative to the run root, our cwd
            return


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


def _read_request(conn: socket.socket) -> dict[str, str]:
    data = b""
    conn.settimeout(5)
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)  # byte by byte: what follows the line belongs to the monitor
        if not chunk:
            raise OSError("monitor host: request cut short")
        data += chunk
    conn.settimeout(None)
    return dict(json.loads(data))


def _spawn(conn: socket.socket, listener: socket.socket) -> int:
    try:
        req = _read_request(conn)
    except (OSError, ValueError):
        conn.close()
        return 0
    pid = os.fork()
    if pid:
        conn.close()
        return pid
    try:
        listener.close()
        from stockade.engine.monitor import main

        runroot = Path(os.getcwd())
        main(Path(req["root"]), runroot, req["id"], conn)
    except BaseException as exc:  # the monitor's last words go to its container's client
        with contextlib.suppress(Exception):
            conn.sendall(stream.frame(stream.ERROR, f"monitor: {exc}".encode()))
    finally:
        os._exit(0)
    return 0


def stop_host(runroot: Path) -> None:
    """Stop the host of `runroot` (tests; monitors are not affected)."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((runroot / "monitor-host.pid").read_text())
        if kproc.proc_start_time(pid):
            os.kill(pid, 15)
