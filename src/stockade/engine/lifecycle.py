"""start, stop, kill, rm, wait: what the CLI asks the monitors for, and the truth when a monitor
is gone (killed): the container is then signalled through the runtime's state directly and
its end is recorded by whichever command notices it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

from stockade.engine import stream
from stockade.engine.containers import Container, Containers, EngineError, now_rfc3339
from stockade.errors import StockadeError

DEFAULT_RUNROOT = Path("/run/stockade")


def runroot_for(root: Path) -> Path:
    """Runtime state: $STOCKADE_RUNROOT, /run/stockade beside the default root, else <root>/run
    (so a test's private root never meets another's)."""
    env = os.environ.get("STOCKADE_RUNROOT")
    if env:
        return Path(env)
    if root == Path("/var/lib/stockade"):
        return DEFAULT_RUNROOT
    if os.geteuid() != 0 and os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "stockade"
    return root / "run"


def notify_socket(runroot: Path, ctr: Container) -> Path | None:
    """Where the monitor of a container with --security-opt intercept=mknod takes the seccomp
    notify fds of its processes (None: it intercepts nothing)."""
    opts = ctr.record["HostConfig"].get("SecurityOpt") or []
    if not any(o.replace(":", "=", 1) == "intercept=mknod" for o in opts):
        return None
    return runroot / "notify" / f"{ctr.short_id}.sock"


def refresh(root: Path, ctr: Container) -> Container:
    """Record the end of a container whose monitor died: its runtime state, cgroup and mounts go,
    its exit status is unknown (255, with the reason in State.Error)."""
    ctr.reload()
    recorded = ctr.state.get("Status")
    if recorded not in ("running", "paused", "starting", "restarting") or ctr.monitor_alive() or ctr.init_alive():
        return ctr
    cleanup_runtime(root, ctr)
    ctr.state.update(Status="exited", ExitCode=255, Pid=0, FinishedAt=now_rfc3339(),
                     Error="monitor died: the exit status was lost")  # fmt: skip
    ctr.save_state()
    return ctr


def cleanup_runtime(root: Path, ctr: Container) -> None:
    from stockade.kernel import mounts
    from stockade.runtime.container import delete

    with contextlib.suppress(StockadeError, OSError):
        delete(str(runroot_for(root) / "runtime"), ctr.id, force=True)
    if (ctr.dir / "network.json").exists():  # the monitor died before taking it down
        from stockade.engine import networking

        with contextlib.suppress(StockadeError, OSError):
            networking.detach(root, runroot_for(root), ctr)
    mounted = mounts_under(ctr.dir)
    for target in mounted:
        with contextlib.suppress(OSError):
            mounts.umount2(target, mounts.MNT_DETACH)
    left = mounts_under(ctr.dir) if mounted else []
    if left:
        raise EngineError(f"container {ctr.name}: {left[0]} is still mounted")


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory`, deepest first (from our mountinfo)."""
    prefix = str(directory).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def start(root: Path, ctr: Container, hello: dict[str, object]) -> socket.socket:
    """Start a created or exited container; the socket is its new monitor, which sends
    STARTED {pid} (or ERROR) and then, as `hello` asked, the output and EXIT."""
    from stockade.engine.host import spawn_monitor

    refresh(root, ctr)
    status = ctr.status()
    if status in ("running", "paused", "restarting"):
        raise EngineError(f"container {ctr.name} is already {status}")
    return spawn_monitor(root, runroot_for(root), ctr.id, hello)


def await_start(sock: socket.socket, reader: stream.FrameReader) -> tuple[int, list[tuple[int, bytes]]]:
    """Read until STARTED (its pid, and any frames that came with it) or raise on ERROR/EXIT."""
    while True:
        data = sock.recv(65536)
        if not data:
            raise EngineError("the container's monitor exited before the container started")
        frames = reader.feed(data)
        for i, (kind, payload) in enumerate(frames):
            if kind == stream.STARTED:
                return int(json.loads(payload)["pid"]), frames[i + 1 :]
            if kind == stream.ERROR:
                raise StartFailed(payload.decode(errors="replace"))


class StartFailed(EngineError):
    pass


def _signal_directly(root: Path, ctr: Container, sig: int) -> None:
    from stockade.runtime.container import signal_init
    from stockade.runtime.state import State

    with contextlib.suppress(StockadeError, OSError):
        signal_init(State.load(str(runroot_for(root) / "runtime"), ctr.id), sig)


