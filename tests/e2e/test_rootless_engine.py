"""The engine as a normal user: the same CLI inside the user's rootless namespace (newuidmap
and the user's /etc/subuid range), containers in nested user namespaces, rootless networking
with pasta and slirp4netns. Traffic stays on this machine: loopback and the host's address.

The test makes a system user with a subordinate range for the module and removes both after;
/dev/net/tun is made usable by users (0666, what Debian's udev rules give it) while the tests
run, as pasta and slirp4netns open it. The user runs Debian's /usr/bin/python3 on a copy of
the source tree (the test venv may live where that user can't read)."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from stockade.kernel.net import local_ipv4_addresses

SRC = Path(__file__).resolve().parents[2] / "src" / "stockade"
USER = "stockade-rl-test"
SUBID_START = 300_000_000
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="makes a user; runs as root"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("useradd", "userdel", "newuidmap", "setpriv"))
        or not os.path.exists(SYSTEM_PYTHON),
        reason="needs useradd, uidmap, setpriv and python3",
    ),
]


class User:
    """Runs `stockade` as the test user with its own XDG directories."""

    def __init__(self, base: Path, uid: int, gid: int) -> None:
        self.base, self.uid, self.gid = base, uid, gid
        self.runtime_dir = base / "run"
        self.data = base / "home" / ".local" / "share" / "stockade"
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(base / "home"),
            "XDG_RUNTIME_DIR": str(self.runtime_dir), "PYTHONPATH": str(base / "src"),
            "STOCKADE_HOST_IDLE": "5", "LANG": "C.UTF-8",
        }  # fmt: skip

    def __call__(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = ["setpriv", "--reuid", str(self.uid), "--regid", str(self.gid), "--clear-groups",
               SYSTEM_PYTHON, "-c", "import sys; from stockade.cli.main import main; sys.exit(main())", *args]  # fmt: skip
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.base)
        if check and proc.returncode != 0:
            raise AssertionError(f"stockade {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def client(self, *args: str) -> subprocess.CompletedProcess[str]:
        """bin/stockade itself: with -I it cannot import stockade from PYTHONPATH, so it works
        only when the user's warm host (in the rootless namespace) serves the command."""
        cmd = ["setpriv", "--reuid", str(self.uid), "--regid", str(self.gid), "--clear-groups",
               str(self.base / "bin" / "stockade"), *args]  # fmt: skip
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60, cwd=self.base)

    def inspect(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self("inspect", name).stdout)[0])


def _edit_subids(add: bool) -> None:
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(f"{USER}:")] if path.exists() else []
        if add:
            lines.append(f"{USER}:{SUBID_START}:65536")
        path.write_text("".join(ln + "\n" for ln in lines))


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[User]:
    made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                          capture_output=True, text=True).returncode == 0  # fmt: skip
    _edit_subids(add=True)
    tun_mode = os.stat("/dev/net/tun").st_mode & 0o777 if os.path.exists("/dev/net/tun") else None
    if tun_mode is not None:
        os.chmod("/dev/net/tun", 0o666)
    base = tmp_path_factory.mktemp("rootless")
    for directory in [base, *base.parents]:
        if str(directory) in ("/", "/tmp"):
            break
        os.chmod(directory, os.stat(directory).st_mode | 0o011)
    entry = pwd.getpwnam(USER)
    shutil.copytree(SRC, base / "src" / "stockade", ignore=shutil.ignore_patterns("__pycache__"))
    (base / "bin").mkdir()
    shutil.copy(SRC.parents[1] / "bin" / "stockade", base / "bin" / "stockade")
    os.symlink(SYSTEM_PYTHON, base / "bin" / "python3")  # the launcher runs the python beside it
    for d in ("home", "run"):
        (base / d).mkdir()
    for path in [base, *base.rglob("*")]:
        os.lchown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(base / "run", 0o700)
    u = User(base, entry.pw_uid, entry.pw_gid)
    try:
        u("image", "build-base", "busybox")
        yield u
    finally:
        _take_down(u)
        if tun_mode is not None:
            os.chmod("/dev/net/tun", tun_mode)
        _edit_subids(add=False)
        if made:
            subprocess.run(["userdel", USER], capture_output=True)


def _take_down(u: User) -> None:
    """Containers, the monitor host, the pause process: with them go the rootless namespaces
    and every mount made in them."""
    ids = u("ps", "-aq", "--no-trunc", check=False).stdout.split()
    if ids:
        u("rm", "-f", *ids, check=False)
    runroot = u.runtime_dir / "stockade"
    for name in ("monitor-host.pid", "pause.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((runroot / name).read_text().split()[0]), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _user_processes(u.uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _user_processes(u.uid), f"processes left: {_user_processes(u.uid)}"


def _user_processes(uid: int) -> list[str]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}").st_uid == uid:
                out.append(Path(f"/proc/{pid}/comm").read_text().strip())
    return out


