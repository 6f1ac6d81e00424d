"""create/start/state/kill/delete/run as the runtime spec defines them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import requires_root

pytestmark = requires_root


def wait_status(runtime, cid: str, status: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        proc = runtime("state", cid, check=False)
        state = json.loads(proc.stdout) if proc.returncode == 0 else {"status": "absent"}
        if state["status"] == status or time.monotonic() > deadline:
            return state
        time.sleep(0.02)


def create(runtime, bundle, cid: str, *flags: str) -> None:
    bundle.write()
    with open(bundle.path / f"{cid}.out", "w") as out:
        proc = subprocess.run(
            runtime.cmd("create", "--bundle", str(bundle.path), *flags, cid),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            timeout=60,
        )
    assert proc.returncode == 0, (bundle.path / f"{cid}.out").read_text()


def test_state_transitions_created_running_stopped(bundle, runtime):
    bundle.writable().sh("touch /started; sleep 30")
    create(runtime, bundle, "c1")
    state = runtime.state("c1")
    assert state["status"] == "created"
    assert state["pid"] > 0
    assert state["ociVersion"].startswith("1.")
    assert state["bundle"] == str(bundle.path)
    assert not (bundle.rootfs / "started").exists(), "the process ran before start"
    runtime("start", "c1")
    assert runtime.state("c1")["status"] == "running"
    deadline = time.monotonic() + 5
    while not (bundle.rootfs / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (bundle.rootfs / "started").exists()
    runtime("kill", "c1", "KILL")
    assert wait_status(runtime, "c1", "stopped")["status"] == "stopped"
    runtime("delete", "c1")
    proc = runtime("state", "c1", check=False)
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr


def test_start_twice_is_refused(bundle, runtime):
    create(runtime, bundle.sh("sleep 30"), "c1")
    runtime("start", "c1")
    proc = runtime("start", "c1", check=False)
    assert proc.returncode == 1
    assert "container c1 is running, cannot start it" in proc.stderr


def test_delete_running_needs_force(bundle, runtime):
    runtime.detached(bundle.sh("sleep 30"), "c1")
    proc = runtime("delete", "c1", check=False)
    assert proc.returncode == 1 and "cannot delete" in proc.stderr
    pid = runtime.state("c1")["pid"]
    runtime("delete", "--force", "c1")
    assert not os.path.exists(f"/proc/{pid}") or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_delete_of_created_container_kills_it(bundle, runtime):
    create(runtime, bundle.sh("sleep 30"), "c1")
    runtime("delete", "c1")
    assert runtime("list", "-q").stdout.strip() == ""


@pytest.mark.parametrize("sig", ["TERM", "SIGTERM", "15"])
def test_kill_by_name_and_number(bundle, runtime, sig):
    runtime.detached(bundle.sh("trap 'exit 0' TERM; while true; do sleep 0.1; done"), "c1")
    runtime("kill", "c1", sig)
    assert wait_status(runtime, "c1", "stopped")["status"] == "stopped"


def test_kill_unknown_signal_is_an_error(bundle, runtime):
    runtime.detached(bundle.sh("sleep 30"), "c1")
    proc = runtime("kill", "c1", "SIGFOO", check=False)
    assert proc.returncode == 1 and 'unknown signal "SIGFOO"' in proc.stderr


def test_kill_all_signals_every_process(bundle, runtime):
    runtime.detached(bundle.sh("sleep 30 & sleep 30 & wait"), "c1")
    time.sleep(0.2)
    assert len(json.loads(runtime("ps", "--format", "json", "c1").stdout)) == 3
    runtime("kill", "--all", "c1", "KILL")
    assert wait_status(runtime, "c1", "stopped")["status"] == "stopped"


def test_exit_code_propagates(bundle, runtime):
    bundle.sh("exit 7").write()
    proc = runtime("run", "--bundle", str(bundle.path), "c1", check=False)
    assert proc.returncode == 7


def test_death_by_signal_is_128_plus_signal(bundle, runtime):
    # PID 1 of a pid namespace ignores signals it has no handler for, unless they come from
    # an ancestor namespace with SIGKILL/SIGSTOP: so kill it from outside.
    bundle.sh("sleep 30").write()
    proc = subprocess.Popen(runtime.cmd("run", "--bundle", str(bundle.path), "c1"))
    wait_status(runtime, "c1", "running")
    runtime("kill", "c1", "KILL")
    assert proc.wait(timeout=10) == 128 + signal.SIGKILL


def test_pid_1_ignores_unhandled_signals_from_inside(bundle, runtime):
    bundle.sh("kill -USR1 $$; echo survived").write()
    proc = runtime("run", "--bundle", str(bundle.path), "c1")
    assert proc.stdout == "survived\n"


def test_run_forwards_signals_to_the_container(bundle, runtime):
    bundle.sh("trap 'echo got-term; exit 3' TERM; while true; do sleep 0.1; done").write()
    proc = subprocess.Popen(runtime.cmd("run", "--bundle", str(bundle.path), "c1"), stdout=subprocess.PIPE, text=True)
    wait_status(runtime, "c1", "running")
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 3
    assert "got-term" in out


def test_stdio_passthrough(bundle, runtime):
    bundle.sh("read line; echo got:$line; echo err >&2").write()
    proc = runtime("run", "--bundle", str(bundle.path), "c1", input=b"hello\n")
    assert proc.stdout == "got:hello\n"
    assert proc.stderr == "err\n"


def test_pid_file(bundle, runtime, tmp_path):
    pid_file = tmp_path / "pid"
    create(runtime, bundle.sh("sleep 30"), "c1", "--pid-file", str(pid_file))
    assert int(pid_file.read_text()) == runtime.state("c1")["pid"]


def test_list_and_ps(bundle, runtime):
    runtime.detached(bundle.sh("sleep 30"), "c1")
    table = runtime("list").stdout.splitlines()
    assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    assert table[1].split()[0] == "c1" and table[1].split()[2] == "running"
    listed = json.loads(runtime("list", "--format", "json").stdout)
    assert listed[0]["id"] == "c1" and listed[0]["status"] == "running"
    pids = json.loads(runtime("ps", "--format", "json", "c1").stdout)
    assert runtime.state("c1")["pid"] in pids
    ps_table = runtime("ps", "c1").stdout
    assert "PID" in ps_table.splitlines()[0] and "sleep 30" in ps_table


def test_pause_and_resume(bundle, runtime):
    runtime.detached(bundle.sh("sleep 30"), "c1")
    runtime("pause", "c1")
    assert runtime.state("c1")["status"] == "paused"
    runtime("resume", "c1")
    assert runtime.state("c1")["status"] == "running"


def test_exec_fifo_start_of_dead_container_fails_cleanly(bundle, runtime):
    create(runtime, bundle.sh("sleep 30"), "c1")
    os.kill(runtime.state("c1")["pid"], signal.SIGKILL)
    wait_status(runtime, "c1", "stopped")
    proc = runtime("start", "c1", check=False)
    assert proc.returncode == 1 and "stopped" in proc.stderr


def test_state_of_missing_container(runtime):
    proc = runtime("state", "nope", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "stockade-runtime: state nope: container nope does not exist"


def test_delete_force_of_missing_container_succeeds(runtime):
    assert runtime("delete", "--force", "nope").returncode == 0


def test_duplicate_id_is_refused(bundle, runtime):
    runtime.detached(bundle.sh("sleep 30"), "c1")
    bundle.write()
    proc = runtime("create", "--bundle", str(bundle.path), "c1", check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and "container c1 already exists" in proc.stderr
    assert runtime.state("c1")["status"] == "running"


def test_features(runtime):
    features = json.loads(runtime("features").stdout)
    assert features["ociVersionMax"] == "1.2.0"
    assert "user" in features["linux"]["namespaces"]
    assert "createContainer" in features["hooks"]


def test_spec_writes_a_runnable_config(bundle, runtime, tmp_path):
    target = tmp_path / "spec"
    target.mkdir()
    runtime("spec", "--bundle", str(target))
    config = json.loads((target / "config.json").read_text())
    assert config["process"]["args"] == ["sh"]
    proc = runtime("spec", "--bundle", str(target), check=False)
    assert proc.returncode == 1 and "exists" in proc.stderr


def test_log_format_json(bundle, runtime, tmp_path):
    log = tmp_path / "log.json"
    proc = subprocess.run(
        [runtime.binary, "--root", str(runtime.root), "--log", str(log), "--log-format", "json", "state", "nope"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error"
    assert entry["msg"] == "state nope: container nope does not exist"
