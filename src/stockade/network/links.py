"""Bridges, veth pairs, addresses and routes through rtnetlink (kernel/rtnetlink.py), in the
host's network namespace or, by setns for the calling thread, in a container's."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from stockade.kernel import namespaces as kns
from stockade.kernel.net import interface_index, write_sysctl
from stockade.kernel.rtnetlink import IFA_F_NODAD, Netlink


@contextlib.contextmanager
def _netlink(what: str) -> Iterator[None]:
    """A refused request as our one-line NetworkError, naming what was being done."""
    from stockade.network.config import NetworkError

    try:
        yield
    except OSError as exc:
        raise NetworkError(f"{what}: {exc.strerror or exc}") from None


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


def _make_bridge(name: str, gateway: str, prefixlen: int, mtu: int, v6: tuple[str, int] | None) -> None:
    with Netlink() as nl:
        nl.add_bridge(name, mtu)
        index = _address(nl, name, (gateway, prefixlen), v6)
        nl.set_up(index)


def _address(nl: Netlink, ifname: str, v4: tuple[str, int], v6: tuple[Any, ...] | None) -> int:
    """The interface's IPv4 address and, with `v6` (address, prefix length), its IPv6 one;
    returns its index (in the current network namespace). The IPv6 address skips duplicate
    address detection: the network's IPAM already made it unique, and DAD would keep it
    "tentative" (unusable) for a second or more."""
    index = interface_index(ifname)
    nl.add_address(index, v4[0], v4[1])
    if v6 is not None:
        write_sysctl(f"net.ipv6.conf.{ifname}.disable_ipv6", "0")
        nl.add_address(index, v6[0], v6[1], flags=IFA_F_NODAD)
    return index


def _index_or_none(name: str) -> int | None:
    try:
        return interface_index(name)
    except OSError:
        return None


def delete_link(name: str) -> None:
    """Remove an interface if it exists (a veth's peer goes with it)."""
    index = _index_or_none(name)
    if index is not None:
        with contextlib.suppress(OSError), Netlink() as nl:
            nl.delete_link(index)


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
    bridge_index = interface_index(bridge)
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with Netlink() as nl:
            mac = bytes.fromhex(peer["address"].replace(":", ""))
            nl.add_veth(host_if, peer["mtu"], bridge_index, peer["ifname"], mac, fd)
            nl.set_up(interface_index(host_if))
    finally:
        os.close(fd)


def _configure_inside(
    netns: str, ctr_if: str, address: str, prefixlen: int, gateway: str | None, v6: tuple[str, int, str | None] | None
) -> None:
    with in_netns(netns), Netlink() as inside:
        index = _address(inside, ctr_if, (address, prefixlen), v6[:2] if v6 is not None else None)
        inside.set_up(index)
        if gateway:
            inside.add_default_route(gateway)
        if v6 is not None and v6[2]:
            inside.add_default_route(v6[2])


def remove_veth_inside(netns: str, ctr_if: str) -> None:
    """Disconnect from a running container: deleting its end removes the pair."""
    with in_netns(netns):
        index = _index_or_none(ctr_if)
        if index is not None:
            with Netlink() as inside:
                inside.delete_link(index)
