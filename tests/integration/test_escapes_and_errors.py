"""Mount targets never escape the rootfs, and invalid configs fail cleanly with one clear line."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import requires_root

pytestmark = requires_root


def run_failing(runtime, bundle, cid: str = "bad", write: bool = True) -> str:
    if write:
        bundle.write()
    proc = runtime("run", "--bundle", str(bundle.path), cid, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert runtime("list", "-q").stdout == "", "a failed create left its state behind"
    return lines[0]


def test_proc_symlinked_to_a_host_path_stays_inside(bundle, runtime, tmp_path):
    host_dir = tmp_path / "host-target"
    host_dir.mkdir()
    (host_dir / "precious").write_text("host data")
    os.rmdir(bundle.rootfs / "proc")
    os.symlink(str(host_dir), bundle.rootfs / "proc")  # absolute: would point at the host's dir
    out = runtime.run_output(bundle.writable().sh("ls /proc/self/ns >/dev/null && echo proc-ok"))
    assert "proc-ok" in out
    assert sorted(os.listdir(host_dir)) == ["precious"], "the mount landed on the host"
    # RESOLVE_IN_ROOT resolved the link inside the rootfs: the mount point was made there.
    assert (bundle.rootfs / str(host_dir).lstrip("/")).is_dir()


def test_relative_dotdot_symlink_cannot_climb_out(bundle, runtime, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    os.symlink("../../../../../../../../" + str(victim).lstrip("/"), bundle.rootfs / "escape")
    bundle.config["mounts"].append({"destination": "/escape", "type": "tmpfs", "source": "tmpfs"})
    out = runtime.run_output(bundle.writable().sh("touch /escape/x && echo wrote"))
    assert "wrote" in out
    assert os.listdir(victim) == []


def test_bind_mount_source_through_symlinked_volume_target(bundle, runtime, tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "data").write_text("volume content")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), bundle.rootfs / "mnt-link")
    bundle.config["mounts"].append(
        {"destination": "/mnt-link", "type": "bind", "source": str(volume), "options": ["rbind", "ro"]}
    )
    out = runtime.run_output(bundle.writable().sh("cat /mnt-link/data; touch /mnt-link/x 2>&1 || true"))
    assert "volume content" in out and "Read-only file system" in out
    assert os.listdir(outside) == []


def test_bind_mounts_and_options(bundle, runtime, tmp_path):
    volume = tmp_path / "vol"
    volume.mkdir()
    os.chmod(volume, 0o777)
    single = tmp_path / "single.txt"
    single.write_text("one file\n")
    bundle.config["mounts"] += [
        {"destination": "/data", "type": "bind", "source": str(volume), "options": ["rbind", "rw", "nosuid", "nodev"]},
        {"destination": "/etc/single.txt", "type": "bind", "source": str(single), "options": ["bind", "ro"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "mode=1777", "noexec"]},
    ]
    script = "echo hi > /data/out; cat /etc/single.txt; grep -E ' /(data|scratch|etc/single.txt) ' /proc/self/mountinfo"
    out = runtime.run_output(bundle.sh(script))
    assert (volume / "out").read_text() == "hi\n"
    assert "one file" in out
    mounts = {line.split()[4]: line.split()[5] for line in out.splitlines() if line.count(" ") > 5}
    assert "nosuid" in mounts["/data"] and "nodev" in mounts["/data"]
    assert mounts["/etc/single.txt"].startswith("ro")
    assert "noexec" in mounts["/scratch"]


def test_namespace_joined_by_path(bundle, runtime, tmp_path):
    """Join another container's network and uts namespace through /proc/PID/ns."""
    other = runtime.detached(bundle.sh("sleep 30"), "first")
    bundle.linux["namespaces"] = [{"type": t} for t in ("pid", "ipc", "mount", "cgroup")] + [
        {"type": "network", "path": f"/proc/{other['pid']}/ns/net"},
        {"type": "uts", "path": f"/proc/{other['pid']}/ns/uts"},
    ]
    bundle.config.pop("hostname")
    out = runtime.run_output(bundle.sh("readlink /proc/self/ns/net; hostname"), "second")
    net, hostname = out.split()
    assert net == os.readlink(f"/proc/{other['pid']}/ns/net")
    assert hostname == "testbox"


