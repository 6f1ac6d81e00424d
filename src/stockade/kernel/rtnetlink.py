"""Links, addresses and routes through rtnetlink (NETLINK_ROUTE): the few requests stockade
makes, as `ip link/addr/route` would send them, each acknowledged.

A socket belongs to the network namespace it was opened in, for its whole life: open one while
the calling thread is inside a container's namespace (setns) to configure that namespace.
Errors are OSError with the kernel's errno and the request that failed.
"""

from __future__ import annotations

import os
import socket
import struct

NETLINK_ROUTE = 0

RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
NLMSG_ERROR = 2

NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
CREATE = NLM_F_CREATE | NLM_F_EXCL

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02  # no duplicate address detection: an IPv6 address usable at once
RTA_GATEWAY = 5
IFF_UP = 0x1

RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefix length, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst/src len, tos, table, proto, scope, type, flags


def _attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute (type, length, payload), padded to 4 bytes."""
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _name(text: str) -> bytes:
    return os.fsencode(text) + b"\0"


def _ip(address: str) -> tuple[int, bytes]:
    """(family, packed address) of an IPv4 or IPv6 address in text form."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return family, socket.inet_pton(family, address)


class Netlink:
    """A NETLINK_ROUTE socket in the current network namespace; use as a context manager."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sequence = 0

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def request(self, kind: int, flags: int, body: bytes, what: str) -> None:
        """Send one request and wait for its acknowledgement; OSError(errno, ..., what) if refused."""
        self.sequence += 1
        header = _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, self.sequence, 0)
        self.sock.send(header + body)
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, msg_type, _flags, sequence, _port = _HEADER.unpack_from(data, offset)
                if msg_type == NLMSG_ERROR and sequence == self.sequence:
                    (error,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                    if error:
                        raise OSError(-error, os.strerror(-error), what)
                    return
                offset += max((length + 3) & ~3, _HEADER.size)

    # -- links ----------------------------------------------------------------------------------
    def add_bridge(self, name: str, mtu: int) -> None:
        attrs = _attr(IFLA_IFNAME, _name(name)) + _attr(IFLA_MTU, struct.pack("=I", mtu))
        attrs += _attr(IFLA_LINKINFO, _attr(IFLA_INFO_KIND, b"bridge"))
        self.request(RTM_NEWLINK, CREATE, _IFINFO.pack(0, 0, 0, 0, 0) + attrs, f"add bridge {name}")

    def add_veth(self, name: str, mtu: int, master: int, peer: str, peer_mac: bytes, peer_netns_fd: int) -> None:
        """A veth pair: `name` here, enslaved to the bridge with index `master`; `peer` made
        directly in the network namespace open at `peer_netns_fd`, with MAC `peer_mac`."""
        peer_attrs = _attr(IFLA_IFNAME, _name(peer)) + _attr(IFLA_MTU, struct.pack("=I", mtu))
        peer_attrs += _attr(IFLA_ADDRESS, peer_mac) + _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
        info = _attr(IFLA_INFO_KIND, b"veth")
        info += _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, _IFINFO.pack(0, 0, 0, 0, 0) + peer_attrs))
        attrs = _attr(IFLA_IFNAME, _name(name)) + _attr(IFLA_MTU, struct.pack("=I", mtu))
        attrs += _attr(IFLA_MASTER, struct.pack("=I", master)) + _attr(IFLA_LINKINFO, info)
        self.request(RTM_NEWLINK, CREATE, _IFINFO.pack(0, 0, 0, 0, 0) + attrs, f"add veth {name}")

    def set_up(self, index: int) -> None:
        self.request(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, IFF_UP, IFF_UP), f"set link {index} up")

    def delete_link(self, index: int) -> None:
        self.request(RTM_DELLINK, 0, _IFINFO.pack(0, 0, index, 0, 0), f"delete link {index}")

    # -- addresses and routes -------------------------------------------------------------------
    def add_address(self, index: int, address: str, prefixlen: int, flags: int = 0) -> None:
        family, packed = _ip(address)
        body = _IFADDR.pack(family, prefixlen, flags, RT_SCOPE_UNIVERSE, index)
        body += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        self.request(RTM_NEWADDR, CREATE, body, f"add address {address}/{prefixlen}")

    def add_default_route(self, gateway: str) -> None:
        family, packed = _ip(gateway)
        body = _RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        self.request(RTM_NEWROUTE, CREATE, body + _attr(RTA_GATEWAY, packed), f"add default route via {gateway}")
