"""Each namespace is new, the ID maps are the config's, the mounts are the container's own."""

from __future__ import annotations

import os

import pytest

from conftest import USERNS_BASE, requires_root

pytestmark = requires_root

NS_KINDS = ("mnt", "uts", "ipc", "net", "pid", "cgroup", "user", "time")


def ns_inodes(text: str) -> dict[str, str]:
    out = {}
    for line in text.split():
        kind, _, target = line.partition("=")
        out[kind] = target
    return out


def test_every_requested_namespace_is_new(bundle, runtime):
    bundle.userns()
    bundle.linux["namespaces"].append({"type": "time"})
    script = " ".join(f"echo {k}=$(readlink /proc/self/ns/{k});" for k in NS_KINDS)
    inside = ns_inodes(runtime.run_output(bundle.sh(script)))
    for kind in NS_KINDS:
        host = os.readlink(f"/proc/self/ns/{kind}")
        assert inside[kind] != host, f"{kind} namespace is the host's"


def test_without_user_namespace_the_host_user_namespace_is_kept(bundle, runtime):
    out = runtime.run_output(bundle.sh("readlink /proc/self/ns/user"))
    assert out.strip() == os.readlink("/proc/self/ns/user")


def test_hostname_and_pid_1(bundle, runtime):
    out = runtime.run_output(bundle.sh("hostname; echo $$; cat /proc/1/cmdline | tr '\\0' ' '"))
    hostname, pid, cmdline = out.splitlines()
    assert hostname == "testbox"
    assert pid == "1"
    assert cmdline.startswith("sh -c")


def test_domainname(bundle, runtime):
    bundle.config["domainname"] = "example.test"
    assert runtime.run_output(bundle.sh("cat /proc/sys/kernel/domainname")).strip() == "example.test"


def test_uid_and_gid_maps_are_the_configs(bundle, runtime):
    bundle.userns()
    out = runtime.run_output(bundle.sh("cat /proc/self/uid_map /proc/self/gid_map; id -u"))
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["0", str(USERNS_BASE), "65536"]
    assert lines[1] == ["0", str(USERNS_BASE), "65536"]
    assert lines[2] == ["0"]


def test_container_processes_run_as_the_mapped_uid_on_the_host(bundle, runtime):
    pid = runtime.detached(bundle.userns().sh("sleep 30"), "c1")["pid"]
    with open(f"/proc/{pid}/status") as f:
        uid_line = next(line for line in f if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(USERNS_BASE)] * 4
    runtime("delete", "--force", "c1")


def test_mountinfo_shows_the_containers_own_mounts(bundle, runtime):
    bundle.userns()
    out = runtime.run_output(bundle.sh("cat /proc/self/mountinfo"))
    targets = [line.split()[4] for line in out.splitlines()]
    assert targets[0] == "/"
    for expected in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"):
        assert expected in targets
    assert not any(t.startswith("/tmp/") or t == "/work" for t in targets)
    root_line = out.splitlines()[0]
    assert str(bundle.rootfs) in root_line.split()[3]
    assert " ro," in f" {root_line.split()[5]},"


def test_masked_paths_are_empty_and_readonly_paths_refuse_writes(bundle, runtime):
    bundle.userns()
    script = (
        "cat /proc/timer_list | wc -c; ls -A /proc/acpi | wc -l; "
        "echo 1 > /proc/sys/kernel/ns_last_pid 2>&1 || echo refused"
    )
    out = runtime.run_output(bundle.sh(script))
    size, entries, refused = out.split("\n")[:3]
    assert size.strip() == "0"
    assert entries.strip() == "0"
    assert "Read-only file system" in refused or refused == "refused"


@pytest.mark.cgroups
def test_cgroup_namespace_shows_root_and_the_cgroup_mount_is_read_only(bundle, runtime):
    bundle.userns()
    out = runtime.run_output(bundle.sh("cat /proc/self/cgroup; grep ' /sys/fs/cgroup' /proc/self/mountinfo"))
    lines = out.splitlines()
    cgroups = [line for line in lines if line[:1].isdigit() and line.count(":") == 2]
    assert cgroups and all(line.endswith(":/") for line in cgroups)
    mounts = [line.split() for line in lines if " /sys/fs/cgroup" in line]
    assert mounts and all(m[5].startswith("ro") for m in mounts)


def test_dev_has_the_default_devices_and_links(bundle, runtime):
    bundle.userns()
    out = runtime.run_output(
        bundle.sh("ls /dev; readlink /dev/fd; echo x > /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c")
    )
    for name in ("null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "fd", "stdin"):
        assert name in out.split()
    assert "/proc/self/fd" in out
    assert "null-ok" in out
    assert out.split()[-1] == "4"


def test_time_namespace_offsets(bundle, runtime):
    bundle.linux["namespaces"].append({"type": "time"})
    bundle.linux["timeOffsets"] = {"boottime": {"secs": 86400 * 365, "nanosecs": 0}}
    uptime = float(runtime.run_output(bundle.sh("cat /proc/uptime")).split()[0])
    assert uptime > 86400 * 365


def test_readonly_root(bundle, runtime):
    out = runtime.run_output(bundle.sh("touch /newfile 2>&1; echo done"))
    assert "Read-only file system" in out


def test_writable_root(bundle, runtime):
    bundle.writable()
    runtime.run_output(bundle.sh("echo hi > /newfile"))
    assert (bundle.rootfs / "newfile").read_text() == "hi\n"


def test_sysctl_is_applied(bundle, runtime):
    bundle.linux["sysctl"] = {"kernel.shmmax": "12345678"}
    bundle.config["root"]["readonly"] = True
    bundle.linux["readonlyPaths"] = []
    assert runtime.run_output(bundle.sh("cat /proc/sys/kernel/shmmax")).strip() == "12345678"


def test_sysfs_is_bound_read_only_in_a_userns_without_its_own_netns(bundle, runtime):
    bundle.userns()
    bundle.linux["namespaces"] = [ns for ns in bundle.linux["namespaces"] if ns["type"] != "network"]
    out = runtime.run_output(bundle.sh("cat /proc/self/mountinfo; ls /sys/kernel >/dev/null && echo listed"))
    mounts = [line.split() for line in out.splitlines() if len(line.split()) > 5]
    under_sys = [m for m in mounts if m[4] == "/sys" or m[4].startswith("/sys/")]
    assert [m[4] for m in under_sys].count("/sys") == 1
    # every mount under /sys, the host's submounts included, is read-only
    assert all(m[5].startswith("ro") for m in under_sys), [(m[4], m[5]) for m in under_sys if not m[5].startswith("ro")]
    assert out.splitlines()[-1] == "listed"


def test_linux_devices_are_created(bundle, runtime):
    bundle.linux["devices"] = [
        {"type": "c", "path": "/dev/fuse", "major": 10, "minor": 229, "fileMode": 0o600, "uid": 0, "gid": 0}
    ]
    out = runtime.run_output(bundle.sh("ls -l /dev/fuse"))
    assert out.startswith("crw-------") and "10, 229" in out


def test_linux_devices_in_a_userns_are_bind_mounted_from_the_host(bundle, runtime):
    bundle.userns()
    bundle.linux["devices"] = [{"type": "c", "path": "/dev/fuse", "major": 10, "minor": 229}]
    out = runtime.run_output(bundle.sh("ls -l /dev/fuse; grep ' /dev/fuse ' /proc/self/mountinfo | wc -l"))
    assert "10, 229" in out and out.split()[-1] == "1"
