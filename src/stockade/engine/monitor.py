"""The monitor: one small supervisor per running container (conmon's job).

Forked by the monitor host (engine.host) into its own session, it:
  1. mounts the container's root filesystem and volumes     - stopped containers hold no mounts
  2. gives the container its stdio: pipes, or a pty whose master it keeps
  3. reserves the published host ports (a conflict fails here, before anything runs)
  4. creates the container with the runtime in-process, joins it to its networks while it
     waits to be started (its network namespace exists, nothing runs yet), starts it
  5. serves its socket: attach clients, stop/kill requests; copies output to the log
     and to attached clients; input from the client that attached stdin to the container
  6. on exit: exit code, OOM kill (read before the cgroup goes), finish time -> state.json;
     unmounts; applies the restart policy (back to 1) or, for --rm, removes the container
The CLI can die at any moment: everything a command needs is in state.json and ctr.log.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import time
from pathlib import Path
from typing import Any

from stockade.engine import stream
from stockade.engine.containers import Container, Containers, now_rfc3339
from stockade.engine.logs import LogWriter
from stockade.errors import StockadeError
from stockade.kernel import process as kproc
from stockade.kernel import signals

BACKOFF_START = 0.1
BACKOFF_MAX = 60.0


class Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = stream.FrameReader()
        self.wants: dict[str, Any] = {}
        self.waiting_exit = False

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False


def exit_code_for_start_error(message: str) -> int:
    text = message.lower()
    if "not found" in text or "no such file" in text:
        return 127
    if "permission denied" in text:
        return 126
    return 128


class StartFailed(Exception):
    """The container could not be started: what to tell its clients, and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def start_failed(exc: StockadeError | OSError) -> StartFailed:
    message = str(exc) if isinstance(exc, StockadeError) else f"{exc.filename or ''}: {exc.strerror}"
    # A network that cannot be set up (a port taken, no address left) is stockade's failure,
    # not the command's: 125, as docker's.
    code = 125 if type(exc).__name__ == "NetworkError" else exit_code_for_start_error(message)
    return StartFailed(message, code)


def _proxy_master(proxy: Any) -> int:
    proxy.receive_master()
    return int(proxy.master)


