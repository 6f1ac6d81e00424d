"""The console-socket protocol (pty master over SCM_RIGHTS) and OCI hooks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time

from conftest import requires_root

pytestmark = requires_root


class ConsoleReceiver:
    """What conmon does: listen on a unix socket and receive the pty master."""

    def __init__(self, path: str) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(1)
        self.master: int | None = None
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            _msg, fds, _flags, _addr = socket.recv_fds(conn, 1024, 1)
            self.master = fds[0]

    def read_all(self, timeout: float = 10) -> str:
        self.thread.join(timeout)
        assert self.master is not None, "no pty master received"
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: the slave side is closed
                break
            if not chunk:
                break
            out += chunk
        return out.decode(errors="replace")

    def close(self) -> None:
        self.server.close()
        if self.master is not None:
            os.close(self.master)


def test_console_socket_gives_a_working_tty(bundle, runtime, tmp_path):
    bundle.userns()
    bundle.process["terminal"] = True
    bundle.process["consoleSize"] = {"height": 33, "width": 101}
    bundle.sh(
        "tty; stty size; [ -t 0 ] && echo stdin-is-tty; cat /proc/self/fd/0 > /dev/null </dev/null; echo done"
    ).write()
    receiver = ConsoleReceiver(str(tmp_path / "console.sock"))
    try:
        runtime("create", "--console-socket", str(tmp_path / "console.sock"), "--bundle", str(bundle.path), "c1")
        runtime("start", "c1")
        out = receiver.read_all()
    finally:
        receiver.close()
    lines = [line.strip() for line in out.splitlines()]
    assert lines[0].startswith("/dev/pts/")
    assert lines[1] == "33 101"
    assert "stdin-is-tty" in lines
    assert "done" in lines


def test_terminal_without_console_socket_is_an_error(bundle, runtime):
    bundle.process["terminal"] = True
    bundle.write()
    proc = runtime("create", "--bundle", str(bundle.path), "c1", check=False)
    assert proc.returncode == 1
    assert "no --console-socket" in proc.stderr


def hook_script(tmp_path, name: str, exit_code: int = 0) -> str:
    path = tmp_path / f"{name}.sh"
    out = tmp_path / f"{name}.json"
    path.write_text(f'#!/bin/sh\ncat > {out}\necho "$@" > {out}.args\nexit {exit_code}\n')
    path.chmod(0o755)
    return str(path)


def test_hooks_run_in_order_with_state_on_stdin(bundle, runtime, tmp_path):
    hooks = {}
    for kind in ("prestart", "createRuntime", "createContainer", "poststart", "poststop"):
        hooks[kind] = [{"path": hook_script(tmp_path, kind), "args": [kind, "arg1"]}]
    bundle.config["hooks"] = hooks
    bundle.config["annotations"] = {"org.example/key": "value"}
    bundle.sh("sleep 0.5")  # still running when poststart looks
    runtime.run_output(bundle, "c1")
    for kind in hooks:
        state = json.loads((tmp_path / f"{kind}.json").read_text())
        assert state["id"] == "c1"
        assert state["bundle"] == str(bundle.path)
        assert state["annotations"] == {"org.example/key": "value"}
        assert (tmp_path / f"{kind}.json.args").read_text().split() == ["arg1"]
    assert json.loads((tmp_path / "createRuntime.json").read_text())["status"] == "creating"
    assert json.loads((tmp_path / "createRuntime.json").read_text())["pid"] > 0
    assert json.loads((tmp_path / "poststart.json").read_text())["status"] == "running"
    assert json.loads((tmp_path / "poststop.json").read_text())["status"] == "stopped"


def test_start_container_hook_runs_inside_the_container(bundle, runtime, tmp_path):
    (bundle.rootfs / "hook.sh").write_text("#!/bin/sh\ncat > /tmp/hook-state\nhostname >> /tmp/hook-state\n")
    (bundle.rootfs / "hook.sh").chmod(0o755)
    bundle.writable()
    bundle.config["hooks"] = {"startContainer": [{"path": "/hook.sh"}]}
    bundle.sh("sleep 0.1")
    runtime.run_output(bundle, "c1")
    content = (bundle.rootfs / "tmp/hook-state").read_text()
    assert '"id": "c1"' in content and content.endswith("}testbox\n")


def test_failing_create_runtime_hook_fails_create_and_leaves_nothing(bundle, runtime, tmp_path):
    bundle.config["hooks"] = {"createRuntime": [{"path": hook_script(tmp_path, "bad", exit_code=3)}]}
    bundle.sh("sleep 30").write()
    proc = runtime("create", "--bundle", str(bundle.path), "c1", check=False)
    assert proc.returncode == 1
    assert "createRuntime hook 0" in proc.stderr and "exit status 3" in proc.stderr
    assert runtime("list", "-q").stdout == ""


def test_hook_timeout(bundle, runtime, tmp_path):
    slow = tmp_path / "slow.sh"
    slow.write_text("#!/bin/sh\nsleep 10\n")
    slow.chmod(0o755)
    bundle.config["hooks"] = {"prestart": [{"path": str(slow), "timeout": 1}]}
    bundle.sh("true").write()
    started = time.monotonic()
    proc = runtime("run", "--bundle", str(bundle.path), "c1", check=False)
    assert time.monotonic() - started < 8
    assert proc.returncode == 1 and "timed out after 1s" in proc.stderr


def test_failing_poststart_hook_only_warns(bundle, runtime, tmp_path):
    bundle.config["hooks"] = {"poststart": [{"path": hook_script(tmp_path, "warn", exit_code=1)}]}
    bundle.sh("echo ran").write()
    proc = subprocess.run(runtime.cmd("run", "--bundle", str(bundle.path), "c1"), capture_output=True, text=True)
    assert proc.returncode == 0
    assert "ran" in proc.stdout and "warning: poststart hook 0" in proc.stderr


def _script(command: list[str], setup: str = "stty rows 24 cols 80") -> subprocess.CompletedProcess[str]:
    """Run `command` on a real terminal (script(1)), as a user at a shell would."""
    import shlex

    line = f"{setup}; {' '.join(shlex.quote(c) for c in command)}; echo rc=$?"
    return subprocess.run(["script", "-qec", line, "/dev/null"], capture_output=True, text=True, timeout=30)


def test_run_with_terminal_and_no_console_socket_proxies_our_tty(bundle, runtime):
    bundle.userns()
    bundle.process["terminal"] = True
    bundle.sh("tty; stty size; echo done").write()
    proc = _script(runtime.cmd("run", "--bundle", str(bundle.path), "c1"), setup="stty rows 31 cols 97")
    lines = [line.strip() for line in proc.stdout.splitlines()]
    assert lines[0].startswith("/dev/pts/"), proc.stdout
    assert "31 97" in lines and "done" in lines and "rc=0" in lines


def test_exec_with_terminal_and_no_console_socket(bundle, runtime):
    runtime.detached(bundle.userns().sh("sleep 30"), "c1")
    proc = _script(runtime.cmd("exec", "-t", "c1", "sh", "-c", "tty; exit 4"))
    lines = [line.strip() for line in proc.stdout.splitlines()]
    assert lines[0].startswith("/dev/pts/"), proc.stdout
    assert "rc=4" in lines
