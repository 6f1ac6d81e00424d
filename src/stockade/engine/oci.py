"""Another OCI runtime (crun, runc, or a path) driven through its command line, for
`--runtime`: the monitor creates, starts, signals and deletes through it instead of running
stockade-runtime in-process. The bundle is the same; the runtime keeps its state under
<runroot>/runtime-<name>. The container's init still ends up the monitor's child (the monitor is
a subreaper), so waiting for it and reading its exit status work as with our own runtime."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from stockade.engine.containers import EngineError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any


def resolve(name: str) -> str:
    """crun | runc | an absolute path: the executable, or a clear error (at create time)."""
    path = name if os.path.isabs(name) else shutil.which(name)
    if not path or not os.access(path, os.X_OK) or os.path.isdir(path):
        raise EngineError(f"--runtime {name}: no such OCI runtime (want crun, runc, stockade or an executable path)")
    return path


@dataclass(slots=True)
class Started:
    """What the monitor needs of a created container (the fields of runtime.state.State it reads)."""

    id: str
    pid: int
    start_time: int
    cgroup_paths: dict[str, str] = field(default_factory=dict)


class External:
    def __init__(self, binary: str, runroot: Path) -> None:
        self.binary = binary
        self.root = runroot / f"runtime-{Path(binary).name}"
        self.root.mkdir(parents=True, exist_ok=True)

    def _cmd(self, *args: str, log: Path | None = None) -> list[str]:
        return [self.binary, "--root", str(self.root), *(["--log", str(log)] if log else []), *args]

    def create(self, cid: str, bundle: Path, console_socket: str | None) -> Started:
        """`create`, the container's stdio being ours (0, 1, 2: the monitor's pipes)."""
        from stockade.kernel.process import proc_start_time

        pid_file = bundle / "runtime.pid"
        log = bundle / "runtime.log"
        args = ["create", "--bundle", str(bundle), "--pid-file", str(pid_file)]
        if console_socket:
            args += ["--console-socket", console_socket]
        self.delete(cid)  # a leftover from a killed monitor
        done = _run(self._cmd(*args, cid, log=log), stdin=0, stdout=1, stderr=2)
        if done.returncode != 0:
            raise EngineError(
                f"{Path(self.binary).name} create: {_last_error(log) or f'exit status {done.returncode}'}"
            )
        pid = int(pid_file.read_text())
        return Started(cid, pid, proc_start_time(pid) or 0, _cgroup_paths(pid))

    def start(self, cid: str) -> None:
        done = _run(self._cmd("start", cid), capture_output=True, text=True)
        if done.returncode != 0:
            raise EngineError(
                f"{Path(self.binary).name} start: {done.stderr.strip().splitlines()[-1:] or done.returncode}"
            )

    def delete(self, cid: str) -> None:
        _run(self._cmd("delete", "--force", cid), capture_output=True)

    def exec(self, cid: str, process: dict[str, object], detach: bool) -> int:
        """`exec --process`, the process's stdio being ours (the command's); with a terminal the
        runtime makes the pty and copies between it and our stdio itself. Its exit status."""
        import json
        import tempfile

        with tempfile.TemporaryDirectory(prefix="stockade-exec-") as tmp:
            spec = Path(tmp) / "process.json"
            spec.write_text(json.dumps(process))
            args = ["exec", "--process", str(spec), *(["--detach"] if detach else [])]
            args += ["--tty"] if process.get("terminal") else []
            return _run(self._cmd(*args, cid)).returncode


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    import subprocess  # (here, not at the top: see host.MONITOR_MODULES)

    return subprocess.run(cmd, check=False, **kwargs)


def _last_error(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            text = lines[-1]
            for key in ('msg="', "msg="):
                if key in text:
                    return text.split(key, 1)[1].rstrip('"')
            return text
    return ""


def _cgroup_paths(pid: int) -> dict[str, str]:
    """The init's cgroups as the engine records them (controller -> directory), for pause and stats."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _hid, controllers, rel = line.split(":", 2)
            if controllers == "":
                if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):  # cgroup v2 only
                    paths[""] = "/sys/fs/cgroup" + rel
                continue
            for c in controllers.split(","):
                name = c.removeprefix("name=")
                paths[name] = f"/sys/fs/cgroup/{controllers.replace('name=', '')}{rel}"
    return paths


class ConsoleListener:
    """`--console-socket` for an external runtime: it connects and sends the pty master."""

    def __init__(self, directory: Path) -> None:
        self.path = "console.sock"  # relative to the monitor's cwd, the container's directory
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / self.path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(1)
        self.sock.settimeout(30)

    def receive_master(self) -> int:
        conn, _ = self.sock.accept()
        with conn:
            _msg, fds, _flags, _addr = socket.recv_fds(conn, 1024, 1)
        self.close()
        if not fds:
            raise EngineError("the runtime sent no pty master on the console socket")
        return fds[0]

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
