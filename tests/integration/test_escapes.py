"""The escape battery: each attack fails from inside a container with the default security
settings (tests/conftest.py Bundle.secure), as root on the host, with the exact errno."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import requires_root

pytestmark = [requires_root, pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")]


@pytest.fixture
def attack(bundle, runtime, escape_binary):
    shutil.copy(escape_binary, bundle.rootfs / "escape")
    bundle.secure().writable()

    def run(*args: str) -> str:
        return runtime.run_output(bundle.args("/escape", *args)).strip()

    return run


def test_chroot_breakout_stays_in_the_container(attack, tmp_path):
    marker = tmp_path / "host-only-marker"
    marker.write_text("host")
    os.chmod(marker, 0o644)
    assert attack("chroot", str(marker)) == "ENOENT"


def test_shocker_open_by_handle_at_is_refused(attack):
    assert attack("shocker") == "EPERM"


def test_writing_proc_sys_kernel_is_refused(attack):
    # Two layers refuse it: the host-owned file is unwritable for a mapped root (EACCES, checked
    # first), and /proc/sys is a read-only bind (EROFS: see test_isolation's masked paths test).
    assert attack("write", "/proc/sys/kernel/core_pattern") == "EACCES"


def test_writing_sysrq_trigger_is_refused(attack):
    if not os.path.exists("/proc/sysrq-trigger"):
        pytest.skip("this kernel has no /proc/sysrq-trigger")
    assert attack("write", "/proc/sysrq-trigger") == "EROFS"


def test_kallsyms_shows_no_addresses(bundle, runtime):
    bundle.secure()
    out = runtime.run_output(bundle.sh("head -n 50 /proc/kallsyms | cut -d' ' -f1 | sort -u"))
    assert out.split() == ["0000000000000000"]


def test_kcore_is_masked(bundle, runtime):
    if not os.path.exists("/proc/kcore"):
        pytest.skip("this kernel has no /proc/kcore")
    bundle.secure()
    assert runtime.run_output(bundle.sh("wc -c < /proc/kcore")).strip() == "0"


def test_mounting_anything_is_refused(attack):
    assert attack("mount") == "EPERM"


def test_loading_a_kernel_module_is_refused(attack):
    assert attack("module") == "EPERM"


def test_creating_a_block_device_is_refused(attack):
    assert attack("blockdev") == "EPERM"


def test_ptrace_of_a_process_outside_is_refused(attack):
    assert attack("ptrace", "1") == "EPERM"


def test_release_agent_is_out_of_reach(attack, bundle, runtime):
    # CVE-2022-0492: mount a v1 hierarchy to reach its release_agent; and the mounted view
    # of the host's hierarchies is the container's own cgroup, read-only, with no agent file.
    assert attack("cgroup-mount") == "EPERM"
    out = runtime.run_output(
        bundle.sh("ls /sys/fs/cgroup/memory/release_agent 2>&1; echo x 2>&1 > /sys/fs/cgroup/memory/cgroup.procs; true")
    )
    assert "No such file or directory" in out and "Read-only file system" in out


def test_unsharing_a_user_namespace_to_regain_capabilities_is_refused(attack):
    assert attack("userns") == "EPERM"
    assert attack("userns-clone") == "EPERM"


def test_keyring_syscalls_are_refused(attack):
    assert attack("keyctl") == "EPERM"


def test_each_container_gets_its_own_session_keyring(bundle, runtime, escape_binary):
    shutil.copy(escape_binary, bundle.rootfs / "escape")
    bundle.userns().args("/escape", "session-keyring")
    first = runtime.run_output(bundle, "alpha").strip()
    second = runtime.run_output(bundle, "beta").strip()
    assert first.endswith(";_ses.alpha") and second.endswith(";_ses.beta")


def test_no_new_keyring_keeps_the_callers(bundle, runtime, escape_binary):
    shutil.copy(escape_binary, bundle.rootfs / "escape")
    bundle.args("/escape", "session-keyring").write()
    out = runtime("run", "--no-new-keyring", "--bundle", str(bundle.path), "gamma").stdout.strip()
    assert not out.endswith(";_ses.gamma")


def _sha256(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_host_binaries_cannot_be_overwritten_from_inside_during_exec(bundle, runtime, escape_binary):
    """CVE-2019-5736: while `exec` runs the host's interpreter inside the container's
    namespaces, a process inside hunts for it through /proc/PID/exe; it must find nothing
    it can write (the joining processes are not dumpable, and are not its uid)."""
    import sys

    shutil.copy(escape_binary, bundle.rootfs / "escape")
    runtime.detached(bundle.secure().sh("sleep 60"), "c1")
    interpreter = os.path.realpath(sys.executable)
    before = _sha256(interpreter)
    watcher = subprocess.Popen(
        runtime.cmd("exec", "c1", "/escape", "exe-watch", "4"), stdout=subprocess.PIPE, text=True
    )
    for _ in range(15):
        runtime("exec", "c1", "true")
    out, _ = watcher.communicate(timeout=30)
    wrote, seen = (int(part.split("=")[1]) for part in out.split())
    assert wrote == 0
    assert seen > 0
    assert _sha256(interpreter) == before


def test_exec_holds_no_host_descriptor_or_directory(bundle, runtime):
    """CVE-2024-21626: nothing of the host's filesystem reachable through fds or cwd."""
    runtime.detached(bundle.secure().sh("sleep 60"), "c1")
    script = "for f in /proc/self/fd/* /proc/self/cwd /proc/self/root /proc/1/cwd; do readlink $f; done"
    out = runtime("exec", "c1", "sh", "-c", script).stdout
    for target in out.split():
        assert not target.startswith(("/tmp", "/work", "/run", "/root", "/home", "/proc/")), target