def _host_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def _helpers() -> list[str]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if comm.startswith(("passt", "pasta", "slirp4netns")):
                out.append(f"{pid} {comm}")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def host_server() -> Iterator[int]:
    """An HTTP server on the host (all addresses) that answers `host-says-hi`."""

    class Hi(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"host-says-hi\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("0.0.0.0", 0), Hi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def _get(url: str, timeout: float = 10) -> str:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(r.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


HTTPD = "mkdir -p /www && echo hello-rootless > /www/index.html && exec httpd -f -p 80 -h /www"


def test_rootless_containers_run_in_the_users_range(user: User) -> None:
    out = user("run", "--rm", "busybox", "sh", "-c", "id -u; cat /proc/self/uid_map").stdout.split()
    assert out[0] == "0"
    assert out[1:] == ["0", "0", "1", "1", "1", "65535"]  # nested: identity over the rootless map
    user("run", "-d", "--name", "sleeper", "-u", "1000", "--network", "none", "busybox", "sleep", "300")
    pid = int(user.inspect("sleeper")["State"]["Pid"])
    assert _host_uid(pid) == SUBID_START + 999  # uid 1000 inside = the user's 1000th subordinate ID
    user("exec", "sleeper", "touch", "/tmp/x")
    user("rm", "-f", "sleeper")
    assert user("ps", "-aq").stdout.strip() == ""
    assert [n for n in os.listdir(user.data / "containers") if not n.startswith(".")] == []


def test_rootless_commit_keeps_changes_and_deletions(user: User) -> None:
    user("run", "--name", "c1", "--network", "none", "busybox", "sh", "-c", "echo jay > /foo && rm /bin/vi")
    diff = user("diff", "c1").stdout.split("\n")
    assert "A /foo" in diff and "D /bin/vi" in diff
    user("commit", "c1", "rl-committed")
    out = user(
        "run", "--rm", "--network", "none", "rl-committed", "sh", "-c", "cat /foo; ls /bin/vi 2>&1 || true"
    ).stdout
    assert out.startswith("jay\n") and "No such file" in out
    user("rm", "c1")
    user("rmi", "rl-committed")


def test_pasta_publishes_ports_and_reaches_the_host(user: User, host_server: int) -> None:
    port = _free_port()
    user("run", "-d", "--name", "web", "-p", f"{port}:80", "busybox", "sh", "-c", HTTPD)
    doc = user.inspect("web")
    assert doc["NetworkSettings"]["RootlessNetwork"]["Driver"] == "pasta"
    assert "rootless default" in doc["NetworkSettings"]["RootlessNetwork"]["Reason"]
    assert doc["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
    assert _get(f"http://127.0.0.1:{port}/index.html") == "hello-rootless\n"
    for address in local_ipv4_addresses()[:1]:  # the host's own address, if it has one
        assert _get(f"http://{address}:{port}/index.html") == "hello-rootless\n"
    got = user("exec", "web", "wget", "-q", "-O-", f"http://host.containers.internal:{host_server}/").stdout
    assert got == "host-says-hi\n"
    taken = user("run", "--rm", "-p", f"{port}:80", "busybox", "true", check=False)
    assert taken.returncode == 125
    assert f"Bind for 0.0.0.0:{port}/tcp failed: port is already allocated" in taken.stderr
    assert user("port", "web").stdout.strip() == f"80/tcp -> 0.0.0.0:{port}"
    user("rm", "-f", "web")
    deadline = time.monotonic() + 5
    while _helpers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _helpers(), f"helpers left: {_helpers()}"


def test_slirp4netns_publishes_ports_and_reaches_the_host(user: User, host_server: int) -> None:
    if not shutil.which("slirp4netns"):
        pytest.skip("needs slirp4netns")
    addresses = local_ipv4_addresses()
    if not addresses:
        pytest.skip("the host has no address but loopback")
    port = _free_port()
    user("run", "-d", "--name", "sweb", "--network", "slirp4netns", "-p", f"{port}:80", "busybox", "sh", "-c", HTTPD)
    doc = user.inspect("sweb")
    assert doc["NetworkSettings"]["RootlessNetwork"]["Driver"] == "slirp4netns"
    assert doc["NetworkSettings"]["IPAddress"] == "10.0.2.100"
    assert _get(f"http://127.0.0.1:{port}/index.html") == "hello-rootless\n"
    got = user("exec", "sweb", "wget", "-q", "-O-", f"http://{addresses[0]}:{host_server}/").stdout
    assert got == "host-says-hi\n"
    user("rm", "-f", "sweb")
    assert not _helpers()


def test_rootless_network_errors(user: User) -> None:
    bad = user("run", "--rm", "--network", "bridge", "busybox", "true", check=False)
    assert bad.returncode == 125 and "rootless containers cannot join bridge networks" in bad.stderr
    bad = user("run", "--rm", "--network", "slirp4netns:mtu", "busybox", "true", check=False)
    assert bad.returncode == 125 and 'unknown option "mtu"' in bad.stderr
    warn = user("run", "--rm", "--network", "none", "--memory", "64m", "busybox", "true")
    if "ignored: rootless containers get no cgroup" not in warn.stderr:
        assert "WARNING" not in warn.stderr  # (a host with a delegated cgroup v2 applies it)
    assert user("ps", "-aq").stdout.strip() == ""


def test_rootless_commands_are_served_by_the_users_warm_host(user: User) -> None:
    user("run", "-d", "--name", "warm", "--network", "none", "busybox", "sleep", "300")  # (starts the host)
    served = user.client("run", "--rm", "--network", "none", "busybox", "sh", "-c", "echo hi; cat /proc/self/uid_map")
    assert served.returncode == 0, served.stderr
    assert served.stdout.split() == ["hi", "0", "0", "1", "1", "1", "65535"]
    got = user.client("exec", "warm", "sh", "-c", "id -u; exit 5")
    assert (got.returncode, got.stdout) == (5, "0\n"), got.stderr
    assert "warm" in user.client("ps").stdout
    user("rm", "-f", "warm")


def test_keep_id_runs_as_the_user_with_the_images_root_intact(user: User) -> None:
    """--userns keep-id: the container's process is the user itself (its uid and gid, so its
    bind-mounted files are its own), the image's files are still root's inside."""
    work = user.base / "work"
    work.mkdir()
    (work / "mine").write_text("hello\n")
    os.chown(work, user.uid, user.gid)
    os.chown(work / "mine", user.uid, user.gid)
    script = "id -u; id -g; stat -c %u /bin/busybox /work/mine; echo more >> /work/mine && echo wrote; head -3 /proc/self/uid_map"
    out = user(
        "run", "--rm", "--network", "none", "--userns", "keep-id", "-v", f"{work}:/work", "busybox", "sh", "-c", script
    )
    lines = out.stdout.splitlines()
    assert lines[:5] == [str(user.uid), str(user.gid), "0", str(user.uid), "wrote"], out.stdout + out.stderr
    assert lines[5].split() == ["0", "1", str(user.uid)] and lines[6].split() == [str(user.uid), "0", "1"]
    assert (work / "mine").read_text() == "hello\nmore\n" and (work / "mine").stat().st_uid == user.uid
    as_root = user("run", "--rm", "--network", "none", "--userns", "keep-id", "-u", "0", "busybox", "id", "-u")
    assert as_root.stdout.strip() == "0"
    # Known by name, as podman adds it (the image's own entries are kept); HOME is the user's.
    named = user("run", "--rm", "--network", "none", "--userns", "keep-id", "busybox", "sh", "-c",
                 "id -un; id -gn; echo $HOME; grep -c '^root:' /etc/passwd")  # fmt: skip
    home = pwd.getpwuid(user.uid).pw_dir
    assert named.stdout.split() == [USER, grp.getgrgid(user.gid).gr_name, home, "1"], named.stdout + named.stderr


def test_keep_id_is_refused_for_root(tmp_path: Path) -> None:
    import sys

    stockade = str(Path(sys.executable).parent / "stockade")
    env = {**os.environ, "STOCKADE_NO_HOST": "1"}
    subprocess.run([stockade, "--root", str(tmp_path / "root"), "image", "build-base", "busybox"], env=env, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    done = subprocess.run([stockade, "--root", str(tmp_path / "root"), "run", "--rm", "--userns", "keep-id", "busybox", "true"],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert done.returncode == 125 and "keep-id is for rootless containers" in done.stderr


def test_rootless_another_oci_runtime(user: User) -> None:
    """--runtime runc for a normal user: runc runs in the user's rootless namespace, as our own
    runtime does (its cgroups skipped: the user owns none)."""
    out = user("run", "--rm", "--network", "none", "--runtime", "runc", "busybox", "sh", "-c",
               "echo via-runc; id -u", check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["via-runc", "0"]
    user("run", "-d", "--name", "viarunc", "--network", "none", "--runtime", "runc", "busybox", "sleep", "60")
    assert user.inspect("viarunc")["State"]["Running"]
    assert user("exec", "viarunc", "echo", "in").stdout.strip() == "in"
    user("stop", "-t", "1", "viarunc")
    assert user.inspect("viarunc")["State"]["Status"] == "exited"
    user("rm", "viarunc")
    assert user("ps", "-aq").stdout.strip() == ""
