"""Resource control on this host's cgroup layout (v1 hybrid): the issue's demos, update,
events with OOM kills, pause, and removal after a crash."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import requires_root
from stockade.runtime.cgroups import detect_layout

pytestmark = [requires_root, pytest.mark.cgroups]
UNIFIED = detect_layout().kind == "unified"


def cgroup_dirs(cid: str) -> list[str]:
    layout = detect_layout()
    mounts = [*layout.v1.values(), *([layout.unified] if layout.unified else [])]
    return [p for p in (os.path.join(m, "stockade", cid) for m in set(mounts)) if os.path.isdir(p)]


def test_fork_bomb_is_contained_by_pids_limit_and_update_raises_it(bundle, runtime):
    bundle.linux["resources"]["pids"] = {"limit": 5}
    runtime.detached(bundle.sh("sleep 60"), "c1")
    # PID 1 and the exec'd shell count: three more fit, then fork fails (and busybox sh exits).
    script = "for i in 1 2 3 4 5 6 7 8; do sleep 30 >/dev/null 2>&1 & echo started $i; done"
    out = runtime("exec", "c1", "sh", "-c", script, check=False)
    assert out.returncode != 0 and "can't fork" in out.stderr, out.stderr
    assert out.stdout.split().count("started") <= 3
    stats = json.loads(runtime("events", "--stats", "c1").stdout)
    assert stats["data"]["pids"]["limit"] == 5 and stats["data"]["pids"]["current"] <= 5
    runtime("update", "--pids-limit", "20", "c1")
    out = runtime("exec", "c1", "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 30 >/dev/null 2>&1 & done; echo forked")
    assert "forked" in out.stdout
    assert json.loads(runtime("events", "--stats", "c1").stdout)["data"]["pids"]["limit"] == 20


def test_memory_hog_is_oom_killed_inside_and_events_report_it(bundle, runtime, escape_binary):
    shutil.copy(escape_binary, bundle.rootfs / "escape")
    bundle.linux["resources"]["memory"] = {"limit": 64 * 1024 * 1024}
    runtime.detached(bundle.sh("sleep 60"), "c1")
    watcher = subprocess.Popen(runtime.cmd("events", "--interval", "100ms", "c1"), stdout=subprocess.PIPE, text=True)
    try:
        hog = runtime("exec", "c1", "/escape", "memhog", "256", check=False)
        assert hog.returncode == 137, (hog.stdout, hog.stderr)  # SIGKILL from the OOM killer
        deadline = time.monotonic() + 10
        saw_oom = False
        while not saw_oom and time.monotonic() < deadline:
            line = watcher.stdout.readline()
            saw_oom = json.loads(line)["type"] == "oom"
        assert saw_oom
    finally:
        watcher.kill()
        watcher.wait()
    assert runtime.state("c1")["status"] == "running", "the OOM killer took the container's init"


def test_cpu_quota_limits_usage_to_about_20_percent(bundle, runtime):
    from stockade.runtime.container import cgroup_manager
    from stockade.runtime.state import State

    bundle.linux["resources"]["cpu"] = {"quota": 20000, "period": 100000}
    runtime.detached(bundle.sh("while :; do :; done"), "c1")
    manager = cgroup_manager(State.load(str(runtime.root), "c1"))
    # Read the usage in-process, with our own clock: a CLI call per sample would blur the window.
    start, used = time.monotonic(), manager.stats()["cpu"]["usage"]["total"]
    time.sleep(2)
    share = (manager.stats()["cpu"]["usage"]["total"] - used) / ((time.monotonic() - start) * 1e9)
    assert 0.15 <= share <= 0.25, share


def test_cpuset_pins_to_one_cpu(bundle, runtime):
    bundle.linux["resources"]["cpu"] = {"cpus": "0"}
    out = runtime.run_output(bundle.sh("grep Cpus_allowed_list /proc/self/status"))
    assert out.split()[-1] == "0"


def test_device_rules_deny_a_block_device_even_to_root(bundle, runtime):
    # Really privileged (no user namespace, CAP_MKNOD and CAP_SYS_ADMIN) and the node is in
    # the rootfs already: only the devices cgroup (deny-all by default) stands in the way.
    os.mknod(bundle.rootfs / "loop7", 0o600 | 0o060000, os.makedev(7, 7))
    caps = ["CAP_MKNOD", "CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE"]
    bundle.process["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")}
    out = runtime.run_output(bundle.writable().sh("head -c 1 /loop7 2>&1; mknod /tmp/sda b 8 0 2>&1; true"))
    assert out.count("Operation not permitted") == 2, out


def test_pause_freezes_and_resume_continues(bundle, runtime):
    bundle.writable()
    counter = bundle.rootfs / "tmp/counter"
    runtime.detached(bundle.sh("while :; do echo . >> /tmp/counter; done"), "c1")
    time.sleep(0.3)
    runtime("pause", "c1")
    assert runtime.state("c1")["status"] == "paused"
    frozen = counter.stat().st_size
    time.sleep(1)
    assert counter.stat().st_size == frozen
    runtime("resume", "c1")
    time.sleep(0.3)
    assert counter.stat().st_size > frozen


def test_no_cgroup_is_left_after_kill_9_of_init_and_delete(bundle, runtime):
    state = runtime.detached(bundle.sh("sleep 60 & sleep 60"), "c1")
    assert cgroup_dirs("c1")
    os.kill(state["pid"], 9)
    time.sleep(0.2)
    runtime("delete", "c1")
    assert cgroup_dirs("c1") == []


def test_invalid_update_values_are_refused(bundle, runtime):
    runtime.detached(bundle.sh("sleep 60"), "c1")
    proc = runtime("update", "--memory", "lots", "c1", check=False)
    assert proc.returncode == 1 and 'invalid size "lots"' in proc.stderr
    proc = runtime("update", "--pids-limit", "-7", "c1", check=False)
    assert proc.returncode == 1 and "linux.resources.pids.limit" in proc.stderr


@pytest.mark.skipif(UNIFIED, reason="v1 only")
def test_unified_keys_are_refused_on_v1(bundle, runtime):
    bundle.linux["resources"]["unified"] = {"memory.high": "1000000"}
    bundle.write()
    proc = runtime("run", "--bundle", str(bundle.path), "c1", check=False)
    assert proc.returncode == 1 and "needs cgroup v2" in proc.stderr
    assert cgroup_dirs("c1") == []


@pytest.mark.skipif(not UNIFIED, reason="cgroup v2 only")
def test_unified_keys_are_applied_on_v2_and_unknown_ones_refused(bundle, runtime):
    bundle.linux["resources"]["unified"] = {"memory.high": "50000000"}
    runtime.detached(bundle.sh("sleep 30"), "c1")
    high = Path(cgroup_dirs("c1")[0], "memory.high").read_text().strip()
    assert high == "49999872"  # rounded down to whole pages
    runtime("delete", "--force", "c1")
    bundle.linux["resources"]["unified"] = {"memory.nosuchknob": "1"}
    bundle.write()
    proc = runtime("run", "--bundle", str(bundle.path), "c2", check=False)
    assert proc.returncode == 1 and 'unknown cgroup file "memory.nosuchknob"' in proc.stderr
    assert cgroup_dirs("c2") == []


def test_hugepages_cpu_burst_and_swappiness_are_written(bundle, runtime):
    layout = detect_layout()
    root_control = Path(layout.unified or "/nonexistent", "cgroup.subtree_control")
    enabled_before = root_control.read_text().split() if root_control.exists() else []
    try:
        _check_hugepages_burst_swappiness(bundle, runtime)
    finally:
        runtime("delete", "--force", "c1", check=False)
        # Leave the host's cgroup2 root as it was (hugetlb is enabled there for the container).
        if root_control.exists() and "hugetlb" not in enabled_before and "hugetlb" in root_control.read_text().split():
            root_control.write_text("-hugetlb")


def _check_hugepages_burst_swappiness(bundle, runtime):
    from stockade.runtime.state import State

    resources = bundle.linux["resources"]
    resources["hugepageLimits"] = [{"pageSize": "2MB", "limit": 4 * 1024 * 1024}]
    resources["cpu"] = {"quota": 20000, "period": 100000, "burst": 10000}
    if not UNIFIED:
        resources["memory"] = {"swappiness": 10}
    runtime.detached(bundle.sh("sleep 30"), "c1")
    paths = State.load(str(runtime.root), "c1").cgroup_paths
    if "hugetlb" in paths:  # a v1 hugetlb hierarchy
        assert Path(paths["hugetlb"], "hugetlb.2MB.limit_in_bytes").read_text().strip() == str(4 << 20)
    else:  # cgroup2: unified, or the hybrid host's cgroup2 mount where hugetlb lives
        assert Path(paths[""], "hugetlb.2MB.max").read_text().strip() == str(4 << 20)
    if UNIFIED:
        assert Path(paths[""], "cpu.max.burst").read_text().strip() == "10000"
    else:
        assert Path(paths["cpu"], "cpu.cfs_burst_us").read_text().strip() == "10000"
        assert Path(paths["memory"], "memory.swappiness").read_text().strip() == "10"


def test_network_class_needs_its_controller(bundle, runtime):
    layout = detect_layout()
    bundle.linux["resources"]["network"] = {"classID": 1048577}
    bundle.write()
    proc = runtime("run", "--bundle", str(bundle.path), "c1", check=False)
    if "net_cls" in layout.v1:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 1
        assert "net_cls controller is not mounted" in proc.stderr or "no net_cls/net_prio" in proc.stderr
        assert cgroup_dirs("c1") == []


@pytest.mark.skipif(not UNIFIED, reason="cgroup v2 only (delegation)")
def test_rootless_uses_a_delegated_subtree(bundle, tmp_path):
    """An unprivileged caller whose cgroup's parent was delegated to it (as systemd's
    user@UID.service is) gets its container's cgroup there, with limits."""
    nobody, python = 65534, "/usr/bin/python3"
    if not os.path.exists(python) or shutil.which("setpriv") is None:
        pytest.skip("needs python3 and setpriv")
    delegated = Path(detect_layout().unified or "", "stockade-test-delegated")
    leaf = delegated / "leaf"
    leaf.mkdir(parents=True)
    try:
        (delegated / "cgroup.subtree_control").write_text("+pids +memory")
        for path in (delegated, leaf):
            for name in ("", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
                os.chown(path / name if name else path, nobody, nobody)
        bundle.linux["namespaces"] = [ns for ns in bundle.linux["namespaces"] if ns["type"] != "cgroup"]
        bundle.rootless(nobody).linux["resources"] = {"pids": {"limit": 10}}
        bundle.sh("cat /proc/self/cgroup")
        bundle.give_to(nobody)
        state = tmp_path / "state-rootless"
        state.mkdir()
        os.chown(state, nobody, nobody)
        src = str(Path(__file__).resolve().parents[2] / "src")
        launcher = f"import sys; sys.path.insert(0, {src!r}); from stockade.cli.runtime import main; sys.exit(main())"
        script = (
            f"echo $$ > {leaf}/cgroup.procs && exec setpriv --reuid {nobody} --regid {nobody} --clear-groups "
            f"{python} -I -c {shlex.quote(launcher)} --root {state} run --bundle {bundle.path} r1"
        )
        proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "without a delegated cgroup" not in proc.stderr
        assert "/stockade-test-delegated/stockade-r1" in proc.stdout
        assert not (delegated / "stockade-r1").exists()
    finally:
        for path in (leaf, delegated):
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def test_block_io_throttle_is_written_and_a_nonexistent_device_is_refused(bundle, runtime):
    from stockade.runtime.state import State

    disk = os.stat("/").st_dev  # the device holding the root, or else any block device here
    devices = sorted(os.listdir("/sys/dev/block"))
    if os.path.exists(f"/sys/dev/block/{os.major(disk)}:{os.minor(disk)}"):
        major, minor = os.major(disk), os.minor(disk)
    elif devices:
        major, minor = (int(n) for n in devices[0].split(":"))
    else:
        pytest.skip("no block device on this machine")
    bundle.linux["resources"]["blockIO"] = {
        "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1048576}]
    }
    runtime.detached(bundle.sh("sleep 30"), "c1")
    paths = State.load(str(runtime.root), "c1").cgroup_paths
    if UNIFIED:
        assert f"{major}:{minor} rbps=1048576" in Path(paths[""], "io.max").read_text()
    else:
        assert f"{major}:{minor} 1048576" in Path(paths["blkio"], "blkio.throttle.read_bps_device").read_text()
    runtime("delete", "--force", "c1")
    bundle.linux["resources"]["blockIO"] = {"throttleReadBpsDevice": [{"major": 250, "minor": 99, "rate": 1}]}
    bundle.write()
    proc = runtime("run", "--bundle", str(bundle.path), "c2", check=False)
    assert proc.returncode == 1 and "250:99" in proc.stderr, proc.stderr
    assert cgroup_dirs("c2") == []