INVALID = [
    ("no-process-args", lambda c: c["process"].update(args=[]), "process.args: must name the program to run"),
    ("relative-cwd", lambda c: c["process"].update(cwd="tmp"), 'process.cwd: must be an absolute path, not "tmp"'),
    (
        "bad-env",
        lambda c: c["process"].update(env=["NOEQUALS"]),
        'process.env[0]: "NOEQUALS" is not of the form KEY=value',
    ),
    (
        "unknown-cap",
        lambda c: c["process"]["capabilities"]["bounding"].append("CAP_FOO"),
        'process.capabilities.bounding[3]: unknown capability "CAP_FOO"',
    ),
    (
        "unknown-rlimit",
        lambda c: c["process"]["rlimits"].append({"type": "RLIMIT_FOO", "soft": 1, "hard": 1}),
        'process.rlimits[1].type: unknown rlimit "RLIMIT_FOO"',
    ),
    (
        "soft-above-hard",
        lambda c: c["process"]["rlimits"].__setitem__(0, {"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}),
        "soft limit 10 is above its hard limit 5",
    ),
    (
        "unknown-namespace",
        lambda c: c["linux"]["namespaces"].append({"type": "foo"}),
        'linux.namespaces[6].type: unknown namespace type "foo"',
    ),
    (
        "duplicate-namespace",
        lambda c: c["linux"]["namespaces"].append({"type": "pid"}),
        'namespace "pid" is listed twice',
    ),
    (
        "no-mount-namespace",
        lambda c: c["linux"].update(namespaces=[{"type": "pid"}]),
        "linux.namespaces: a mount namespace is required",
    ),
    (
        "userns-without-maps",
        lambda c: c["linux"]["namespaces"].append({"type": "user"}),
        "a new user namespace needs uidMappings and gidMappings",
    ),
    (
        "uid-not-mapped",
        lambda c: (
            c["linux"]["namespaces"].append({"type": "user"}),
            c["linux"].update(
                uidMappings=[{"containerID": 0, "hostID": 100000, "size": 10}],
                gidMappings=[{"containerID": 0, "hostID": 100000, "size": 10}],
            ),
            c["process"]["user"].update(uid=50),
        ),
        "process.user.uid: 50 is not mapped by linux.uidMappings",
    ),
    (
        "relative-mount",
        lambda c: c["mounts"].append({"destination": "data", "type": "tmpfs"}),
        'mounts[7].destination: must be an absolute path, not "data"',
    ),
    (
        "bind-without-source",
        lambda c: c["mounts"].append({"destination": "/data", "type": "bind"}),
        "mounts[7].source: a bind mount needs a source",
    ),
    (
        "missing-bind-source",
        lambda c: c["mounts"].append({"destination": "/data", "type": "bind", "source": "/nonexistent/dir"}),
        "source /nonexistent/dir does not exist",
    ),
    (
        "bad-fs-type",
        lambda c: c["mounts"].append({"destination": "/data", "type": "nosuchfs", "source": "x"}),
        "mount nosuchfs on /data: ENODEV",
    ),
    (
        "unknown-propagation",
        lambda c: c["linux"].update(rootfsPropagation="sideways"),
        'linux.rootfsPropagation: unknown propagation "sideways"',
    ),
    (
        "missing-cwd",
        lambda c: c["process"].update(cwd="/does/not/exist"),
        "process.cwd: /does/not/exist does not exist in the container",
    ),
    (
        "missing-program",
        lambda c: c["process"].update(args=["/bin/nope"]),
        'exec: "/bin/nope": no such file or directory',
    ),
    ("wrong-type", lambda c: c["process"].update(terminal="yes"), "process.terminal: must be a boolean, not str"),
    ("bad-version", lambda c: c.update(ociVersion="2.0.0"), 'ociVersion: unsupported version "2.0.0"'),
    ("missing-root", lambda c: c.pop("root"), "root: is required"),
    ("missing-rootfs", lambda c: c["root"].update(path="nope"), "root.path:"),
    (
        "hostname-without-uts",
        lambda c: c["linux"].update(namespaces=[{"type": "mount"}]),
        "hostname: setting it needs a new uts namespace",
    ),
    (
        "time-offsets-without-timens",
        lambda c: c["linux"].update(timeOffsets={"boottime": {"secs": 1}}),
        "linux.timeOffsets: needs a new time namespace",
    ),
    (
        "bad-sysctl",
        lambda c: c["linux"].update(sysctl={"kernel.nosuchknob": "1"}),
        "linux.sysctl: set kernel.nosuchknob=1",
    ),
    (
        "missing-hook",
        lambda c: c.update(hooks={"createRuntime": [{"path": "/nonexistent/hook"}]}),
        "createRuntime hook 0 (/nonexistent/hook): No such file or directory",
    ),
    (
        "missing-ns-path",
        lambda c: (
            c["linux"]["namespaces"].append({"type": "network", "path": "/nonexistent/ns"})
            or c["linux"]["namespaces"].remove({"type": "network"})
        ),
        "open network namespace /nonexistent/ns",
    ),
    (
        "seccomp-bad-action",
        lambda c: c["linux"].update(seccomp={"defaultAction": "SCMP_ACT_FOO"}),
        'linux.seccomp.defaultAction: unknown action "SCMP_ACT_FOO"',
    ),
    (
        "seccomp-bad-operator",
        lambda c: c["linux"].update(
            seccomp={
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {
                        "names": ["kill"],
                        "action": "SCMP_ACT_ERRNO",
                        "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_FOO"}],
                    }
                ],
            }
        ),
        'linux.seccomp.syscalls[0].args[0].op: unknown operator "SCMP_CMP_FOO"',
    ),
    (
        "seccomp-bad-arch",
        lambda c: c["linux"].update(seccomp={"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}),
        'linux.seccomp.architectures[0]: unknown architecture "SCMP_ARCH_Z80"',
    ),
    (
        "seccomp-notify-without-listener",
        lambda c: c["linux"].update(
            seccomp={"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mknod"], "action": "SCMP_ACT_NOTIFY"}]}
        ),
        "SCMP_ACT_NOTIFY needs a listenerPath",
    ),
    (
        "selinux-on-host-without-it",
        lambda c: c["process"].update(selinuxLabel="system_u:system_r:container_t:s0"),
        "process.selinuxLabel",
    ),
    (
        "systemd-cgroups-path",
        lambda c: c["linux"].update(cgroupsPath="system.slice:stockade:c1"),
        "systemd cgroup driver is not supported",
    ),
]


