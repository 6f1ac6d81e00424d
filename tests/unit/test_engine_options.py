"""Docker's run flag values, parsed (pure)."""

from __future__ import annotations

import pytest

from stockade.cli.attach import Session, parse_detach_keys
from stockade.engine.names import InvalidName, check_name, generate
from stockade.engine.options import (
    capabilities,
    parse_mount,
    parse_restart,
    parse_size,
    parse_ulimit,
    parse_volume,
)
from stockade.engine.plan import PlanError


def test_volume_forms() -> None:
    assert parse_volume("/data").type == "volume" and parse_volume("/data").source == ""
    v = parse_volume("cache:/var/cache:ro")
    assert (v.type, v.source, v.target, v.read_only) == ("volume", "cache", "/var/cache", True)
    b = parse_volume("/srv:/mnt")
    assert (b.type, b.source, b.target, b.read_only) == ("bind", "/srv", "/mnt", False)
    for bad in ("rel:dir", "a:/b:bogus", "a:b:c:d", "bad name:/x"):
        with pytest.raises(PlanError):
            parse_volume(bad)


def test_mount_and_sizes() -> None:
    m = parse_mount("type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1777")
    assert m.type == "tmpfs" and m.options == ["size=1048576", "mode=1777"]
    assert parse_mount("type=bind,src=/a,dst=/b,readonly").read_only
    with pytest.raises(PlanError, match="unknown field"):
        parse_mount("type=bind,src=/a,dst=/b,colour=red")
    assert parse_size("512m", "--memory") == 512 << 20
    with pytest.raises(PlanError, match="--memory"):
        parse_size("lots", "--memory")


def test_ulimit_restart_caps() -> None:
    assert parse_ulimit("nofile=100:200") == {"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}
    with pytest.raises(PlanError, match="above the hard limit"):
        parse_ulimit("nofile=300:200")
    assert parse_restart("on-failure:3") == ("on-failure", 3)
    with pytest.raises(PlanError):
        parse_restart("always:3")
    assert capabilities(["CAP_CHOWN", "CAP_KILL"], ["net_admin"], ["kill"]) == ["CAP_CHOWN", "CAP_NET_ADMIN"]
    assert capabilities(["CAP_CHOWN"], ["CAP_KILL"], ["ALL"]) == ["CAP_KILL"]


def test_names_and_detach_keys() -> None:
    assert check_name("/web-1") == "web-1"
    with pytest.raises(InvalidName):
        check_name("-bad")
    name = generate(set())
    assert "_" in name
    assert parse_detach_keys("ctrl-p,ctrl-q") == b"\x10\x11"
    s = Session.__new__(Session)
    s.keys, s.matched = b"\x10\x11", b""
    assert s._scan(b"ab\x10c") == (b"ab\x10c", False)  # a lone ^P passes through
    assert s._scan(b"x\x10") == (b"x", False) and s._scan(b"\x11") == (b"", True)
