"""The monitor: one small supervisor per running container (conmon's job).

Forked by the monitor zygote (engine.host) into its own session; each start is done by its
child, the starter (Starter), which:
  1. reads the request and the container's record, takes the first client (its HELLO)
  2. mounts the root filesystem and volumes (in the runtime's create, idmapped by the
     container's user namespace)                               - stopped containers hold no mounts
  3. gives the container its stdio: pipes, or a pty whose master the monitor keeps
  4. reserves the published host ports (a conflict fails here, before anything runs)
  5. creates the container with the runtime in-process, joins it to its networks while it
     waits to be started (its network namespace exists, nothing runs yet), starts it
  6. opens the monitor's socket (the first start), records "running" and the monitor's pid,
     tells the clients, hands the monitor its descriptors and exits
The monitor then (Monitor.supervise):
  7. serves its socket: attach clients, stop/kill requests; copies output to the log
     and to attached clients; input from the client that attached stdin to the container
  8. on exit: exit code, OOM kill (read before the cgroup goes), finish time -> state.json;
     unmounts; applies the restart policy (a new starter) or, for --rm, removes the container
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

from stockade import jsonfast
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


def _exit_code(status: int) -> int:
    """A wait status as the container's exit code: its own, or 128 + the killing signal."""
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _proxy_master(proxy: Any) -> int:
    proxy.receive_master()
    return int(proxy.master)


