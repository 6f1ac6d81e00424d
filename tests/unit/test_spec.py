"""config.json validation: every error names the JSON path of the bad field."""

from __future__ import annotations

import copy

import pytest

from stockade.errors import SpecError
from stockade.spec.defaults import default_config
from stockade.spec.mountopts import MS_BIND, MS_NODEV, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, plan_mount
from stockade.spec.runtime import load_config, load_process
from stockade.spec.seccomp import plan_seccomp


def config(**changes):
    c = default_config(args=["true"], terminal=False)
    c.update(changes)
    return c


def error(raw) -> str:
    with pytest.raises(SpecError) as info:
        load_config(raw, "/bundle")
    return str(info.value)


def test_default_config_loads():
    c = load_config(config(), "/bundle")
    assert c.root_path == "/bundle/rootfs"
    assert c.process is not None and c.process.args == ["true"]
    assert c.linux.new_namespace("pid") and not c.linux.new_namespace("user")
    assert [m.destination for m in c.mounts][:2] == ["/proc", "/dev"]


def test_absolute_root_path_is_kept():
    assert load_config(config(root={"path": "/srv/rootfs"}), "/bundle").root_path == "/srv/rootfs"


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda c: c["process"].update(args="sh"), "process.args: must be an array, not str"),
        (lambda c: c["process"]["user"].update(uid=-1), "process.user.uid: must be >= 0, not -1"),
        (lambda c: c["process"]["user"].update(uid=True), "process.user.uid: must be an integer, not bool"),
        (
            lambda c: c["process"]["capabilities"]["effective"].insert(0, "CAP_NOPE"),
            'process.capabilities.effective[0]: unknown capability "CAP_NOPE"',
        ),
        (
            lambda c: c["process"].update(oomScoreAdj=5000),
            "process.oomScoreAdj: must be between -1000 and 1000, not 5000",
        ),
        (lambda c: c["mounts"][1].update(options=["rro"]), 'mounts[1].options: option "rro" is not supported yet'),
        (lambda c: c["mounts"].append({"destination": "/a/../b", "type": "tmpfs"}), 'must not contain ".." components'),
        (
            lambda c: c["linux"].update(uidMappings=[{"containerID": 0, "hostID": 1, "size": 0}]),
            "linux.uidMappings[0].size: must be >= 1, not 0",
        ),
        (
            lambda c: c["linux"]["namespaces"].__setitem__(0, {"type": "pid", "path": "proc/1/ns/pid"}),
            'linux.namespaces[0].path: must be an absolute path, not "proc/1/ns/pid"',
        ),
        (
            lambda c: c["linux"].update(devices=[{"type": "x", "path": "/dev/x"}]),
            'linux.devices[0].type: unknown device type "x"',
        ),
        (lambda c: c["linux"].update(devices=[{"type": "c", "path": "/dev/x"}]), "linux.devices[0].major: is required"),
        (
            lambda c: c["linux"].update(maskedPaths=["proc/kcore"]),
            'linux.maskedPaths[0]: must be an absolute path, not "proc/kcore"',
        ),
        (
            lambda c: c.update(hooks={"prestart": [{"path": "/bin/true", "timeout": 0}]}),
            "hooks.prestart[0].timeout: must be a positive number of seconds, not 0",
        ),
        (
            lambda c: c["linux"].update(personality={"domain": "BSD"}),
            'linux.personality.domain: unknown personality domain "BSD"',
        ),
        (
            lambda c: c["linux"].update(timeOffsets={"realtime": {"secs": 1}}),
            'linux.timeOffsets.realtime: unknown clock "realtime"',
        ),
        (lambda c: c["linux"].update(intelRdt={"closID": "x"}), "linux.intelRdt: Intel RDT is not supported"),
        (lambda c: c.update(annotations={"a": 1}), 'annotations: value of "a" must be a string'),
    ],
)
def test_errors_name_the_json_path(mutate, message):
    raw = config()
    mutate(raw)
    assert message in error(raw)


def test_process_is_optional_for_the_spec_but_user_must_be_mapped():
    raw = config()
    raw["linux"]["namespaces"].append({"type": "user"})
    raw["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 1000}]
    raw["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 1000}]
    raw["process"]["user"] = {"uid": 0, "gid": 0, "additionalGids": [2000]}
    assert error(raw) == "process.user.additionalGids[0]: 2000 is not mapped by linux.gidMappings"


def test_load_process_for_exec():
    p = load_process({"args": ["sh"], "cwd": "/", "env": ["A=1=2"]})
    assert p.env_dict() == {"A": "1=2"}
    with pytest.raises(SpecError, match=r"process\.cwd: is required"):
        load_process({"args": ["sh"]})


def test_mount_options_translate_to_flags_and_data():
    plan = plan_mount("mounts[0]", "/data", "bind", "/src", ["rbind", "ro", "nosuid", "nodev", "rprivate"])
    assert plan.bind and plan.recursive
    assert plan.flags == MS_BIND | MS_REC | MS_RDONLY | MS_NOSUID | MS_NODEV
    assert plan.propagation == MS_PRIVATE | MS_REC
    assert plan.needs_remount()
    tmpfs = plan_mount("mounts[1]", "/tmp", "tmpfs", "tmpfs", ["nosuid", "size=1m", "mode=1777", "tmpcopyup"])
    assert tmpfs.data_string == "size=1m,mode=1777"
    assert not tmpfs.bind


def test_rw_after_ro_clears_it():
    assert not plan_mount("m", "/x", "tmpfs", "t", ["ro", "rw"]).flags & MS_RDONLY


@pytest.mark.parametrize(
    "args,message",
    [
        (("bind", None, ["rbind"]), "mounts[0].source: a bind mount needs a source"),
        ((None, "x", []), "mounts[0].type: is required"),
        (("bind", "/x", ["rbind", "size=1m"]), 'unknown option "size=1m" for a bind mount'),
        (("bind", "/x", ["rbind", "idmap"]), 'option "idmap" is not supported yet'),
    ],
)
def test_bad_mount_options(args, message):
    fstype, source, options = args
    with pytest.raises(SpecError) as info:
        plan_mount("mounts[0]", "/x", fstype, source, options)
    assert message in str(info.value)


def test_seccomp_plan():
    plan = plan_seccomp(
        {
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}
            ],
        }
    )
    assert plan.default_errno == 1 and plan.rules[0].args[0].op == "SCMP_CMP_EQ"
    assert not plan.uses_notify()


@pytest.mark.parametrize(
    "raw,message",
    [
        ({}, "linux.seccomp.defaultAction: is required"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["NOPE"]}, 'linux.seccomp.flags[0]: unknown flag "NOPE"'),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]},
            "linux.seccomp.syscalls[0].names: must list at least one syscall",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "op": "SCMP_CMP_EQ"}]}
                ],
            },
            "at most 6 arguments",
        ),
    ],
)
def test_seccomp_errors(raw, message):
    with pytest.raises(SpecError) as info:
        plan_seccomp(raw)
    assert message in str(info.value)


def test_config_is_not_mutated():
    raw = config()
    before = copy.deepcopy(raw)
    load_config(raw, "/b")
    assert raw == before