def stop(root: Path, ctr: Container, timeout: int | None = None, sig: str | None = None) -> None:
    from stockade.runtime.container import parse_signal

    refresh(root, ctr)
    if not ctr.running():
        return
    signal = parse_signal(sig or ctr.record["Config"].get("StopSignal") or "SIGTERM")
    wait = ctr.record["Config"].get("StopTimeout", 10) if timeout is None else timeout
    if ctr.monitor_alive():
        with contextlib.suppress(OSError):
            stream.request(str(ctr.socket_path), stream.STOP, {"signal": signal, "timeout": wait})
            _wait_monitor_exit(ctr, 5)
            return
    _signal_directly(root, ctr, signal)
    if not _wait_gone(ctr, wait):
        _signal_directly(root, ctr, 9)
        _wait_gone(ctr, 10)
    refresh(root, ctr)


def kill(root: Path, ctr: Container, sig: str = "SIGKILL") -> None:
    from stockade.runtime.container import parse_signal

    refresh(root, ctr)
    if not ctr.running():
        raise EngineError(f"container {ctr.name} is not running")
    signal = parse_signal(sig)
    if ctr.monitor_alive():
        with contextlib.suppress(OSError):
            stream.request(str(ctr.socket_path), stream.KILL, {"signal": signal}, timeout=10)
            return
    _signal_directly(root, ctr, signal)


def _wait_gone(ctr: Container, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while ctr.reload().init_alive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_exit(root: Path, ctr: Container, poll: float = 0.05) -> int:
    """Block until the container is not running (no restart pending); its exit code."""
    while True:
        refresh(root, ctr)
        if ctr.status() in ("exited", "created", "dead") and not ctr.monitor_alive():
            return int(ctr.state.get("ExitCode", 0))
        if ctr.monitor_alive():
            with contextlib.suppress(OSError):
                _until_monitor_exits(stream.connect(str(ctr.socket_path)))
                continue
        time.sleep(poll)


def _until_monitor_exits(sock: socket.socket) -> None:
    """A silent client: the monitor closes it when it is done with the container."""
    with sock:
        sock.sendall(stream.json_frame(stream.HELLO, {"stdout": False}))
        while sock.recv(65536):
            pass


def remove(root: Path, ctr: Container, force: bool = False, volumes: bool = False) -> None:
    refresh(root, ctr)
    if ctr.running():
        if not force:
            raise EngineError(
                f"cannot remove container {ctr.name}: container is {ctr.status()}: stop the container before removing or force remove"
            )
        kill(root, ctr, "SIGKILL")
        _wait_gone(ctr, 10)
        _wait_monitor_exit(ctr, 10)
        refresh(root, ctr)
    if not (ctr.dir / "container.json").exists():
        return  # its monitor removed it (--rm)
    remove_stopped(root, ctr, volumes)


def _wait_monitor_exit(ctr: Container, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while ctr.reload().monitor_alive() and time.monotonic() < deadline:
        time.sleep(0.01)


def remove_stopped(root: Path, ctr: Container, volumes: bool = False) -> None:
    """Everything a stopped container holds goes: runtime leftovers, mounts, ID range, image
    hold, its anonymous volumes (with -v), then its directory - its name last."""
    delete_trash(unregister(root, ctr, volumes))


def unregister(root: Path, ctr: Container, volumes: bool = False) -> Path:
    """remove_stopped but for the files: the container no longer exists (its name is free, no
    command finds it), its directory waits under a hidden name, which is returned."""
    from stockade.engine.create import HOLD_PREFIX, allocator, store_of
    from stockade.engine.volumes import Volumes

    cleanup_runtime(root, ctr)
    allocator(root).release(ctr.id)
    store_of(root).release(HOLD_PREFIX + ctr.id)
    vols = Volumes(root)
    orphans = vols.drop_user(ctr.id)
    if volumes:
        for name in orphans:
            with contextlib.suppress(StockadeError):
                vols.remove(name)
    with Containers(root).names_lock():
        trash = ctr.dir.with_name(".rm-" + ctr.id)
        with contextlib.suppress(FileNotFoundError):
            os.rename(ctr.dir, trash)
    return trash


def delete_trash(trash: Path) -> None:
    if not mounts_under(trash):  # never delete through a mount (a volume!)
        shutil.rmtree(trash, ignore_errors=True)
