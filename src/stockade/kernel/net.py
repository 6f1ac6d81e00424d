"""Small network knobs that need no netlink: interface flags by ioctl, sysctls under /proc/sys,
the host's routes from /proc/net/route. Import-light: the runtime brings lo up with it from a
child that can no longer import anything from the host."""

from __future__ import annotations

import ctypes
import itertools
import struct

from stockade.kernel.libc import check, libc

AF_INET = 2
SOCK_DGRAM = 2
SOCK_CLOEXEC = 0o2000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = "16sH22x"  # struct ifreq: the name, then ifr_flags in the union


def interface_up(name: str) -> None:
    """Bring an interface up in the calling thread's network namespace (`ip link set NAME up`)."""
    fd = check(libc.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket")
    try:
        req = ctypes.create_string_buffer(struct.pack(_IFREQ, name.encode(), 0), struct.calcsize(_IFREQ))
        check(libc.ioctl(fd, SIOCGIFFLAGS, req), "SIOCGIFFLAGS", name)
        flags = struct.unpack(_IFREQ, req.raw)[1]
        if not flags & IFF_UP:
            req = ctypes.create_string_buffer(
                struct.pack(_IFREQ, name.encode(), flags | IFF_UP), struct.calcsize(_IFREQ)
            )
            check(libc.ioctl(fd, SIOCSIFFLAGS, req), "SIOCSIFFLAGS", name)
    finally:
        libc.close(fd)


def write_sysctl(name: str, value: str) -> None:
    """Set a sysctl in the calling thread's namespaces, skipping the write if it already holds."""
    path = "/proc/sys/" + name.replace(".", "/")
    with open(path, "r+") as f:
        if f.read().strip() != value:
            f.seek(0)
            f.write(value)


def ipv4_routes() -> list[tuple[str, str, int, int]]:
    """The host's IPv4 routes from /proc/net/route: (interface, destination, prefix length, flags)."""
    import socket as _socket

    out = []
    try:
        with open("/proc/net/route") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        dest = _socket.inet_ntoa(struct.pack("<I", int(fields[1], 16)))
        mask = bin(int(fields[7], 16)).count("1")
        out.append((fields[0], dest, mask, int(fields[3], 16)))
    return out


def default_route_mtu(fallback: int = 1500) -> int:
    """MTU of the interface holding the default route (what veths should use)."""
    for iface, dest, prefix, _flags in ipv4_routes():
        if dest == "0.0.0.0" and prefix == 0:
            try:
                with open(f"/sys/class/net/{iface}/mtu") as f:
                    return int(f.read())
            except (OSError, ValueError):
                break
    return fallback


def link_exists(name: str) -> bool:
    import os

    return os.path.exists(f"/sys/class/net/{name}")


def local_ipv4_addresses(pid: int | str = "self") -> list[str]:
    """The IPv4 addresses of PID's network namespace but loopback's (from its fib_trie)."""
    try:
        with open(f"/proc/{pid}/net/fib_trie") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found: list[str] = []
    for previous, line in itertools.pairwise(lines):
        if line.strip() == "/32 host LOCAL" and "|--" in previous:
            address = previous.split("|--", 1)[1].strip()
            if not address.startswith("127.") and address not in found:
                found.append(address)
    return found


def default_gateway(pid: int | str = "self") -> str:
    """PID's namespace's IPv4 default gateway ('' if none), from /proc/PID/net/route."""
    import socket as _socket

    try:
        with open(f"/proc/{pid}/net/route") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return ""
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and fields[1] == "00000000" and int(fields[7], 16) == 0:
            return _socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
    return ""


def ipv6_routes() -> list[tuple[str, str, int]]:
    """The host's IPv6 routes from /proc/net/ipv6_route: (interface, destination, prefix length)."""
    import ipaddress as _ipaddress

    out = []
    try:
        with open("/proc/net/ipv6_route") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) >= 10:
            dest = str(_ipaddress.IPv6Address(bytes.fromhex(fields[0])))
            out.append((fields[9], dest, int(fields[1], 16)))
    return out


def interface_index(name: str) -> int:
    """An interface's index in the current network namespace (one ioctl; a netlink dump of
    every link costs ~1 ms)."""
    import socket as _socket

    return _socket.if_nametoindex(name)
