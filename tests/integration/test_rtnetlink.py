"""kernel/rtnetlink.py against the kernel: each request in two network namespaces made here,
checked with iproute2's own view of the result."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from stockade.kernel.rtnetlink import IFA_F_NODAD, Netlink, _attr
from stockade.network.links import in_netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def test_attributes_are_padded_to_four_bytes() -> None:
    assert _attr(3, b"eth0\0") == b"\x09\x00\x03\x00eth0\0\0\0\0"
    assert _attr(4, b"\x00\x05\x00\x00") == b"\x08\x00\x04\x00\x00\x05\x00\x00"


@pytest.fixture
def netns_pair() -> Iterator[tuple[str, str]]:
    names = [f"stk-rtnl-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield names[0], names[1]
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False)


def _ip(netns: str, *args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-j", "-n", netns, *args], check=True, capture_output=True, text=True).stdout
    return list(json.loads(out or "[]"))


def test_bridge_veth_addresses_and_routes(netns_pair: tuple[str, str]) -> None:
    host, ctr = netns_pair
    ctr_fd = os.open(f"/run/netns/{ctr}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with in_netns(f"/run/netns/{host}"), Netlink() as nl:
            nl.add_bridge("br-t", 1400)
            bridge = socket_index("br-t")
            nl.add_address(bridge, "10.77.0.1", 24)
            nl.add_address(bridge, "fd00:77::1", 64, flags=IFA_F_NODAD)
            nl.set_up(bridge)
            nl.add_veth("veth-t", 1400, bridge, "eth0", bytes.fromhex("024200000002"), ctr_fd)
            nl.set_up(socket_index("veth-t"))
            with pytest.raises(OSError) as refused:
                nl.add_bridge("br-t", 1400)
            assert refused.value.errno == errno.EEXIST and "add bridge br-t" in str(refused.value)
        with in_netns(f"/run/netns/{ctr}"), Netlink() as inside:
            eth0 = socket_index("eth0")
            inside.add_address(eth0, "10.77.0.2", 24)
            inside.set_up(eth0)
            inside.add_default_route("10.77.0.1")
    finally:
        os.close(ctr_fd)
    (br,) = _ip(host, "addr", "show", "br-t")
    assert br["mtu"] == 1400 and "UP" in br["flags"]  # type: ignore[operator]
    assert {(a["local"], a["prefixlen"]) for a in br["addr_info"]} >= {("10.77.0.1", 24), ("fd00:77::1", 64)}  # type: ignore[attr-defined]
    (veth,) = _ip(host, "link", "show", "veth-t")
    assert veth["master"] == "br-t"
    (eth0_info,) = _ip(ctr, "addr", "show", "eth0")
    assert eth0_info["address"] == "02:42:00:00:00:02" and eth0_info["mtu"] == 1400
    assert any(a["local"] == "10.77.0.2" for a in eth0_info["addr_info"])  # type: ignore[attr-defined]
    routes = _ip(ctr, "route", "show", "default")
    assert routes and routes[0]["gateway"] == "10.77.0.1"
    with in_netns(f"/run/netns/{host}"), Netlink() as nl:
        nl.delete_link(socket_index("veth-t"))  # its peer goes with it
    assert not _ip(ctr, "link", "show", "type", "veth")


def socket_index(name: str) -> int:
    import socket

    return socket.if_nametoindex(name)