@pytest.mark.parametrize("name,mutate,message", INVALID, ids=[case[0] for case in INVALID])
def test_invalid_config_fails_with_one_clear_line_and_leaves_nothing(bundle, runtime, name, mutate, message):
    mutate(bundle.config)
    line = run_failing(runtime, bundle)
    assert line.startswith("stockade-runtime: run bad: "), line
    assert message in line, line


def test_invalid_json(bundle, runtime):
    bundle.write()
    (bundle.path / "config.json").write_text("{not json")
    line = run_failing(runtime, bundle, write=False)
    assert "invalid JSON" in line


def test_invalid_container_id(bundle, runtime):
    bundle.write()
    proc = runtime("run", "--bundle", str(bundle.path), "../escape", check=False)
    assert proc.returncode == 1 and 'invalid container ID "../escape"' in proc.stderr


def test_unknown_flag_and_command(runtime):
    proc = runtime("create", "--frobnicate", "x", check=False)
    assert proc.returncode == 1 and "flag provided but not defined: -frobnicate" in proc.stderr
    proc = runtime("frobnicate", check=False)
    assert proc.returncode == 1 and 'unknown command "frobnicate"' in proc.stderr


def test_systemd_cgroup_flag_is_refused_clearly(runtime):
    proc = runtime("--systemd-cgroup", "list", check=False)
    assert proc.returncode == 1 and "systemd cgroup driver is not supported" in proc.stderr


def test_apparmor_profile_on_a_host_without_apparmor_warns_and_runs(bundle, runtime):
    bundle.process["apparmorProfile"] = "docker-default"
    bundle.args("echo", "ran").write()
    proc = runtime("run", "--bundle", str(bundle.path), "c1")
    assert proc.stdout == "ran\n"
    assert proc.stderr.count("AppArmor is not enabled on this host") == 1