class Monitor:
    def __init__(self, root: Path, runroot: Path, ctr: Container) -> None:
        self.root = root
        self.runtime_root = str(runroot / "runtime")
        self.ctr = ctr
        self.clients: list[Client] = []
        self.listener: socket.socket | None = None
        self.stop_requested = False
        self.kill_deadline: float | None = None
        self.stdin_fd: int | None = None
        self.outputs: dict[int, str] = {}
        self.master: int | None = None
        self.mounted: list[str] = []
        self.log: LogWriter | None = None  # (opened at the first output)
        self.pid = 0
        self.runroot = runroot
        self.port_sockets: list[socket.socket] = []
        self.external: Any = None  # engine.oci.External for --runtime crun|runc|PATH
        self.mediator: socket.socket | None = None  # takes seccomp notify fds (intercept=mknod)
        self.notify_fds: set[int] = set()
        self.started: Any = None  # engine.oci.Started of the running init
        self.failed = False  # the last start failed
        self.exited: int | None = None  # the init's exit status, if its starter saw it exit

    # -- the starter's half: a start (see Starter) -----------------------------------------------
    def start(self, first: socket.socket | None, opening: bool) -> tuple[dict[str, Any], list[int]]:
        """Set the container up and start it; on the first start (`opening`) take the first
        client before (its terminal size is the container's from the start) and open the
        monitor's socket after (beside the container's first steps: a command that comes
        between finds no socket, and no monitor yet in the state either). What the monitor
        takes over: (facts, descriptors), see _take."""
        ctr = self.ctr
        if opening and first is not None:
            self._add_client(first)
        self._open_mediator()  # before create: the runtime connects to it then
        try:
            self._choose_runtime()
            self.started = self._set_up()
        except StartFailed as exc:
            self.failed = True
            self._close_mediator()
            ctr.state.update(
                Status="exited", ExitCode=exc.code, Error=exc.message, FinishedAt=now_rfc3339(), Pid=0
            )  # fmt: skip
            ctr.save_state()
            self._tell_clients(stream.frame(stream.ERROR, exc.message.encode()))
            return self._handover()
        if opening:
            self._open()
        started = self.started
        ctr.state.update(
            Status="running", Pid=started.pid, StartTime=started.start_time, StartedAt=now_rfc3339(),
            CgroupPaths=started.cgroup_paths, FinishedAt="", ExitCode=0, OOMKilled=False, Error="",
        )  # fmt: skip
        ctr.save_state()
        self._tell_clients(stream.json_frame(stream.STARTED, {"pid": started.pid}))
        return self._handover()

    def _open(self) -> None:
        ctr = self.ctr
        os.chdir(ctr.dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink("monitor.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind("monitor.sock")  # relative: container paths can exceed sun_path
        self.listener.listen(16)
        # The log exists from the start (`logs -f` follows it), though the monitor opens it
        # only at the first output.
        os.close(os.open(ctr.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600))
        monitor = os.getppid()  # (the starter's parent: see Starter)
        ctr.state.update(  # (saved with "running")
            MonitorPid=monitor, MonitorStartTime=kproc.proc_start_time(monitor) or 0,
            RestartCount=0,  # a manual start resets the count, as Docker's does
        )  # fmt: skip

    def _set_up(self) -> Any:
        try:
            ports = self._reserve_ports()
            return self._create_and_start(ports)
        except (StockadeError, OSError) as exc:
            failed = start_failed(exc)
            self._release_network()
            self._unmount()
            raise failed from None

    def _handover(self) -> tuple[dict[str, Any], list[int]]:
        kept: list[tuple[str, int]] = [(name, fd) for fd, name in self.outputs.items() if fd != self.master]
        if self.master is not None:
            kept.append(("master", self.master))
        elif self.stdin_fd is not None:
            kept.append(("stdin", self.stdin_fd))
        kept += [("port", s.fileno()) for s in self.port_sockets]
        kept += [("client", c.sock.fileno()) for c in self.clients]
        if self.listener is not None:
            kept.append(("listener", self.listener.fileno()))
        if self.mediator is not None:
            kept.append(("mediator", self.mediator.fileno()))
        ctr, started = self.ctr, self.started
        facts = {
            "root": str(self.root), "runroot": str(self.runroot), "dir": str(ctr.dir),
            "record": {"Id": ctr.id, "Name": ctr.record["Name"],  # (what the monitor reads)
                       "HostConfig": {k: ctr.record["HostConfig"].get(k) for k in MONITOR_HOST_CONFIG},
                       "Config": {k: ctr.record["Config"].get(k) for k in MONITOR_CONFIG}},
            "state": ctr.state, "mounted": self.mounted, "failed": self.failed,
            "started": [started.pid, started.start_time, started.cgroup_paths] if started else None,
            "exited": self._exited_already(),
            "roles": [role for role, _ in kept], "wants": [c.wants for c in self.clients],
        }  # fmt: skip
        return facts, [fd for _, fd in kept]

    def _exited_already(self) -> int | None:
        """The init's exit status if it is gone already (a short command), reaped here, where
        it is still a child: the monitor then goes on without waiting for this starter to exit
        (~1 ms) nor watching the init."""
        if self.started is None or self.external is not None:
            return None
        try:
            got, status = os.waitpid(self.started.pid, os.WNOHANG)
        except ChildProcessError:
            return None
        return _exit_code(status) if got == self.started.pid else None

    def _tell_clients(self, message: bytes) -> None:
        for client in self.clients:
            client.send(message)

    # -- the monitor's half: taking a start over ---------------------------------------------------
    @classmethod
    def adopt(cls, facts: dict[str, Any], fds: list[int]) -> Monitor:
        """The monitor of the container its starter started: only the record's fields it reads
        while the container runs (the whole record is read again when it exits)."""
        ctr = Container(Path(facts["dir"]), facts["record"], facts["state"])
        monitor = cls(Path(facts["root"]), Path(facts["runroot"]), ctr)
        monitor._take(facts, fds)
        return monitor

    def _take(self, facts: dict[str, Any], fds: list[int]) -> None:
        """The descriptors and facts a starter handed over, as if made here."""
        from stockade.engine.oci import Started

        self._choose_runtime_quietly()  # (signals and delete go through another OCI runtime)
        self.mounted = list(facts["mounted"])
        self.ctr.state = facts["state"]
        self.failed = bool(facts["failed"])
        started = facts["started"]
        self.started = Started(self.ctr.id, *started) if started else None
        self.exited = facts["exited"]
        wants = iter(facts["wants"])
        for role, fd in zip(facts["roles"], fds, strict=True):
            if role == "master":
                self.master = self.stdin_fd = fd
                self.outputs[fd] = "stdout"
                self.ctr.state.pop("ConsoleSize", None)  # (the starter applied it)
            elif role == "stdin":
                self.stdin_fd = fd
            elif role == "port":
                self.port_sockets.append(socket.socket(fileno=fd))
            elif role == "client":
                client = Client(socket.socket(fileno=fd))
                client.wants = next(wants)
                self.clients.append(client)
            elif role == "listener":
                self.listener = socket.socket(fileno=fd)
            elif role == "mediator":
                self.mediator = socket.socket(fileno=fd)
            else:
                self.outputs[fd] = role

    def supervise(self) -> None:
        """The container's life after its first start: serve, wait, restart, finish."""
        policy = self.ctr.record["HostConfig"]["RestartPolicy"]
        backoff = BACKOFF_START
        while not self.failed:
            started = time.monotonic()
            code = self._run_to_exit()
            if not self._should_restart(policy, code):
                break
            self.ctr.state.update(Status="restarting", RestartCount=int(self.ctr.state.get("RestartCount", 0)) + 1)
            self.ctr.save_state()
            backoff = BACKOFF_START if time.monotonic() - started > 10 else min(backoff * 2, BACKOFF_MAX)
            if not self._serve_for(backoff):
                break  # stopped while waiting to restart
            self._start_again()
        self._finish()

    def _run_to_exit(self) -> int:
        ctr = self.ctr
        code = self._serve_until_exit(self.started)
        self._read_record()  # (the teardown reads more of it than the monitor kept)
        oom = self._destroy(self.started)
        self._release_network(exited=True)
        self._close_mediator()
        self._unmount()
        ctr.state.update(Status="exited", ExitCode=code, OOMKilled=oom, FinishedAt=now_rfc3339(), Pid=0)
        if not ctr.record["HostConfig"].get("AutoRemove"):  # (else saved only if its removal fails)
            ctr.save_state()
        return code

    def _start_again(self) -> None:
        """A restart, by a starter of its own (the restart policy)."""
        starter = Starter()
        starter.begin(None, {"root": str(self.root), "runroot": str(self.runroot), "id": self.ctr.id})
        handed = starter.finish()
        starter.reap()
        if handed is None:
            self._starter_died()
            return
        facts, fds = handed
        clients, self.clients = self.clients, []
        self._take(facts, fds)
        self.clients = clients + self.clients
        if self.failed:
            self._tell_clients(stream.frame(stream.ERROR, str(self.ctr.state.get("Error", "")).encode()))
        else:
            self._tell_clients(stream.json_frame(stream.STARTED, {"pid": self.started.pid}))

    def _starter_died(self) -> None:
        """Its starter died (killed?) midway: what it may have made goes."""
        ctr = self.ctr
        self.failed = True
        self._choose_runtime_quietly()
        self._runtime_delete()
        self._release_network()
        message = "monitor: the set-up process died"
        ctr.state.update(Status="exited", ExitCode=128, Error=message, FinishedAt=now_rfc3339(), Pid=0)
        with contextlib.suppress(OSError):
            ctr.save_state()
        self._tell_clients(stream.frame(stream.ERROR, message.encode()))

    def _read_record(self) -> None:
        """The whole record, for the teardown (a monitor keeps only MONITOR_HOST_CONFIG and
        MONITOR_CONFIG of it while the container runs); read once."""
        from stockade.engine.containers import RECORD, read_json

        if "ImageManifest" in self.ctr.record:  # (not one of the fields handed over)
            return
        with contextlib.suppress(OSError, ValueError):
            self.ctr.record = read_json(self.ctr.dir / RECORD)

    def _choose_runtime_quietly(self) -> None:
        with contextlib.suppress(StartFailed):
            self._choose_runtime()

    def _should_restart(self, policy: dict[str, Any], code: int) -> bool:
        name = policy.get("Name", "no")
        if self.stop_requested or name == "no":
            return False
        if name == "on-failure":
            retries = int(policy.get("MaximumRetryCount", 0))
            return code != 0 and (not retries or int(self.ctr.state.get("RestartCount", 0)) < retries)
        return True  # always, unless-stopped

    def _finish(self) -> None:
        self._read_record()
        ctr = self.ctr
        if self.log is not None:
            self.log.close()
        trash = None
        if ctr.record["HostConfig"].get("AutoRemove"):
            from stockade.engine.lifecycle import unregister

            try:
                trash = unregister(self.root, ctr, volumes=True)
            except Exception:
                with contextlib.suppress(OSError):
                    ctr.save_state()  # (left behind: as exited)
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

    def _choose_runtime(self) -> None:
        """Another OCI runtime (--runtime), found once here: the starter and this monitor
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
        code, self.exited = self.exited, None
        if code is None:
            code = self._serve_until_reaped(state.pid)
        self._drain()
        self._close_stdio()
        self.kill_deadline = None
        return code

    def _serve_until_reaped(self, pid: int) -> int:
        pidfd = kproc.pidfd_open(pid)
        code: int | None = None
        try:
            while code is None:
                self._poll([pidfd], self._timeout())
                if self.kill_deadline is not None and time.monotonic() >= self.kill_deadline:
                    self._signal(signals.SIGKILL)
                    self.kill_deadline = None
                code = self._reap(pid)
        finally:
            os.close(pidfd)
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
                code = _exit_code(status)

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
        self._log().write(name, data)
        kind = stream.STDOUT if name == "stdout" else stream.STDERR
        message = stream.frame(kind, data)
        for client in list(self.clients):
            if client.wants.get(name) and not client.send(message):
                self._drop(client)

    def _log(self) -> LogWriter:
        """The log, opened at the first output (an idle container's monitor runs none of it)."""
        if self.log is None:
            config = self.ctr.record["HostConfig"]["LogConfig"]["Config"]
            self.log = LogWriter(self.ctr.log_path, int(config.get("max-size", 0)), int(config.get("max-file", 1)))
        return self.log

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


# The record fields a running container's monitor reads (see Monitor.adopt).
MONITOR_HOST_CONFIG = ("RestartPolicy", "AutoRemove", "LogConfig", "Runtime", "SecurityOpt")
MONITOR_CONFIG = ("Tty", "OpenStdin", "StdinOnce")


class Starter:
    """The monitor's child that does all a start needs, then exits: reads the request, the
    record, opens the monitor's socket and takes its first client, mounts, reserves ports,
    creates and starts the container (the runtime in-process), saves the state, tells the
    clients. It hands the monitor the descriptors it made and a few facts (Monitor._take).

    Why a child: that work runs through much of the interpreter (JSON, paths, the runtime,
    image and network code); every page it writes would stay the monitor's own copy (copy-on-
    write from the zygote) for the container's whole life. The monitor itself then runs next
    to no code of its own until something happens. The starter is a subreaper while it creates
    (the runtime's rule), so the init is its child until it exits; then the kernel hands the
    init to the monitor, the nearest subreaper. A monitor-to-be forks it before it is asked for
    anything (host._be_spare): the fork is then off the start's path."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - child
            try:
                ours.close()
                _start_when_told(theirs)
            finally:
                os._exit(0)
        theirs.close()
        self.channel = ours
        self.request: dict[str, Any] | None = None  # which container, once known

    def begin(self, first: socket.socket | None, request: dict[str, Any] | None) -> None:
        """Start: the first client's connection (whose request line the starter reads, unless
        `request` says it already), or a restart's request."""
        self.request = request
        data = json.dumps(request).encode() if request is not None else b"?"
        with contextlib.suppress(OSError):  # (a starter that died is found out by finish)
            socket.send_fds(self.channel, [data], [first.fileno()] if first is not None else [])

    def finish(self) -> tuple[dict[str, Any], list[int]] | None:
        """What it handed over, None if it died first (then self.request says which container,
        if it had read that far)."""
        handed = None
        with contextlib.suppress(OSError, ValueError):
            while handed is None:
                message, fds, _flags, _addr = socket.recv_fds(self.channel, 1 << 16, 64)
                if not message:
                    break
                facts = jsonfast.loads(message)
                if "facts" not in facts:  # its word of which container (the request it read)
                    self.request = facts
                    continue
                handed = facts["facts"], fds
        self.dismiss()
        return handed

    def reap(self) -> None:
        """Wait for it to be gone: then the init, if it was the starter's child, is ours."""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)

    def dismiss(self) -> None:
        """Close our end: a starter not told to start exits."""
        self.channel.close()


def _start_when_told(channel: socket.socket) -> None:
    try:
        message, fds, _flags, _addr = socket.recv_fds(channel, 1 << 16, 1)
    except OSError:
        return
    if not message:
        return  # not needed after all
    first = socket.socket(fileno=fds[0]) if fds else None
    if message == b"?":  # the first client's request line is ours to read (host._be_spare)
        from stockade.engine.host import read_line

        assert first is not None
        try:
            request = json.loads(read_line(first, timeout=None))
        except (OSError, ValueError):
            return  # (the command went away: not needed after all)
        channel.send(json.dumps(request).encode())
    else:
        request = json.loads(message)
    try:
        root, runroot = Path(request["root"]), Path(request["runroot"])
        ctr = Containers(root).load(request["id"])
        monitor = Monitor(root, runroot, ctr)
        facts, kept = monitor.start(first, opening=first is not None)
    except BaseException as exc:  # its last words go to the client (the monitor cleans up)
        if first is not None:
            with contextlib.suppress(OSError):
                first.sendall(stream.frame(stream.ERROR, f"monitor: {exc}".encode()))
        raise
    # (The monitor object holds the sockets: it must live until they are sent.)
    socket.send_fds(channel, [json.dumps({"facts": facts}).encode()], kept)


def rehearse() -> None:
    """In the monitor zygote, before it forks monitors (engine/host.py): a monitor's own steps,
    on nothing real (no container, no process, no file), so that the code they run is warm in
    the pages every monitor shares with the zygote. CPython 3.11 rewrites a function's
    bytecode the first times it runs (quickening, then its inline caches): run for the first
    time in a monitor, each such write copies a page into it. (Measured: a warm call of a small
    function writes about half the pages of a cold one; what is left are reference counts.)"""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        kproc.set_name("stockade-zygote")  # (its own name again: the same call as a monitor's)
        kproc.prctl(kproc.PR_SET_CHILD_SUBREAPER, 0, what="prctl(PR_SET_CHILD_SUBREAPER)")
        for sig in (signals.SIGINT, signals.SIGHUP, signals.SIGPIPE):
            signals.set_handler(sig, signals.set_handler(sig, signals.SIG_IGN))
        socket.send_fds(a, [b"?"], [b.fileno()])
        _message, fds, _flags, _addr = socket.recv_fds(b, 1 << 16, 64)
        for fd in fds:
            os.close(fd)
        facts = {
            "root": "/", "runroot": "/", "dir": "/", "record": {"Id": "0" * 64, "Name": "/rehearsal",
            "HostConfig": {"RestartPolicy": {"Name": "no"}, "AutoRemove": False}, "Config": {}},
            "state": {"Status": "running"}, "mounted": [], "failed": False, "started": [0, 0, {}], "exited": None,
            "roles": [], "wants": [],
        }  # fmt: skip
        socket.send_fds(a, [json.dumps({"facts": facts}).encode()], [])
        message, fds, _flags, _addr = socket.recv_fds(b, 1 << 16, 64)
        monitor = Monitor.adopt(jsonfast.loads(message)["facts"], fds)
        monitor._timeout()
        os.close(kproc.pidfd_open(os.getpid()))
        select.select([a.fileno(), b.fileno()], [], [], 0)
    finally:
        a.close()
        b.close()


def main(first: socket.socket, request: dict[str, Any] | None, starter: Starter | None = None) -> None:
    """The monitor's body in a freshly forked process (see engine.host): its starter does the
    start (`request`: which container, None if the starter reads it from `first`); then it
    supervises. `starter`: one forked before (then it is in its session already)."""
    if starter is None:
        os.setsid()
    kproc.set_name("stockade-mon")
    kproc.set_child_subreaper()
    for sig in (signals.SIGINT, signals.SIGHUP, signals.SIGPIPE):
        signals.set_handler(sig, signals.SIG_IGN)
    starter = starter or Starter()
    starter.begin(first, request)
    handed = starter.finish()
    if handed is None or handed[0]["exited"] is None:
        starter.reap()  # (else the init is gone already, reaped by the starter: no need to wait)
    if handed is None:
        if starter.request is not None:  # (else it died before it knew of a container)
            root, runroot = Path(starter.request["root"]), Path(starter.request["runroot"])
            with contextlib.suppress(StockadeError, OSError):
                monitor = Monitor(root, runroot, Containers(root).load(starter.request["id"]))
                monitor.clients.append(Client(first))
                monitor._starter_died()
                monitor._finish()
        return
    first.close()  # (handed back among the clients)
    Monitor.adopt(*handed).supervise()
    starter.reap()
