"""Pure runtime logic: cgroup layout and paths, device rules, signals, the CLI's flag parser."""

from __future__ import annotations

import signal

import pytest

from stockade.cli.runtime import COMMAND_FLAGS, GLOBAL_FLAGS, UsageError, parse_flags
from stockade.errors import ContainerError
from stockade.runtime.cgroups import detect_layout, resolve_path
from stockade.runtime.cgroups.devices import device_rules
from stockade.runtime.cgroups.v1 import device_rule
from stockade.runtime.cgroups.v2 import shares_to_weight
from stockade.runtime.container import ALLOWED, parse_signal
from stockade.runtime.state import check_id
from stockade.spec.runtime import Device

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
"""
UNIFIED = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"


def test_detect_hybrid_layout(tmp_path):
    (tmp_path / "mountinfo").write_text(HYBRID)
    layout = detect_layout(str(tmp_path / "mountinfo"))
    assert layout.kind == "hybrid"
    assert layout.v1["cpu"] == layout.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert layout.v1["name=systemd"] == "/sys/fs/cgroup/systemd"
    assert "xattr" not in layout.v1
    assert layout.unified == "/sys/fs/cgroup/unified"


def test_detect_unified_layout(tmp_path):
    (tmp_path / "mountinfo").write_text(UNIFIED)
    layout = detect_layout(str(tmp_path / "mountinfo"))
    assert layout.kind == "unified" and layout.unified == "/sys/fs/cgroup"


def test_cgroups_path_resolution():
    assert resolve_path(None, "c1", "/user.slice") == "/stockade/c1"
    assert resolve_path("/a/b", "c1", "/x") == "/a/b"
    assert resolve_path("a/b", "c1", "/runtime") == "/runtime/a/b"
    with pytest.raises(ContainerError, match="systemd"):
        resolve_path("machine.slice:libpod:abc", "c1", "/")


def test_device_rules_append_defaults_only_with_rules():
    assert device_rules(None, []) == []
    rules = device_rules(
        {"devices": [{"allow": False, "access": "rwm"}]}, [Device(type="b", path="/dev/sdz", major=8, minor=0)]
    )
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in rules
    assert rules[-1]["major"] == 8 and rules[-1]["type"] == "b"
    assert device_rule(rules[0]) == "a *:* rwm"
    assert device_rule({"type": "c", "major": 136, "minor": None, "access": "rw"}) == "c 136:* rw"


def test_shares_to_weight_matches_runc():
    assert shares_to_weight(2) == 1
    assert shares_to_weight(1024) == 39
    assert shares_to_weight(262144) == 10000


@pytest.mark.parametrize(
    "value,expected", [("KILL", 9), ("SIGKILL", 9), ("9", 9), ("term", 15), ("SIGRTMIN", int(signal.SIGRTMIN))]
)
def test_parse_signal(value, expected):
    assert parse_signal(value) == expected


@pytest.mark.parametrize("value", ["SIGFOO", "0", "999"])
def test_parse_bad_signal(value):
    with pytest.raises(ContainerError):
        parse_signal(value)


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "x" * 129])
def test_bad_container_ids(bad):
    with pytest.raises(ContainerError):
        check_id(bad)


def test_status_table():
    assert "start" in ALLOWED["created"] and "start" not in ALLOWED["running"]
    assert "delete" in ALLOWED["stopped"] and "delete" not in ALLOWED["running"]
    assert "delete-force" in ALLOWED["running"]


def test_flag_parser_runc_style():
    flags, rest = parse_flags(["--root", "/r", "-log=/l", "--debug", "create", "--bundle", "b"], GLOBAL_FLAGS)
    assert flags == {"root": "/r", "log": "/l", "debug": True}
    assert rest == ["create", "--bundle", "b"]
    flags, rest = parse_flags(["-e", "A=1", "--env=B=2", "-t", "c1", "sh", "-c", "x"], COMMAND_FLAGS["exec"])
    assert flags == {"env": ["A=1", "B=2"], "tty": True}
    assert rest == ["c1", "sh", "-c", "x"]
    flags, _ = parse_flags(["--preserve-fds", "2"], COMMAND_FLAGS["create"])
    assert flags == {"preserve_fds": 2}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--nope"], "flag provided but not defined: -nope"),
        (["--bundle"], "flag needs an argument: -bundle"),
        (["--preserve-fds", "x"], "must be a number"),
    ],
)
def test_flag_parser_errors(args, message):
    with pytest.raises(UsageError, match=message):
        parse_flags(args, COMMAND_FLAGS["create"])
