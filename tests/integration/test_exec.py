"""exec joins every namespace and the cgroup of the container, with the process's settings."""

from __future__ import annotations

import json
import subprocess

from conftest import requires_root

pytestmark = requires_root

NS = ("mnt", "uts", "ipc", "net", "pid", "cgroup", "user")


def readlinks(runtime, cid: str) -> dict[str, str]:
    script = " ".join(f"echo {k}=$(readlink /proc/self/ns/{k});" for k in NS)
    out = runtime("exec", cid, "sh", "-c", script).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def test_exec_joins_every_namespace_of_the_container(bundle, runtime):
    state = runtime.detached(bundle.userns().sh("sleep 30"), "c1")
    init = {k: __import__("os").readlink(f"/proc/{state['pid']}/ns/{k}") for k in NS}
    assert readlinks(runtime, "c1") == init


def test_exec_sees_the_containers_processes_and_hostname(bundle, runtime):
    runtime.detached(bundle.userns().sh("sleep 30"), "c1")
    out = runtime("exec", "c1", "sh", "-c", "hostname; ps -o pid,comm | grep sleep").stdout
    hostname, sleep_line = out.splitlines()
    assert hostname == "testbox"
    assert sleep_line.split() == ["1", "sleep"]


def test_exec_joins_the_cgroup(bundle, runtime):
    runtime.detached(bundle.userns().sh("sleep 30"), "c1")
    out = runtime("exec", "c1", "cat", "/proc/self/cgroup").stdout
    assert all(line.endswith(":/") for line in out.splitlines())
    assert len(json.loads(runtime("ps", "--format", "json", "c1").stdout)) == 1  # exec has exited


def test_exec_flags_cwd_env_user(bundle, runtime):
    runtime.detached(bundle.userns().sh("sleep 30"), "c1")
    out = runtime(
        "exec", "--cwd", "/tmp", "--env", "A=b", "--user", "1000:100", "c1", "sh", "-c", "pwd; echo $A; id -u; id -g"
    ).stdout
    assert out.split() == ["/tmp", "b", "1000", "100"]


def test_exec_process_json(bundle, runtime, tmp_path):
    runtime.detached(bundle.userns().sh("sleep 30"), "c1")
    process = {
        "args": ["sh", "-c", "echo $X; pwd"],
        "cwd": "/etc",
        "env": ["X=from-json"],
        "user": {"uid": 0, "gid": 0},
    }
    path = tmp_path / "process.json"
    path.write_text(json.dumps(process))
    assert runtime("exec", "--process", str(path), "c1").stdout.split() == ["from-json", "/etc"]


def test_exec_exit_code(bundle, runtime):
    runtime.detached(bundle.sh("sleep 30"), "c1")
    assert runtime("exec", "c1", "sh", "-c", "exit 42", check=False).returncode == 42


def test_exec_of_missing_program_is_a_clear_error(bundle, runtime):
    runtime.detached(bundle.sh("sleep 30"), "c1")
    proc = runtime("exec", "c1", "nosuchprog", check=False)
    assert proc.returncode == 1
    assert 'exec: "nosuchprog": executable file not found in $PATH' in proc.stderr


def test_exec_detach_with_pid_file(bundle, runtime, tmp_path):
    runtime.detached(bundle.sh("sleep 30"), "c1")
    pid_file = tmp_path / "exec.pid"
    subprocess.run(
        runtime.cmd("exec", "-d", "--pid-file", str(pid_file), "c1", "sleep", "20"),
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pid = int(pid_file.read_text())
    assert pid in json.loads(runtime("ps", "--format", "json", "c1").stdout)


def test_exec_into_stopped_container_is_refused(bundle, runtime):
    runtime.detached(bundle.sh("true"), "c1")
    import time

    time.sleep(0.3)
    proc = runtime("exec", "c1", "true", check=False)
    assert proc.returncode == 1 and "container c1 is stopped, cannot exec" in proc.stderr


def test_exec_process_is_not_dumpable_while_it_joins(bundle, runtime):
    """The host's runtime must never be reachable from inside: the exec'd program is a fresh
    image, and /proc/self/exe points inside the container's root."""
    runtime.detached(bundle.userns().sh("sleep 30"), "c1")
    out = runtime("exec", "c1", "readlink", "/proc/self/exe").stdout.strip()
    assert out == "/bin/busybox"


def test_exec_has_exactly_the_containers_capability_sets(bundle, runtime):
    caps = ["CAP_CHOWN", "CAP_KILL"]
    bundle.userns()
    bundle.process["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
    runtime.detached(bundle.sh("sleep 30"), "c1")
    out = runtime("exec", "c1", "grep", "^Cap", "/proc/self/status").stdout
    sets = dict(line.split(":\t") for line in out.splitlines())
    want = f"{(1 << 0) | (1 << 5):016x}"
    assert (sets["CapPrm"], sets["CapEff"], sets["CapBnd"], sets["CapAmb"]) == (want, want, want, "0" * 16)
    out = runtime("exec", "--cap", "CAP_NET_BIND_SERVICE", "c1", "grep", "^CapEff", "/proc/self/status").stdout
    assert out.split()[1] == f"{(1 << 0) | (1 << 5) | (1 << 10):016x}"
