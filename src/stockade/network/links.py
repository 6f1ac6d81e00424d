"""Bridges, veth pairs, addresses and routes through netlink (pyroute2), in the host's network
namespace or, by setns for the calling thread, in a container's."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from stockade.kernel import namespaces as kns
from stockade.kernel.net import interface_index, write_sysctl


def _iproute() -> Any:
    from pyroute2 import IPRoute

    return IPRoute()


@contextlib.contextmanager
def _netlink(what: str) -> Iterator[None]:
    """pyroute2's errors (NetlinkError is not an OSError) as our one-line NetworkError."""
    from stockade.network.config import NetworkError

    try:
        yield
    except NetworkError:
        raise
    except Exception as exc:
        code = getattr(exc, "code", None)
        reason = os.strerror(code) if isinstance(code, int) and code > 0 else str(exc)
        raise NetworkError(f"{what}: {reason}") from None


@contextlib.contextmanager
def in_netns(path: str) -> Iterator[None]:
    """The calling thread in the network namespace at `path`: netlink sockets opened inside
    belong to it for their whole life, so set-up done with them needs no further setns."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            kns.setns(target, kns.CLONE_NEWNET, path)
        finally:
            os.close(target)
        try:
            yield
        finally:
            kns.setns(home, kns.CLONE_NEWNET, "the host's network namespace")
    finally:
        os.close(home)


def ensure_bridge(name: str, gateway: str, prefixlen: int, mtu: int, v6: tuple[str, int] | None = None) -> bool:
    """The network's bridge with its gateway address (and IPv6 gateway `v6`), up; made if
    missing (bridges do not survive a reboot, the network's record does). True if made now."""
    from stockade.kernel.net import link_exists

    if link_exists(name):
        return False
    with _netlink(f"create bridge {name}"):
        _make_bridge(name, gateway, prefixlen, mtu, v6)
    # Traffic the host sends to a published port on 127.0.0.1 is DNATed out of this bridge:
    # the kernel drops such packets as martians unless the bridge allows loopback sources.
    write_sysctl(f"net.ipv4.conf.{name}.route_localnet", "1")
    return True


# An address without duplicate address detection: usable at once (the network's IPAM already
# guarantees it is unique), where DAD would keep it "tentative" for a second or more.
IFA_F_NODAD = 0x02


def _make_bridge(name: str, gateway: str, prefixlen: int, mtu: int, v6: tuple[str, int] | None) -> None:
    ipr = _iproute()
    try:
        ipr.link("add", ifname=name, kind="bridge", mtu=mtu)
        index = _address(ipr, name, (gateway, prefixlen), v6)
        ipr.link("set", index=index, state="up")
    finally:
        ipr.close()


def _address(ipr: Any, ifname: str, v4: tuple[str, int], v6: tuple[Any, ...] | None) -> int:
    """The interface's IPv4 address and, with `v6` (address, prefix length), its IPv6 one;
    returns its index (in the current network namespace)."""
    index = interface_index(ifname)
    ipr.addr("add", index=index, address=v4[0], prefixlen=v4[1])
    if v6 is not None:
        write_sysctl(f"net.ipv6.conf.{ifname}.disable_ipv6", "0")
        ipr.addr("add", index=index, address=v6[0], prefixlen=v6[1], flags=IFA_F_NODAD)
    return index


def delete_link(name: str) -> None:
    """Remove an interface if it exists (a veth's peer goes with it)."""
    ipr = _iproute()
    try:
        found = ipr.link_lookup(ifname=name)
        if found:
            with contextlib.suppress(Exception):
                ipr.link("del", index=found[0])
    finally:
        ipr.close()


def add_veth(
    bridge: str,
    host_if: str,
    netns: str,
    ctr_if: str,
    address: str,
    prefixlen: int,
    mac: str,
    gateway: str | None,
    mtu: int,
    v6: tuple[str, int, str | None] | None = None,
) -> None:
    """A veth pair: `host_if` on the bridge, `ctr_if` made directly inside the container's
    namespace (one netlink message), then addressed and routed from inside it. `v6`: an IPv6
    address, its prefix length and the IPv6 default gateway (None: no default route)."""
    with _netlink(f"connect {ctr_if} to {bridge}"):
        _pair(bridge, host_if, netns, {"ifname": ctr_if, "mtu": mtu, "address": mac})
        _configure_inside(netns, ctr_if, address, prefixlen, gateway, v6)


def _pair(bridge: str, host_if: str, netns: str, peer: dict[str, Any]) -> None:
    ipr = _iproute()
    try:
        bridge_index = interface_index(bridge)
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link("add", ifname=host_if, kind="veth", mtu=peer["mtu"], master=bridge_index,
                     peer={**peer, "net_ns_fd": fd})  # fmt: skip
        finally:
            os.close(fd)
        ipr.link("set", index=interface_index(host_if), state="up")
    finally:
        ipr.close()


def _configure_inside(
    netns: str, ctr_if: str, address: str, prefixlen: int, gateway: str | None, v6: tuple[str, int, str | None] | None
) -> None:
    with in_netns(netns):
        inside = _iproute()
        try:
            index = _address(inside, ctr_if, (address, prefixlen), v6[:2] if v6 is not None else None)
            inside.link("set", index=index, state="up")
            if gateway:
                inside.route("add", dst="0.0.0.0/0", gateway=gateway)
            if v6 is not None and v6[2]:
                inside.route("add", dst="::/0", gateway=v6[2], family=10)  # AF_INET6
        finally:
            inside.close()


def remove_veth_inside(netns: str, ctr_if: str) -> None:
    """Disconnect from a running container: deleting its end removes the pair."""
    with in_netns(netns):
        inside = _iproute()
        try:
            found = inside.link_lookup(ifname=ctr_if)
            if found:
                inside.link("del", index=found[0])
        finally:
            inside.close()
