"""Pure network planning: published-port specs, subnets, names. No I/O."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from stockade.errors import StockadeError

NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
DEFAULT_NETWORK = "bridge"
DEFAULT_BRIDGE = "stockade0"
PREDEFINED = ("bridge", "host", "none")
# Private /16s tried in order for networks created without --subnet (the first free one wins);
# away from podman's (10.88/16, 10.89.x/24) and docker's (172.17-31/16, 192.168.x/20) defaults.
CANDIDATE_SUBNETS = [f"10.{n}.0.0/16" for n in range(200, 250)]
PROTOCOLS = ("tcp", "udp", "sctp")


class NetworkError(StockadeError):
    pass


@dataclass(frozen=True, slots=True)
class PortBinding:
    """-p [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]; host_port 0 = any free port."""

    container_port: int
    proto: str = "tcp"
    host_ip: str = ""
    host_port: int = 0

    @property
    def key(self) -> str:
        return f"{self.container_port}/{self.proto}"

    def to_json(self) -> dict[str, str]:
        return {"HostIp": self.host_ip, "HostPort": str(self.host_port) if self.host_port else ""}


def check_network_name(name: str) -> str:
    if not NETWORK_NAME.match(name) or len(name) > 128:
        raise NetworkError(f'invalid network name "{name}": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed')
    return name


def _port_range(text: str, spec: str, what: str) -> list[int]:
    first, _, last = text.partition("-")
    try:
        lo, hi = int(first), int(last or first)
    except ValueError:
        raise NetworkError(f'-p {spec}: invalid {what} "{text}"') from None
    if not 0 < lo <= hi <= 65535:
        raise NetworkError(f'-p {spec}: invalid {what} "{text}" (ports are 1-65535)')
    return list(range(lo, hi + 1))


def parse_publish(spec: str) -> list[PortBinding]:
    """Docker's -p forms: 80, 8080:80, 127.0.0.1:8080:80, 127.0.0.1::80, 8000-8001:80-81/udp."""
    rest, _, proto = spec.partition("/")
    proto = proto.lower() or "tcp"
    if proto not in PROTOCOLS:
        raise NetworkError(f'-p {spec}: unknown protocol "{proto}" (want tcp, udp or sctp)')
    if rest.startswith("["):
        raise NetworkError(f"-p {spec}: IPv6 host addresses are not supported yet")
    parts = rest.split(":")
    if len(parts) > 3 or not parts[-1]:
        raise NetworkError(f"-p {spec}: invalid port specification (want [IP:][HOST_PORT:]CONTAINER_PORT[/PROTO])")
    host_ip = parts[0] if len(parts) == 3 else ""
    host_text = parts[-2] if len(parts) >= 2 else ""
    if host_ip:
        try:
            host_ip = str(ipaddress.IPv4Address(host_ip))
        except ValueError:
            raise NetworkError(f'-p {spec}: invalid host IP "{host_ip}"') from None
    container_ports = _port_range(parts[-1], spec, "container port")
    if not host_text:
        return [PortBinding(p, proto, host_ip, 0) for p in container_ports]
    host_ports = _port_range(host_text, spec, "host port")
    if len(host_ports) != len(container_ports):
        if len(container_ports) == 1 and len(host_ports) > 1:
            raise NetworkError(f"-p {spec}: a host port range needs a container port range of the same size")
        raise NetworkError(f"-p {spec}: host and container port ranges differ in size")
    return [PortBinding(c, proto, host_ip, h) for h, c in zip(host_ports, container_ports, strict=True)]


def exposed_bindings(exposed: list[str] | dict[str, object]) -> list[PortBinding]:
    """-P: every EXPOSEd port of the image on a free host port."""
    out = []
    for key in exposed:
        port, _, proto = str(key).partition("/")
        if port.isdigit():
            out.append(PortBinding(int(port), proto or "tcp"))
    return out


def port_bindings_json(bindings: list[PortBinding]) -> dict[str, list[dict[str, str]]]:
    """Docker's HostConfig.PortBindings / NetworkSettings.Ports shape."""
    out: dict[str, list[dict[str, str]]] = {}
    for b in bindings:
        out.setdefault(b.key, []).append(b.to_json())
    return out


def bindings_from_json(doc: dict[str, list[dict[str, str]]] | None) -> list[PortBinding]:
    out = []
    for key, hosts in (doc or {}).items():
        port, _, proto = key.partition("/")
        for h in hosts or [{}]:
            out.append(PortBinding(int(port), proto or "tcp", h.get("HostIp", ""), int(h.get("HostPort") or 0)))
    return out


