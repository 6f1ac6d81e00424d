"""The engine through the CLI, on the real kernel: Docker-style containers, unprivileged by
default, supervised by per-container monitors (the seed 000 demo step by step, and more)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pexpect
import pytest

from stockade.engine.host import stop_host

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the engine tests run as root")
pytestmark = ROOT_ONLY
STOCKADE = str(Path(sys.executable).parent / "stockade")
DETACH = "\x10\x11"  # Ctrl-P Ctrl-Q


class Engine:
    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        subuid = tmp / "subuid"
        subuid.write_text("someone:100000:65536\n")
        self.env = {
            **os.environ, "STOCKADE_ROOT": str(self.root), "STOCKADE_SUBUID": str(subuid),
            "STOCKADE_SUBGID": str(subuid), "STOCKADE_HOST_IDLE": "5", "TERM": "xterm",
        }  # fmt: skip

    def __call__(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [STOCKADE, *args], env=self.env, capture_output=True, text=True, input=input, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"stockade {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def spawn(self, *args: str, timeout: float = 20) -> pexpect.spawn:
        return pexpect.spawn(STOCKADE, list(args), env=self.env, timeout=timeout, encoding="utf-8")

    def inspect(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self("inspect", name).stdout)[0])

    def wait_for(self, name: str, status: str, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            doc = self.inspect(name)
            if doc["State"]["Status"] == status:
                return doc
            assert time.monotonic() < deadline, f"{name} is {doc['State']['Status']}, not {status}"
            time.sleep(0.05)


def _searchable(path: Path) -> None:
    for directory in [path, *path.parents]:
        if str(directory) in ("/", "/tmp"):
            break
        os.chmod(directory, os.stat(directory).st_mode | 0o011)


def _nft_tables() -> set[str]:
    from stockade.network.firewall import tables_present

    return tables_present()


def take_down(e: Engine, tables_before: set[str]) -> None:
    """Containers, then the store's networks (bridges, rules, DNS responders), then the nft
    tables this test made (per family: ip6 comes with the first IPv6 network), then the
    monitor host."""
    from stockade.engine.networking import take_down_all
    from stockade.network.firewall import remove_tables

    ids = e("ps", "-aq", "--no-trunc", check=False).stdout.split()
    if ids:
        e("rm", "-f", *ids, check=False)
    take_down_all(e.root, e.root / "run")
    remove_tables(_nft_tables() - tables_before)
    stop_host(e.root / "run")


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    _searchable(tmp_path)
    e = Engine(tmp_path)
    e("image", "build-base", "busybox")
    tables_before = _nft_tables()
    yield e
    take_down(e, tables_before)
    mounted = [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if str(e.root) in ln]
    assert not mounted, f"mounts left: {mounted[:2]}"


def _host_uids(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


# -- the seed 000 demo -----------------------------------------------------------------------
def test_seed_demo_run_detach_attach_commit_history(engine: Engine) -> None:
    first = engine.spawn("run", "-it", "--name", "hungry_pike", "busybox", "sh")
    first.expect("# ")
    first.sendline("ps -o pid,comm")
    first.expect(r"1 sh")
    first.expect("# ")
    first.sendline('echo "jay" > /foo')
    first.expect("# ")
    first.send(DETACH)
    first.expect(pexpect.EOF)
    first.close()
    assert first.exitstatus == 0
    ps = engine("ps").stdout.splitlines()
    assert ps[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    assert "hungry_pike" in ps[1] and "Up " in ps[1] and '"sh"' in ps[1]

    second = engine.spawn("run", "-it", "--name", "sharp_yalow", "busybox", "sh")
    second.expect("# ")
    second.sendline('echo "no jay here" > /foo')
    second.expect("# ")
    second.send(DETACH)
    second.expect(pexpect.EOF)

    attach = engine.spawn("attach", "hungry_pike")
    attach.sendline("cat /foo")
    attach.expect("jay")
    attach.send(DETACH)
    attach.expect(pexpect.EOF)
    assert engine("exec", "sharp_yalow", "cat", "/foo").stdout == "no jay here\n"

    engine("stop", "-t", "1", "hungry_pike", "sharp_yalow")
    commit = engine("commit", "-m", "jay was here", "hungry_pike", "foo_is_jay").stdout.strip()
    assert commit.startswith("sha256:")
    ps_a = engine("ps", "-a").stdout
    assert "Exited (137)" in ps_a  # sh as PID 1 ignores SIGTERM: stop kills it after the timeout
    engine("rm", "sharp_yalow", "hungry_pike")
    history = engine("history", "foo_is_jay").stdout.splitlines()
    assert history[1].split()[0] == commit.split(":")[1][:12] and "4B" in history[1] and "jay was here" in history[1]

    third = engine.spawn("run", "-it", "foo_is_jay", "sh")
    third.expect("# ")
    third.sendline("cat foo")
    third.expect("jay")
    third.sendline("exit")
    third.expect(pexpect.EOF)
    third.close()
    assert third.exitstatus == 0


def test_logs_follow_and_exec_it_sees_pid_1(engine: Engine) -> None:
    engine("run", "-d", "--name", "mycontainer", "busybox", "sh", "-c",
           "trap 'exit 0' TERM; i=0; while :; do echo line $i; i=$((i+1)); sleep 0.1; done")  # fmt: skip
    follow = subprocess.Popen(
        [STOCKADE, "logs", "-f", "mycontainer"], env=engine.env, stdout=subprocess.PIPE, text=True
    )
    assert follow.stdout is not None
    assert follow.stdout.readline() == "line 0\n"
    assert follow.stdout.readline() == "line 1\n"
    shell = engine.spawn("exec", "-it", "mycontainer", "sh")
    shell.expect("# ")
    shell.sendline("ps -o pid,args")
    shell.expect(r"1 sh -c trap")
    shell.sendline("exit 7")
    shell.expect(pexpect.EOF)
    shell.close()
    assert shell.exitstatus == 7
    engine("stop", "mycontainer")
    follow.wait(timeout=10)  # -f ends when the container does
    assert follow.returncode == 0
    logs = engine("logs", "--tail", "2", "-t", "mycontainer").stdout.splitlines()
    assert len(logs) == 2 and logs[0].split(" ", 1)[1].startswith("line ") and logs[0][4] == "-"
    assert engine.inspect("mycontainer")["State"]["ExitCode"] == 0


# -- unprivileged by default -------------------------------------------------------------------
def test_containers_run_as_disjoint_unprivileged_ranges(engine: Engine) -> None:
    engine("run", "-d", "--name", "a", "busybox", "sleep", "60")
    engine("run", "-d", "--name", "b", "busybox", "sleep", "60")
    a, b = engine.inspect("a"), engine.inspect("b")
    uid_a, uid_b = _host_uids(a["State"]["Pid"]), _host_uids(b["State"]["Pid"])
    assert uid_a >= 100000 + 65536 * 0 and uid_b >= 100000 and abs(uid_a - uid_b) >= 65536
    assert a["GraphDriver"]["Data"]["IDMapping"] == "idmapped-mount"
    maps = engine("exec", "a", "cat", "/proc/self/uid_map").stdout.split()
    assert maps == ["0", str(uid_a), "65536"]
    caps = engine("exec", "a", "grep", "CapEff", "/proc/self/status").stdout.split()[1]
    assert caps == "00000000a80425fb"  # Docker's default set, nothing more
    assert engine("exec", "a", "grep", "NoNewPrivs", "/proc/self/status").stdout.split()[1] == "1"
    assert engine("exec", "a", "grep", "Seccomp:", "/proc/self/status").stdout.split()[1] == "2"
    assert engine("exec", "a", "id", "-u").stdout.strip() == "0"
    nofile = engine("exec", "a", "sh", "-c", "ulimit -Hn").stdout.strip()
    import resource

    assert int(nofile) <= resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    engine("rm", "-f", "a", "b")
    assert not os.listdir(engine.root / "idslots")


# -- restart policies and supervision ----------------------------------------------------------
def test_restart_policies(engine: Engine) -> None:
    engine("run", "-d", "--name", "flaky", "--restart", "on-failure:2", "busybox", "sh", "-c", "exit 3")
    doc = engine.wait_for("flaky", "exited")
    deadline = time.monotonic() + 10
    while doc["RestartCount"] < 2 or doc["State"]["Status"] != "exited":
        assert time.monotonic() < deadline
        time.sleep(0.1)
        doc = engine.inspect("flaky")
    time.sleep(0.5)
    doc = engine.inspect("flaky")
    assert doc["RestartCount"] == 2 and doc["State"]["ExitCode"] == 3 and doc["State"]["Status"] == "exited"

    engine("run", "-d", "--name", "always", "--restart", "always", "busybox", "sh", "-c", "sleep 0.2")
    deadline = time.monotonic() + 10
    while engine.inspect("always")["RestartCount"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    engine("stop", "-t", "1", "always")
    time.sleep(0.5)
    doc = engine.inspect("always")
    assert doc["State"]["Status"] == "exited"  # a stop is never undone by the policy


def test_cli_killed_mid_run_leaves_container_and_logs(engine: Engine) -> None:
    cli = subprocess.Popen(
        [STOCKADE, "run", "--name", "survivor", "busybox", "sh", "-c", "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.05; done"],
        env=engine.env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert cli.stdout is not None
    assert cli.stdout.readline() == "tick 0\n"
    cli.kill()
    cli.wait()
    time.sleep(0.3)
    assert engine.inspect("survivor")["State"]["Running"]
    lines = engine("logs", "survivor").stdout.splitlines()
    assert len(lines) >= 3 and lines[:3] == ["tick 0", "tick 1", "tick 2"]


def _served_workers(engine: Engine, cwd: Path) -> list[int]:
    """The monitor host's children working in `cwd`: command workers (cli/served.py) run in
    their client's working directory, monitors in the run root."""
    host = int((engine.root / "run" / "monitor-host.pid").read_text())
    found = []
    for child in Path(f"/proc/{host}/task/{host}/children").read_text().split():
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{child}/cwd") == str(cwd):
                found.append(int(child))
    return found