class Monitor:
    def __init__(self, root: Path, runroot: Path, cid: str) -> None:
        self.root = root
        self.runtime_root = str(runroot / "runtime")
        self.ctr: Container = Containers(root).load(cid)
        self.clients: list[Client] = []
        self.listener: socket.socket | None = None
        self.stop_requested = False
        self.kill_deadline: float | None = None
        self.stdin_fd: int | None = None
        self.outputs: dict[int, str] = {}
        self.master: int | None = None
        self.mounted: list[str] = []
        self.log: LogWriter | None = None
        self.pid = 0
        self.runroot = runroot
        self.port_sockets: list[socket.socket] = []
        self.external: Any = None  # engine.oci.External for --runtime crun|runc|PATH
        self.mediator: socket.socket | None = None  # takes seccomp notify fds (intercept=mknod)
        self.notify_fds: set[int] = set()
        self.setting_up: SetUpChild | StartFailed | None = None  # the run begun, not awaited yet

    # -- the whole life ----------------------------------------------------------------------
    def run(self, first: socket.socket | None, ahead: SetUpChild | None = None) -> None:
        """`ahead`: a set-up child forked before the container was known (see SetUpChild)."""
        ctr = self.ctr
        # The set-up first: the monitor's own start (its socket, the first client, the state,
        # the log) runs beside it.
        self.setting_up = self._begin_run(ahead)
        os.chdir(ctr.dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink("monitor.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind("monitor.sock")  # relative: container paths can exceed sun_path
        self.listener.listen(16)
        if first is not None:
            self._add_client(first)
        policy = ctr.record["HostConfig"]["RestartPolicy"]
        ctr.state.update(
            Status="starting", MonitorPid=os.getpid(), MonitorStartTime=kproc.proc_start_time(os.getpid()) or 0,
            Error="", RestartCount=0,  # a manual start resets the count, as Docker's does
        )  # fmt: skip
        ctr.save_state()
        lc = ctr.record["HostConfig"]["LogConfig"]["Config"]
        self.log = LogWriter(ctr.log_path, int(lc.get("max-size", 0)), int(lc.get("max-file", 1)))
        backoff = BACKOFF_START
        while True:
            started = time.monotonic()
            code, _oom = self._run_once()
            if code is None:  # it never started
                break
            if not self._should_restart(policy, code):
                break
            ctr.state.update(Status="restarting", RestartCount=int(ctr.state.get("RestartCount", 0)) + 1)
            ctr.save_state()
            backoff = BACKOFF_START if time.monotonic() - started > 10 else min(backoff * 2, BACKOFF_MAX)
            if not self._serve_for(backoff):
                break  # stopped while waiting to restart
        self._finish()

    def _should_restart(self, policy: dict[str, Any], code: int) -> bool:
        name = policy.get("Name", "no")
        if self.stop_requested or name == "no":
            return False
        if name == "on-failure":
            retries = int(policy.get("MaximumRetryCount", 0))
            return code != 0 and (not retries or int(self.ctr.state.get("RestartCount", 0)) < retries)
        return True  # always, unless-stopped

    def _finish(self) -> None:
        ctr = self.ctr
        if self.log is not None:
            self.log.close()
        trash = None
        if ctr.record["HostConfig"].get("AutoRemove"):
            from stockade.engine.lifecycle import unregister

            with contextlib.suppress(Exception):
                trash = unregister(self.root, ctr, volumes=True)
        exit_msg = stream.json_frame(
            stream.EXIT, {"code": ctr.state.get("ExitCode", 0), "oom": ctr.state.get("OOMKilled", False)}
        )
        for client in self.clients:
            client.send(exit_msg)
            client.sock.close()
        if self.listener is not None:
            self.listener.close()
            with contextlib.suppress(OSError):
                os.unlink(ctr.dir / "monitor.sock")
        if trash is not None:
            # After the clients heard: `run --rm` waits for the container to be gone, not for
            # its files to be deleted (~2 ms).
            from stockade.engine.lifecycle import delete_trash

            delete_trash(trash)

    # -- one run of the container --------------------------------------------------------------
    def _run_once(self) -> tuple[int | None, bool]:
        ctr = self.ctr
        setting_up, self.setting_up = self.setting_up or self._begin_run(None), None
        try:
            if isinstance(setting_up, StartFailed):
                raise setting_up
            started = self._await_set_up(setting_up)
        except StartFailed as exc:
            self._close_mediator()
            ctr.state.update(
                Status="exited", ExitCode=exc.code, Error=exc.message, FinishedAt=now_rfc3339(), Pid=0
            )  # fmt: skip
            ctr.save_state()
            for client in self.clients:
                client.send(stream.frame(stream.ERROR, exc.message.encode()))
            return None, False
        ctr.state.update(
            Status="running", Pid=started.pid, StartTime=started.start_time, StartedAt=now_rfc3339(),
            CgroupPaths=started.cgroup_paths, FinishedAt="", ExitCode=0, OOMKilled=False, Error="",
        )  # fmt: skip
        ctr.save_state()
        message = stream.json_frame(stream.STARTED, {"pid": started.pid})
        for client in self.clients:
            client.send(message)
        code = self._serve_until_exit(started)
        oom = self._destroy(started)
        self._release_network(exited=True)
        self._close_mediator()
        self._unmount()
        ctr.state.update(Status="exited", ExitCode=code, OOMKilled=oom, FinishedAt=now_rfc3339(), Pid=0)
        ctr.save_state()
        return code, oom

    # -- set-up, in a child process -------------------------------------------------------------
    def _begin_run(self, ahead: SetUpChild | None) -> SetUpChild | StartFailed:
        """Set the child that sets the container up going (see SetUpChild); a failure to
        report, if the run cannot even begin."""
        self._open_mediator()  # before the set-up: the runtime connects to it then
        try:
            self._choose_runtime()
        except StartFailed as exc:
            if ahead is not None:
                ahead.dismiss()
            return exc
        child = ahead or SetUpChild()
        child.go(self.root, self.runroot, self.ctr.id)
        return child

    def _await_set_up(self, child: SetUpChild) -> Any:
        """What the set-up child reports: the descriptors (stdio pipes or the pty master, held
        port sockets) and a JSON summary (engine.oci.Started, mounts, state)."""
        try:
            message, fds, _flags, _addr = socket.recv_fds(child.channel, 1 << 16, 64)
        except OSError:
            message, fds = b"", []
        finally:
            child.dismiss()
            os.waitpid(child.pid, 0)  # once it is gone, the init is our child
        if not message:
            for fd in fds:
                os.close(fd)
            self._runtime_delete()
            self._release_network()
            raise StartFailed("monitor: the set-up process died", 128)
        report = json.loads(message)
        if "error" in report:
            raise StartFailed(report["error"], int(report["code"]))
        self._take_report(report, fds)
        from stockade.engine.oci import Started

        return Started(self.ctr.id, report["pid"], report["start_time"], report["cgroup_paths"])

    def _set_up_and_report(self, channel: socket.socket) -> None:
        """The child's half: the set-up, then one message with what the monitor keeps."""
        ctr = self.ctr
        try:
            ports = self._reserve_ports()
            state = self._create_and_start(ports)
        except (StockadeError, OSError) as exc:
            failed = start_failed(exc)
            self._release_network()
            self._unmount()
            channel.send(json.dumps({"error": failed.message, "code": failed.code}).encode())
            return
        kept: list[tuple[str, int]] = [(name, fd) for fd, name in self.outputs.items() if fd != self.master]
        if self.master is not None:
            kept.append(("master", self.master))
        elif self.stdin_fd is not None:
            kept.append(("stdin", self.stdin_fd))
        kept += [("port", s.fileno()) for s in self.port_sockets]
        report = {
            "pid": state.pid, "start_time": state.start_time, "cgroup_paths": state.cgroup_paths,
            "mounted": self.mounted, "roles": [role for role, _ in kept],
            "state": {k: ctr.state[k] for k in ("Driver", "IDMapping") if k in ctr.state},
        }  # fmt: skip
        socket.send_fds(channel, [json.dumps(report).encode()], [fd for _, fd in kept])

    def _take_report(self, report: dict[str, Any], fds: list[int]) -> None:
        """The descriptors and facts the set-up child handed over, as if made here."""
        self.mounted = list(report["mounted"])
        self.ctr.state.update(report["state"])
        for role, fd in zip(report["roles"], fds, strict=True):
            if role == "master":
                self.master = self.stdin_fd = fd
                self.outputs[fd] = "stdout"
                self.ctr.state.pop("ConsoleSize", None)  # (the child applied it)
            elif role == "stdin":
                self.stdin_fd = fd
            elif role == "port":
                self.port_sockets.append(socket.socket(fileno=fd))
            else:
                self.outputs[fd] = role

    def _choose_runtime(self) -> None:
        """Another OCI runtime (--runtime), found once here: the set-up child and this monitor
        (signals, delete) both drive it."""
        runtime = self.ctr.record["HostConfig"].get("Runtime") or "stockade"
        if runtime == "stockade" or self.external is not None:
            return
        from stockade.engine.oci import External, resolve

        try:
            self.external = External(resolve(runtime), self.runroot)
        except (StockadeError, OSError) as exc:
            raise start_failed(exc) from None

    def _mount(self, in_userns_of: int | None = None) -> None:
        """The rootfs and volumes, idmapped into the container's IDs: through the user
        namespace of the process `in_userns_of` (the container's, made by the runtime), or
        through one made for the purpose (another OCI runtime makes its own later)."""
        userns = None
        if in_userns_of is not None and self.ctr.record.get("IDMap"):
            userns = os.open(f"/proc/{in_userns_of}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._mount_through(userns)
        finally:
            if userns is not None:
                os.close(userns)

    def _mount_through(self, userns: int | None) -> None:
        from stockade.engine.create import store_of
        from stockade.engine.idranges import record_maps
        from stockade.engine.volumes import Volumes
        from stockade.image.rootfs import attach_idmapped, prepare

        ctr = self.ctr
        store = store_of(self.root)
        image = store.image(ctr.record["ImageManifest"], named=False)  # (its layers are all we need)
        idmap = ctr.record.get("IDMap")
        maps = record_maps(ctr.record)
        rootfs = prepare(store, image, ctr.dir, *maps, volatile=not ctr.durable, userns=userns)
        self.mounted.append(str(rootfs.target))
        ctr.state["Driver"], ctr.state["IDMapping"] = rootfs.driver, rootfs.idmap
        volumes = Volumes(self.root)
        for i, m in enumerate(ctr.record["HostConfig"]["Mounts"]):
            if m["Type"] != "volume":
                continue
            vol = volumes.get(m["Source"])
            if idmap:
                volumes.seed(vol.name, rootfs.target / m["Target"].lstrip("/"), idmap["UidStart"], idmap["GidStart"])
            else:
                volumes.seed(vol.name, rootfs.target / m["Target"].lstrip("/"), 0, 0)
            point = ctr.dir / "volumes" / str(i)
            point.mkdir(parents=True, exist_ok=True)
            attach_idmapped(vol.data, point, *maps, userns=userns)
            self.mounted.append(str(point))

    def _unmount(self) -> None:
        from stockade.kernel import mounts

        for target in reversed(self.mounted):
            with contextlib.suppress(OSError):
                mounts.umount2(target, mounts.MNT_DETACH)
        self.mounted = []

    def _reserve_ports(self) -> list[Any]:
        from stockade.engine import networking

        if not networking.publishes(self.ctr.record):
            return []
        from stockade.network.config import bindings_from_json
        from stockade.network.ports import release, reserve

        wanted = bindings_from_json(self.ctr.record["HostConfig"].get("PortBindings"))
        ports, self.port_sockets = reserve(wanted)
        if networking.mode(self.ctr.record) != "bridge":
            # pasta/slirp4netns bind the ports themselves: only checked free here, and let go
            # before the runtime's fork, whose child would hold them until its execve.
            release(self.port_sockets)
            self.port_sockets = []
        return ports

    def _release_network(self, exited: bool = False) -> None:
        from stockade.engine import networking
        from stockade.network.ports import release

        with contextlib.suppress(StockadeError, OSError):
            networking.detach(self.root, self.runroot, self.ctr, exited)
        release(self.port_sockets)
        self.port_sockets = []

    def _create_and_start(self, ports: list[Any]) -> Any:
        from stockade.engine import networking

        ctr = self.ctr
        if networking.mode(ctr.record).startswith("container:"):
            networking.join_container_netns(ctr, ctr.dir / "config.json")
        state, config, console = self._create()
        if console is not None:
            self.master = console.receive_master() if self.external is not None else _proxy_master(console)
            self.outputs[self.master] = "stdout"
            self.stdin_fd = self.master
            size = self.ctr.state.pop("ConsoleSize", None)
            if size:
                self._resize(size)
        try:
            # Between create and start: the namespace exists, the container's command has
            # not run, so it never sees itself without its network.
            if networking.mode(ctr.record) == "bridge":
                networking.attach(self.root, self.runroot, ctr, state.pid, ports)
            elif networking.mode(ctr.record) in ("pasta", "slirp4netns"):
                networking.attach_usermode(ctr, state.pid, ports)
            if self.external is not None:
                self.external.start(ctr.id)
            else:
                from stockade.runtime.container import start

                start(self.runtime_root, ctr.id, config)
        except BaseException:
            self._runtime_delete(config)
            self._close_stdio()
            raise
        return state

    def _create(self) -> tuple[Any, Any, Any]:
        """The runtime's create, the container's stdio being pipes (or a pty) the monitor holds:
        (state, config, console: what hands over the pty master, or None)."""
        ctr = self.ctr
        tty = bool(ctr.record["Config"]["Tty"])
        saved = [os.dup(fd) for fd in (0, 1, 2)]
        ours: list[int] = []
        console: Any = None
        try:
            if not tty:
                ours = self._stdio_pipes(bool(ctr.record["Config"]["OpenStdin"]))
            if self.external is not None:
                from stockade.engine.oci import ConsoleListener

                console = ConsoleListener(ctr.dir) if tty else None
                self._mount()
                return self.external.create(ctr.id, ctr.dir, console.path if console else None), None, console
            from stockade.runtime.container import _create, delete
            from stockade.runtime.create import CreateOptions

            opts = CreateOptions()
            opts.before_namespaces = self._mount  # (in the container's user namespace: see there)
            if tty:
                from stockade.runtime.console import ConsoleProxy

                console = ConsoleProxy()
                opts.console_fd = console.child_end
            with contextlib.suppress(StockadeError):
                delete(self.runtime_root, ctr.id, force=True)  # a leftover from a killed monitor
            state, config, _ = _create(self.runtime_root, ctr.id, str(ctr.dir), opts)
            return state, config, console
        except BaseException:
            for fd in ours + ([self.stdin_fd] if self.stdin_fd is not None else []):
                os.close(fd)
            self.outputs, self.stdin_fd = {}, None
            if console is not None and self.external is not None:
                console.close()
            raise
        finally:
            for fd, old in zip((0, 1, 2), saved, strict=True):
                os.dup2(old, fd)
                os.close(old)

    def _stdio_pipes(self, open_stdin: bool) -> list[int]:
        """Pipes on 0, 1, 2 for the runtime to hand to the container; our ends kept."""
        ours = []
        if open_stdin:
            r, w = os.pipe2(os.O_CLOEXEC)
            os.dup2(r, 0)
            os.close(r)
            self.stdin_fd = w
        for fd, name in ((1, "stdout"), (2, "stderr")):
            r, w = os.pipe2(os.O_CLOEXEC)
            os.dup2(w, fd)
            os.close(w)
            self.outputs[r] = name
            ours.append(r)
        return ours

    def _runtime_delete(self, config: Any = None) -> None:
        if self.external is not None:
            self.external.delete(self.ctr.id)
            return
        from stockade.runtime.container import delete

        with contextlib.suppress(StockadeError):
            delete(self.runtime_root, self.ctr.id, force=True, config=config)

    def _close_stdio(self) -> None:
        for fd in list(self.outputs):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.stdin_fd is not None and self.stdin_fd not in self.outputs:
            with contextlib.suppress(OSError):
                os.close(self.stdin_fd)
        self.outputs, self.stdin_fd, self.master = {}, None, None

    def _destroy(self, started: Any) -> bool:
        """OOM kills are read before the runtime removes the cgroup, or they are lost."""
        from stockade.runtime.container import cgroup_manager, destroy
        from stockade.runtime.state import State

        oom = False
        manager = cgroup_manager(started)
        if manager is not None:
            with contextlib.suppress(OSError, StockadeError):
                oom = manager.oom_kills() > 0
        if self.external is not None:
            self.external.delete(self.ctr.id)
            return oom
        with contextlib.suppress(StockadeError, OSError):
            destroy(State.load(self.runtime_root, self.ctr.id))
        return oom

    # -- the event loop ------------------------------------------------------------------------
    def _serve_until_exit(self, state: Any) -> int:
        self.pid = state.pid
        pidfd = kproc.pidfd_open(state.pid)
        code: int | None = None
        try:
            while code is None:
                self._poll([pidfd], self._timeout())
                if self.kill_deadline is not None and time.monotonic() >= self.kill_deadline:
                    self._signal(signals.SIGKILL)
                    self.kill_deadline = None
                code = self._reap(state.pid)
        finally:
            os.close(pidfd)
        self._drain()
        self._close_stdio()
        self.kill_deadline = None
        return code

    def _serve_for(self, seconds: float) -> bool:
        """Serve clients while waiting to restart; False if a stop came in."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._poll([], deadline - time.monotonic())
            if self.stop_requested:
                return False
        return True

    def _timeout(self) -> float | None:
        if self.kill_deadline is None:
            return None
        return max(0.0, self.kill_deadline - time.monotonic())

    def _reap(self, pid: int) -> int | None:
        code = None
        while True:
            try:
                got, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # not our child after all: it is gone when its start time is
                return code if code is not None or kproc.proc_start_time(pid) else 255
            if got == 0:
                return code
            if got == pid:
                code = os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)

    def _poll(self, extra: list[int], timeout: float | None) -> None:
        fds = [*self.outputs, *extra, *self.notify_fds]
        socks = {c.sock.fileno(): c for c in self.clients}
        assert self.listener is not None
        mediator = [self.mediator.fileno()] if self.mediator is not None else []
        try:
            ready, _, _ = select.select([self.listener.fileno(), *mediator, *fds, *socks], [], [], timeout)
        except InterruptedError:
            return
        for fd in ready:
            if fd == self.listener.fileno():
                with contextlib.suppress(OSError):
                    conn, _ = self.listener.accept()
                    self._add_client(conn)
            elif fd in mediator:
                self._take_notify_fd()
            elif fd in self.notify_fds:
                self._mediate(fd)
            elif fd in self.outputs:
                self._pump(fd)
            elif fd in socks:
                self._from_client(socks[fd])

    # -- seccomp notify: mknod for the container (see runtime/mediation.py) ------------------
    def _open_mediator(self) -> None:
        from stockade.engine.lifecycle import notify_socket

        path = notify_socket(self.runroot, self.ctr)
        if path is None or self.mediator is not None:
            return
        path.parent.mkdir(mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.mediator = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.mediator.bind(str(path))
        self.mediator.listen(16)

    def _take_notify_fd(self) -> None:
        """A process of the container loaded its filter (the init at start, each exec) and sent
        the filter's notify fd."""
        from stockade.runtime.mediation import accept_notify_fd

        assert self.mediator is not None
        with contextlib.suppress(OSError):
            fd = accept_notify_fd(self.mediator)
            if fd is not None:
                self.notify_fds.add(fd)

    def _mediate(self, fd: int) -> None:
        from stockade.runtime.mediation import handle

        poller = select.poll()
        poller.register(fd, select.POLLIN)
        events = dict(poller.poll(0)).get(fd, 0)
        if events & select.POLLIN:
            handle(fd)
        elif events & (select.POLLHUP | select.POLLERR):  # every process under that filter exited
            self.notify_fds.discard(fd)
            os.close(fd)

    def _close_mediator(self) -> None:
        for fd in self.notify_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.notify_fds = set()
        if self.mediator is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.mediator.getsockname())
            self.mediator.close()
            self.mediator = None

    def _pump(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        name = self.outputs.get(fd, "stdout")
        if not data:
            del self.outputs[fd]
            if fd != self.master:
                os.close(fd)
            return
        if self.log is not None:
            self.log.write(name, data)
        kind = stream.STDOUT if name == "stdout" else stream.STDERR
        message = stream.frame(kind, data)
        for client in list(self.clients):
            if client.wants.get(name) and not client.send(message):
                self._drop(client)

    def _drain(self) -> None:
        """Output still in the pipes after the init exited (its last words)."""
        deadline = time.monotonic() + 1.0
        while self.outputs and time.monotonic() < deadline:
            ready, _, _ = select.select(list(self.outputs), [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            for fd in ready:
                self._pump(fd)

    def _add_client(self, sock: socket.socket) -> None:
        """Clients say what they want (HELLO) first thing: read it now, so no output is
        pumped past a client that has not been heard yet."""
        client = Client(sock)
        sock.settimeout(2.0)
        try:
            while not client.wants:
                data = sock.recv(65536)
                if not data:
                    raise OSError("client left")
                for kind, payload in client.reader.feed(data):
                    self._handle(client, kind, payload)
                    if kind == stream.HELLO:
                        client.wants = client.wants or {"hello": True}
        except (OSError, ValueError):
            sock.close()
            return
        sock.settimeout(None)
        self.clients.append(client)

    def _drop(self, client: Client) -> None:
        if client in self.clients:
            self.clients.remove(client)
        with contextlib.suppress(OSError):
            client.sock.close()
        if client.wants.get("stdin") and self.ctr.record["Config"].get("StdinOnce") and self.master is None:
            self._close_stdin()

    def _close_stdin(self) -> None:
        if self.stdin_fd is not None and self.stdin_fd != self.master:
            with contextlib.suppress(OSError):
                os.close(self.stdin_fd)
            self.stdin_fd = None

    def _from_client(self, client: Client) -> None:
        try:
            data = client.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        for kind, payload in client.reader.feed(data):
            self._handle(client, kind, payload)

    def _handle(self, client: Client, kind: int, payload: bytes) -> None:
        if kind == stream.HELLO:
            client.wants = json.loads(payload)
            if client.wants.get("resize"):
                self._resize(client.wants["resize"])
        elif kind == stream.STDIN and self.stdin_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.stdin_fd, payload)
        elif kind == stream.STDIN_EOF:
            if self.master is not None:
                with contextlib.suppress(OSError):
                    os.write(self.master, b"\x04")  # end of input on a terminal is ^D
            else:
                self._close_stdin()
        elif kind == stream.RESIZE:
            self._resize(json.loads(payload))
        elif kind == stream.STOP:
            request = json.loads(payload)
            self.stop_requested = True
            self._signal(request.get("signal", signals.SIGTERM))
            self.kill_deadline = time.monotonic() + float(request.get("timeout", 10))
            if self.pid == 0:
                client.send(stream.frame(stream.OK))
        elif kind == stream.KILL:
            request = json.loads(payload)
            self.stop_requested = True
            self._signal(int(request.get("signal", signals.SIGKILL)))
            client.send(stream.frame(stream.OK))

    def _resize(self, size: list[int]) -> None:
        if self.master is None:
            self.ctr.state["ConsoleSize"] = size
            return
        import struct

        from stockade.kernel import pty

        with contextlib.suppress(OSError):
            pty.set_winsize(self.master, struct.pack("HHHH", int(size[0]), int(size[1]), 0, 0))

    def _signal(self, sig: int) -> None:
        if not self.pid:
            return
        if self.external is not None:  # our child until we reap it: its pid cannot be reused
            with contextlib.suppress(OSError):
                os.kill(self.pid, int(sig))
            return
        from stockade.runtime.container import signal_init
        from stockade.runtime.state import State

        with contextlib.suppress(StockadeError, OSError):
            signal_init(State.load(self.runtime_root, self.ctr.id), int(sig))


class SetUpChild:
    """The child that mounts, reserves ports, creates and starts the container, and exits.

    Why a child: that work runs through much of the interpreter (runtime, image, network
    code); every page it writes would stay the monitor's own copy (copy-on-write from the
    host) for the container's whole life, ~6 MB per idle container. The child is a subreaper
    while it creates (the runtime's rule), so the init is its child until it exits; then the
    kernel hands the init to the monitor, the nearest subreaper. A monitor-to-be forks it
    before it knows its container (SetUpChild.ahead), while the command that asked for it is
    still creating the container: the fork is then off the start's path. Told which container
    (`go`), it reads the container itself and reports back over the socket pair."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - child
            try:
                ours.close()
                _set_up_when_told(theirs)
            finally:
                os._exit(0)
        theirs.close()
        self.channel = ours

    def go(self, root: Path, runroot: Path, cid: str) -> None:
        with contextlib.suppress(OSError):  # (a child that died is reported by _await_set_up)
            self.channel.send(json.dumps({"root": str(root), "runroot": str(runroot), "id": cid}).encode())

    def dismiss(self) -> None:
        """Close our end: a child not told to go exits."""
        self.channel.close()


def _set_up_when_told(channel: socket.socket) -> None:
    try:
        order = channel.recv(1 << 16)
    except OSError:
        return
    if not order:
        return  # not needed after all
    req = json.loads(order)
    monitor = Monitor(Path(req["root"]), Path(req["runroot"]), req["id"])
    try:
        monitor._choose_runtime()
    except StartFailed as exc:
        channel.send(json.dumps({"error": exc.message, "code": exc.code}).encode())
        return
    monitor._set_up_and_report(channel)


def main(root: Path, runroot: Path, cid: str, first: socket.socket | None, ahead: SetUpChild | None = None) -> None:
    """The monitor's body in a freshly forked process (see engine.host); `ahead`: its set-up
    child, if it forked one before it knew the container (then it is in its session already)."""
    if ahead is None:
        os.setsid()
    kproc.set_name("stockade-mon")
    kproc.set_child_subreaper()
    for sig in (signals.SIGINT, signals.SIGHUP, signals.SIGPIPE):
        signals.set_handler(sig, signals.SIG_IGN)
    Monitor(root, runroot, cid).run(first, ahead)