def format_ports(ports: dict[str, list[dict[str, str]]] | None) -> str:
    """The PORTS column of `ps`: 0.0.0.0:8080->80/tcp, 53/udp (exposed, not published)."""
    shown = []
    for key, hosts in (ports or {}).items():
        if not hosts:
            shown.append(key)
        for h in hosts or []:
            shown.append(f"{h.get('HostIp') or '0.0.0.0'}:{h.get('HostPort')}->{key}")
    return ", ".join(shown)


def check_ip(text: str) -> str:
    """--ip: an IPv4 address (whether it is free and in the subnet is known at start)."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise NetworkError(f'--ip "{text}": invalid IPv4 address') from None


def check_dns(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise NetworkError(f'--dns "{text}": not an IP address') from None


def check_add_host(text: str) -> str:
    """--add-host NAME:IP (an /etc/hosts line)."""
    name, sep, ip = text.partition(":")
    if not sep or not name or not re.match(r"^[A-Za-z0-9][A-Za-z0-9.-]*$", name):
        raise NetworkError(f'--add-host "{text}": want NAME:IP')
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise NetworkError(f'--add-host "{text}": invalid IP address "{ip}"') from None
    return f"{name}:{ip}"


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    return _subnet(text, ipaddress.IPv4Network, 30, "one gateway and one container")


def parse_subnet6(text: str) -> ipaddress.IPv6Network:
    return _subnet(text, ipaddress.IPv6Network, 120, "")


def _subnet(text: str, kind: Any, longest: int, why: str) -> Any:
    family = "IPv4" if kind is ipaddress.IPv4Network else "IPv6"
    try:
        net = kind(text, strict=True)
    except ValueError as exc:
        raise NetworkError(f'--subnet "{text}": invalid {family} subnet ({exc})') from None
    if net.prefixlen > longest:
        raise NetworkError(f'--subnet "{text}": too small (at most /{longest}' + (f": {why})" if why else ")"))
    return net


def parse_gateway(text: str, subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return _gateway(text, subnet, ipaddress.IPv4Address)


def parse_gateway6(text: str, subnet: ipaddress.IPv6Network) -> ipaddress.IPv6Address:
    return _gateway(text, subnet, ipaddress.IPv6Address)


def _gateway(text: str, subnet: Any, kind: Any) -> Any:
    try:
        gateway = kind(text)
    except ValueError:
        raise NetworkError(f'--gateway "{text}": invalid {"IPv4" if subnet.version == 4 else "IPv6"} address') from None
    reserved = (subnet.network_address, subnet.broadcast_address) if subnet.version == 4 else (subnet.network_address,)
    if gateway not in subnet or gateway in reserved:
        raise NetworkError(f"--gateway {text}: not a host address of subnet {subnet}")
    return gateway


def overlapping(subnet: ipaddress.IPv4Network, taken: dict[str, ipaddress.IPv4Network]) -> str | None:
    """The name of whatever `subnet` overlaps (a network or a host route), or None."""
    for name, other in taken.items():
        if subnet.overlaps(other):
            return name
    return None


def choose_subnet(taken: dict[str, ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    for text in CANDIDATE_SUBNETS:
        candidate = ipaddress.IPv4Network(text)
        if overlapping(candidate, taken) is None:
            return candidate
    raise NetworkError("no free private subnet left for a new network: give one with --subnet")


def choose_subnet6(seed: str, taken: dict[str, Any]) -> ipaddress.IPv6Network:
    """A unique local /64 (RFC 4193: fd + a 40-bit global ID, here from `seed`, the network's
    ID, as random as the ID) that overlaps nothing in `taken`."""
    for attempt in range(16):
        global_id = int(seed[attempt : attempt + 10] or "0", 16) & (2**40 - 1)
        candidate = ipaddress.IPv6Network(((0xFD << 120) | (global_id << 80), 64))
        if not any(isinstance(o, ipaddress.IPv6Network) and candidate.overlaps(o) for o in taken.values()):
            return candidate
    raise NetworkError("no free IPv6 subnet found for a new network: give one with --subnet")


def mac_for(address: ipaddress.IPv4Address) -> str:
    """A locally administered MAC derived from the address, as Docker does (02:42:0a:58:00:02)."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)