def test_commands_served_by_the_warm_host(engine: Engine, tmp_path: Path) -> None:
    """bin/stockade hands commands to the monitor host: they still get the caller's working
    directory, environment, stdio and exit status; a killed client takes its worker along,
    and a signal to the client reaches the command."""
    engine("run", "-d", "--name", "keeper", "--network", "none", "busybox", "sleep", "300")
    assert (engine.root / "run" / "monitor-host.sock").exists()
    work = tmp_path / "cwd"
    work.mkdir()
    env = {**engine.env, "GREETING": "hello-served"}
    proc = subprocess.run([STOCKADE, "run", "--rm", "--network", "none", "-e", "GREETING", "-i", "busybox", "sh", "-c",
                           "echo $GREETING; cat; exit 3"], env=env, cwd=work, input="from-stdin\n",
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert (proc.returncode, proc.stdout) == (3, "hello-served\nfrom-stdin\n"), proc.stderr
    subprocess.run([STOCKADE, "cp", "keeper:/etc/hostname", "copied"], env=env, cwd=work, check=True, timeout=30)
    assert (work / "copied").read_text().strip() == engine.inspect("keeper")["Config"]["Hostname"]
    # A caller's strict umask does not reach the store (the container's root must traverse it).
    strict = subprocess.run([STOCKADE, "run", "--rm", "--network", "none", "busybox", "echo", "umask-ok"], env=env,
                            capture_output=True, text=True, timeout=30, preexec_fn=lambda: os.umask(0o077))  # fmt: skip
    assert strict.stdout == "umask-ok\n", strict.stderr
    bad = subprocess.run([STOCKADE, "inspect", "nosuch"], env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "no such container" in bad.stderr.lower()
    # A client killed: its worker goes too (a foreground `logs -f` would otherwise live on).
    client = subprocess.Popen([STOCKADE, "logs", "-f", "keeper"], env=env, cwd=work, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not _served_workers(engine, work) and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = _served_workers(engine, work)
    assert workers, "the command was not served by the host"
    client.kill()
    client.wait()
    deadline = time.monotonic() + 5
    while any(
        os.path.exists(f"/proc/{w}") and "Z" not in Path(f"/proc/{w}/stat").read_text().split()[2] for w in workers
    ):
        assert time.monotonic() < deadline, "the worker outlived its killed client"
        time.sleep(0.02)
    # SIGINT to the client reaches the command (here: `logs -f` stops, as docker's does).
    client = subprocess.Popen([STOCKADE, "logs", "-f", "keeper"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(0.5)
    client.send_signal(signal.SIGINT)
    assert client.wait(timeout=10) in (0, 130)
    engine("rm", "-f", "keeper")


def test_monitor_killed_state_still_true(engine: Engine) -> None:
    engine("run", "-d", "--name", "orphan", "busybox", "sleep", "60")
    state = json.loads((engine.root / "containers" / engine.inspect("orphan")["Id"] / "state.json").read_text())
    os.kill(state["MonitorPid"], signal.SIGKILL)
    time.sleep(0.2)
    doc = engine.inspect("orphan")
    assert doc["State"]["Running"] and doc["State"]["Pid"] == state["Pid"]
    os.kill(state["Pid"], signal.SIGKILL)
    doc = engine.wait_for("orphan", "exited")
    assert doc["State"]["ExitCode"] == 255 and "monitor died" in doc["State"]["Error"]
    assert "Exited (255)" in engine("ps", "-a").stdout
    engine("start", "orphan")  # a new monitor takes over
    assert engine.inspect("orphan")["State"]["Running"]


def test_twenty_containers_in_parallel_then_nothing_left(engine: Engine) -> None:
    def start(i: int) -> str:
        return engine("run", "-d", "--name", f"par{i}", "busybox", "sleep", "60").stdout.strip()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(start, range(20)))
    assert len(set(ids)) == 20
    docs = [engine.inspect(f"par{i}") for i in range(20)]
    assert all(d["State"]["Running"] for d in docs)
    uids = sorted(_host_uids(d["State"]["Pid"]) for d in docs)
    assert all(b - a >= 65536 for a, b in itertools.pairwise(uids))
    assert len(engine("ps", "-q").stdout.split()) == 20
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: engine("rm", "-f", f"par{i}"), range(20)))
    assert engine("ps", "-aq").stdout == ""
    assert os.listdir(engine.root / "containers") == [".lock"]
    assert not os.listdir(engine.root / "idslots")
    assert not [n for n in os.listdir(engine.root / "run" / "runtime") if not n.startswith(".")]
    assert not [h for h in os.listdir(engine.root / "images" / "holds") if h.startswith("ctr-")]
    cgroups = [p for p in Path("/sys/fs/cgroup/memory/stockade").glob("*") if p.name in ids]
    assert not cgroups


# -- errors people can act on ------------------------------------------------------------------
def test_errors_and_exit_codes(engine: Engine) -> None:
    r = engine("stop", "web", check=False)
    assert r.returncode == 1 and r.stderr == "stockade: no such container: web\n"
    engine("create", "--name", "web", "busybox", "true")
    r = engine("run", "--name", "web", "busybox", "true", check=False)
    assert r.returncode == 125 and 'name "web" is already in use by container' in r.stderr
    r = engine("run", "--rm", "busybax", "true", check=False)
    assert (
        r.returncode == 125 and 'image "busybax" not found locally' in r.stderr and 'did you mean "busybox"' in r.stderr
    )
    r = engine("run", "--rm", "busybox", "/no/such/thing", check=False)
    assert r.returncode == 127, r.stderr
    r = engine("run", "--rm", "busybox", "/etc/passwd", check=False)
    assert r.returncode == 126, r.stderr
    r = engine("run", "--rm", "busybox", "sh", "-c", "exit 42", check=False)
    assert r.returncode == 42
    r = engine("run", "--rm", "-v", "relative:dir", "busybox", "true", check=False)
    assert r.returncode == 125 and "must be an absolute path" in r.stderr
    r = engine("run", "--rm", "--ulimit", "nofile=abc", "busybox", "true", check=False)
    assert r.returncode == 125 and r.stderr.count("\n") == 1
    assert engine("ps", "-aq").stdout.split() == [engine.inspect("web")["Id"][:12]]  # nothing half-made
    r = engine("rm", "web")
    assert engine("ps", "-aq").stdout == ""


def test_run_rm_stdin_and_env(engine: Engine) -> None:
    r = engine(
        "run",
        "--rm",
        "-i",
        "-e",
        "GREETING=hi",
        "busybox",
        "sh",
        "-c",
        'read x; echo "$GREETING $x"; echo err >&2',
        input="there\n",
    )
    assert r.stdout == "hi there\n" and r.stderr == "err\n"
    assert engine("ps", "-aq").stdout == ""
    r = engine("run", "--rm", "-w", "/tmp", "-u", "nobody", "-h", "box", "busybox", "sh", "-c", "pwd; id -un; hostname")
    assert r.stdout.split() == ["/tmp", "nobody", "box"]


def test_init_reaps_zombies(engine: Engine) -> None:
    orphan_maker = "(sleep 0.1 &); exec sleep 60"  # the orphaned sleep is PID 1's to reap
    engine("run", "-d", "--init", "--name", "reaper", "busybox", "sh", "-c", orphan_maker)
    engine("run", "-d", "--name", "noreaper", "busybox", "sh", "-c", orphan_maker)
    time.sleep(0.6)
    ps = engine("exec", "reaper", "ps", "-o", "pid,stat,args").stdout
    assert "stockade-init" in ps.splitlines()[1]
    assert " Z " not in ps
    assert " Z " in engine("exec", "noreaper", "ps", "-o", "pid,stat,args").stdout
    engine("stop", "-t", "5", "reaper")  # the init forwards SIGTERM: sleep dies of it at once
    assert engine.inspect("reaper")["State"]["ExitCode"] == 143


def test_volumes_binds_tmpfs(engine: Engine, tmp_path: Path) -> None:
    engine("volume", "create", "shared")
    engine("run", "--rm", "-v", "shared:/etc/skel", "busybox", "sh", "-c", "echo one > /etc/skel/x")
    r = engine(
        "run",
        "--rm",
        "-v",
        "shared:/data:ro",
        "busybox",
        "sh",
        "-c",
        "cat /data/x; stat -c %u /data/x; touch /data/y",
        check=False,
    )
    assert r.stdout.split() == ["one", "0"] and "Read-only" in r.stderr
    # a named volume seeded from the image at first use
    r = engine("run", "--rm", "-v", "etcvol:/etc", "busybox", "ls", "/etc")
    assert "passwd" in r.stdout
    host = tmp_path / "hostdir"
    host.mkdir()
    (host / "file").write_text("from host\n")
    r = engine("run", "--rm", "-v", f"{host}:/mnt:ro", "--tmpfs", "/scratch:size=1m", "busybox", "sh", "-c",
               "cat /mnt/file; grep /scratch /proc/mounts | cut -d' ' -f3")  # fmt: skip
    assert r.stdout.split() == ["from", "host", "tmpfs"]
    assert engine("volume", "rm", "shared").stdout == "shared\n"
    assert "etcvol" in engine("volume", "ls", "-q").stdout


def test_cp_diff_export_stay_inside(engine: Engine, tmp_path: Path) -> None:
    engine("run", "-d", "--name", "box", "busybox", "sh", "-c", "ln -s /etc/shadow /tmp/evil; rm /bin/vi; sleep 60")
    time.sleep(0.3)
    src = tmp_path / "in.txt"
    src.write_text("copied in\n")
    engine("cp", str(src), "box:/tmp/")
    assert engine("exec", "box", "cat", "/tmp/in.txt").stdout == "copied in\n"
    assert engine("exec", "box", "stat", "-c", "%u", "/tmp/in.txt").stdout.strip() == "0"
    out = tmp_path / "out"
    out.mkdir()
    engine("cp", "box:/etc/hostname", str(out))
    assert (out / "hostname").read_text().strip() == engine.inspect("box")["Config"]["Hostname"]
    r = engine("cp", "box:/tmp/evil", str(out / "evil"), check=False)
    assert r.returncode != 0  # resolved inside the container: its /etc/shadow is not there
    diff = engine("diff", "box").stdout.splitlines()
    assert "D /bin/vi" in diff and "A /tmp/in.txt" in diff
    names = subprocess.run(["tar", "t"], input=subprocess.run([STOCKADE, "export", "box"], env=engine.env, capture_output=True).stdout,
                           capture_output=True).stdout.decode().split()  # fmt: skip
    assert (
        "tmp/in.txt" in names
        and "bin/vi" not in names
        and not any(n.startswith("proc/") and n != "proc/" for n in names)
    )


def test_pause_top_stats_rename_wait(engine: Engine) -> None:
    engine("run", "-d", "--name", "p1", "busybox", "sleep", "60")
    engine("pause", "p1")
    assert engine.inspect("p1")["State"]["Status"] == "paused"
    assert "(Paused)" in engine("ps").stdout
    engine("unpause", "p1")
    assert "sleep 60" in engine("top", "p1").stdout
    stats = engine("stats", "--no-stream", "p1").stdout.splitlines()
    assert stats[0].split()[:3] == ["CONTAINER", "ID", "NAME"] and "p1" in stats[1]
    engine("rename", "p1", "p2")
    waiter = subprocess.Popen([STOCKADE, "wait", "p2"], env=engine.env, stdout=subprocess.PIPE, text=True)
    engine("kill", "-s", "KILL", "p2")  # (sleep as PID 1 would ignore SIGTERM)
    assert waiter.communicate(timeout=10)[0].strip() == "137"
    assert engine.inspect("p2")["State"]["ExitCode"] == 137


@pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc")
def test_another_oci_runtime_runs_the_same_bundle(engine: Engine) -> None:
    """--runtime runc: the same bundle, the same monitor (logs, exit codes, stop), another runtime."""
    out = engine("run", "--rm", "--runtime", "runc", "busybox", "sh", "-c", "echo via-runc; cat /proc/self/uid_map")
    assert "via-runc" in out.stdout and out.stdout.split()[-2] != "0"  # its own user namespace, as ours
    assert engine("run", "--rm", "--runtime", "runc", "busybox", "sh", "-c", "exit 7", check=False).returncode == 7
    engine("run", "-d", "--name", "viarunc", "--runtime", "runc", "busybox", "sh", "-c", "echo up; exec sleep 300")
    doc = engine.inspect("viarunc")
    assert doc["HostConfig"]["Runtime"] == "runc" and doc["State"]["Running"]
    assert "up" in engine("logs", "viarunc").stdout
    # exec through runc's own `exec --process`: environment, user, exit status; a terminal too.
    got = engine(
        "exec", "-e", "X=via-exec", "-u", "1000", "viarunc", "sh", "-c", "echo $X $(id -u); exit 3", check=False
    )
    assert (got.returncode, got.stdout.strip()) == (3, "via-exec 1000"), got.stderr
    session = engine.spawn("exec", "-it", "viarunc", "sh")
    session.sendline("tty; exit")
    session.expect("/dev/pts/")
    session.expect(pexpect.EOF)
    engine("stop", "-t", "1", "viarunc")
    assert engine.inspect("viarunc")["State"]["ExitCode"] == 137
    missing = engine("run", "--rm", "--runtime", "nosuch", "busybox", "true", check=False)
    assert missing.returncode == 125 and "--runtime nosuch: no such OCI runtime" in missing.stderr


def test_intercepted_mknod_is_mediated_by_the_monitor(engine: Engine) -> None:
    """--security-opt intercept=mknod: the monitor answers the container's mknod calls (seccomp
    notify): harmless character devices are made for it, owned by its root; the rest refused."""
    script = ("mknod /tmp/null c 1 3 && ls -ln /tmp/null && echo data > /tmp/null && echo wrote; "
              "mknod /tmp/sda b 8 0 2>/dev/null || echo block-denied; mknod /tmp/mem c 1 1 2>/dev/null || echo mem-denied")  # fmt: skip
    out = engine("run", "--rm", "--network", "none", "--security-opt", "intercept=mknod", "busybox", "sh", "-c", script)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("crw") and lines[0].split()[2:4] == ["0", "0"] and "1,   3" in lines[0], lines
    assert lines[1:] == ["wrote", "block-denied", "mem-denied"]
    plain = engine("run", "--rm", "--network", "none", "busybox", "sh", "-c", "mknod /tmp/null c 1 3 || echo denied")
    assert plain.stdout.strip() == "denied"
    engine(
        "run", "-d", "--name", "med", "--network", "none", "--security-opt", "intercept=mknod", "busybox", "sleep", "60"
    )
    assert engine("exec", "med", "sh", "-c", "mknod /tmp/z c 1 5 && echo exec-ok").stdout.strip() == "exec-ok"
    socket_dir = engine.root / "run" / "notify"
    assert [p.name for p in socket_dir.iterdir()] == [engine.inspect("med")["Id"][:12] + ".sock"]
    engine("rm", "-f", "med")
    assert list(socket_dir.iterdir()) == []
    for opts, message in (
        (["intercept=mount"], "only mknod"),
        (["intercept=mknod", "seccomp=unconfined"], "needs a seccomp"),
    ):
        args = [x for o in opts for x in ("--security-opt", o)]
        bad = engine("run", "--rm", *args, "busybox", "true", check=False)
        assert bad.returncode == 125 and message in bad.stderr


def test_unnamed_commit_is_listed_until_rmi_or_prune(engine: Engine) -> None:
    engine("run", "--name", "src", "--network", "none", "busybox", "sh", "-c", "echo x > /x")
    first = engine("commit", "src").stdout.strip().split(":")[1][:12]
    second = engine("commit", "src").stdout.strip().split(":")[1][:12]
    rows = [line.split() for line in engine("images").stdout.splitlines()[1:]]
    assert ["<none>", "<none>", first] in [r[:3] for r in rows] and ["<none>", "<none>", second] in [
        r[:3] for r in rows
    ]
    assert engine("run", "--rm", "--network", "none", first, "cat", "/x").stdout == "x\n"
    engine("rmi", first)
    engine("image", "prune", "-f")
    listed = engine("images", "-q").stdout.split()
    assert first not in listed and second not in listed
    engine("rm", "src")
