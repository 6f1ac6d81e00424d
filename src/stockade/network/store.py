"""Networks on disk and their address management (IPAM).

    <root>/networks/<64-hex id>.json   one network, in Docker's `network inspect` shape; its
                                       "Containers" map is the IPAM state: the addresses in
                                       use, with each holder's name and aliases (read by the
                                       network's DNS responder)
    <root>/networks/.lock              every change to any network takes it

The predefined networks (bridge, host, none) are made on first use, as Docker has them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.fsutil import atomic_write, file_lock
from stockade.network.config import (
    DEFAULT_BRIDGE,
    DEFAULT_NETWORK,
    NetworkError,
    check_network_name,
    choose_subnet,
    choose_subnet6,
    overlapping,
)


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


@dataclass(slots=True)
class Network:
    path: Path
    doc: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.doc["Id"])

    @property
    def name(self) -> str:
        return str(self.doc["Name"])

    @property
    def driver(self) -> str:
        return str(self.doc["Driver"])

    @property
    def bridge(self) -> str:
        return str(self.doc["Options"].get("com.docker.network.bridge.name", ""))

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.doc["IPAM"]["Config"][0]["Subnet"])

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.doc["IPAM"]["Config"][0]["Gateway"])

    @property
    def ipv6(self) -> bool:
        return bool(self.doc.get("EnableIPv6")) and self._v6_config() is not None

    @property
    def subnet6(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network((self._v6_config() or {})["Subnet"])

    @property
    def gateway6(self) -> ipaddress.IPv6Address:
        return ipaddress.IPv6Address((self._v6_config() or {})["Gateway"])

    def _v6_config(self) -> dict[str, str] | None:
        return next((c for c in self.doc["IPAM"]["Config"] if ":" in c.get("Subnet", "")), None)

    @property
    def internal(self) -> bool:
        return bool(self.doc.get("Internal"))

    @property
    def isolated(self) -> bool:
        return self.doc["Options"].get("isolate", "") in ("true", "1") or (
            self.doc["Options"].get("com.docker.network.bridge.enable_icc", "true") == "false"
        )

    @property
    def dns(self) -> bool:
        """Name resolution between containers: user-defined networks, as in Docker."""
        return self.name != DEFAULT_NETWORK

    @property
    def members(self) -> dict[str, dict[str, Any]]:
        return dict(self.doc.get("Containers") or {})


def default_bridge_name(root: Path) -> str:
    """stockade0 for the default store; a name of its own for any other root (tests, a second
    store), so that two stores never fight over one bridge."""
    if root == Path("/var/lib/stockade"):
        return DEFAULT_BRIDGE

    from stockade.spec.image import sha256_digest

    return "stkb-" + sha256_digest(str(root).encode())[7:17]


class Networks:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "networks"

    # -- locking and lookup -----------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.dir / ".lock"):
            yield

    def all(self) -> list[Network]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.dir):
                if entry.name.endswith(".json") and not entry.name.startswith("."):
                    with contextlib.suppress(OSError, ValueError):
                        out.append(self._load(Path(entry.path)))
        return out

    def _load(self, path: Path) -> Network:
        with open(path, "rb") as f:
            return Network(path, json.loads(f.read()))

    def find(self, text: str) -> Network:
        """By name, full ID or unique ID prefix; the predefined networks exist from first use."""
        nets = self.all()
        if text in ("bridge", "host", "none") and not any(n.name == text for n in nets):
            with self.lock():
                self._predefined()
            nets = self.all()
        for n in nets:
            if n.name == text or n.id == text:
                return n
        matches = [n for n in nets if len(text) >= 1 and n.id.startswith(text)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise NetworkError(f'network "{text}" is ambiguous: it matches {len(matches)} networks')
        raise NetworkError(f"network {text} not found")

    def save(self, net: Network) -> None:
        atomic_write(net.path, json.dumps(net.doc, indent=1).encode(), 0o600)

    # -- create and remove --------------------------------------------------------------------
    def _predefined(self) -> None:
        names = {n.name for n in self.all()}
        if "host" not in names:
            self._write(self._doc("host", "host", None, None, False, {}, {}))
        if "none" not in names:
            self._write(self._doc("none", "null", None, None, False, {}, {}))
        if DEFAULT_NETWORK not in names:
            subnet = choose_subnet(self._taken())
            options = {"com.docker.network.bridge.name": default_bridge_name(self.root),
                       "com.docker.network.bridge.default_bridge": "true"}  # fmt: skip
            self._write(self._doc(DEFAULT_NETWORK, "bridge", subnet, subnet.network_address + 1, False, options, {}))

    def _taken(self) -> dict[str, Any]:
        """Subnets a new network must not overlap: every network's, and the host's routes'
        (IPv4 and IPv6 networks, the overlap checks compare like with like)."""
        from stockade.kernel.net import ipv4_routes, ipv6_routes

        taken: dict[str, Any] = {}
        networks = self.all()
        for n in networks:
            if n.driver == "bridge":
                taken[f'network "{n.name}"'] = n.subnet
                if n.ipv6:
                    taken[f'network "{n.name}" (IPv6)'] = n.subnet6
        ours = {n.bridge for n in networks}
        for iface, dest, prefix, _flags in ipv4_routes():
            if prefix and iface not in ours:
                taken[f"the host's route {dest}/{prefix} on {iface}"] = ipaddress.IPv4Network(f"{dest}/{prefix}")
        for iface, dest6, prefix in ipv6_routes():
            if 0 < prefix < 128 and iface not in ours and not dest6.startswith(("fe80:", "ff00:")):
                taken[f"the host's route {dest6}/{prefix} on {iface}"] = ipaddress.IPv6Network(f"{dest6}/{prefix}")
        return taken

    def create(
        self,
        name: str,
        subnet: ipaddress.IPv4Network | None = None,
        gateway: ipaddress.IPv4Address | None = None,
        internal: bool = False,
        options: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        ipv6: bool = False,
        subnet6: ipaddress.IPv6Network | None = None,
        gateway6: ipaddress.IPv6Address | None = None,
    ) -> Network:
        check_network_name(name)
        with self.lock():
            self._predefined()
            existing = {n.name: n for n in self.all()}
            if name in existing:
                raise NetworkError(f"network with name {name} already exists")
            taken = self._taken()
            v4_taken = {k: v for k, v in taken.items() if isinstance(v, ipaddress.IPv4Network)}
            if subnet is None:
                subnet = choose_subnet(v4_taken)
            else:
                clash = overlapping(subnet, v4_taken)
                if clash is not None:
                    raise NetworkError(f"--subnet {subnet}: overlaps {clash}")
            if gateway is None:
                gateway = subnet.network_address + 1
            opts = dict(options or {})
            net_id = os.urandom(32).hex()  # (not secrets: see host.MONITOR_MODULES)
            v6: list[dict[str, str]] = []
            if ipv6:
                subnet6 = subnet6 or choose_subnet6(net_id, taken)
                for what, other in taken.items():
                    if isinstance(other, ipaddress.IPv6Network) and subnet6.overlaps(other):
                        raise NetworkError(f"--subnet {subnet6}: overlaps {what}")
                v6 = [{"Subnet": str(subnet6), "Gateway": str(gateway6 or subnet6.network_address + 1)}]
            opts.setdefault("com.docker.network.bridge.name", "stk-" + net_id[:11])
            bridge = opts["com.docker.network.bridge.name"]
            if len(bridge) > 15 or any(n.bridge == bridge for n in existing.values()):
                raise NetworkError(f'bridge name "{bridge}" is too long or already used by another network')
            doc = self._doc(name, "bridge", subnet, gateway, internal, opts, labels or {}, net_id)
            if v6:
                doc["EnableIPv6"] = True
                doc["IPAM"]["Config"] += v6
            return self._write(doc)

    def _doc(
        self,
        name: str,
        driver: str,
        subnet: ipaddress.IPv4Network | None,
        gateway: ipaddress.IPv4Address | None,
        internal: bool,
        options: dict[str, str],
        labels: dict[str, str],
        net_id: str = "",
    ) -> dict[str, Any]:
        config = [{"Subnet": str(subnet), "Gateway": str(gateway)}] if subnet is not None else []
        return {
            "Name": name,
            "Id": net_id or os.urandom(32).hex(),
            "Created": _now(),
            "Scope": "local",
            "Driver": driver,
            "EnableIPv6": False,
            "IPAM": {"Driver": "default", "Options": {}, "Config": config},
            "Internal": internal,
            "Attachable": False,
            "Ingress": False,
            "ConfigOnly": False,
            "Containers": {},
            "Options": options,
            "Labels": labels,
        }

    def _write(self, doc: dict[str, Any]) -> Network:
        net = Network(self.dir / f"{doc['Id']}.json", doc)
        self.save(net)
        return net

    def remove(self, net: Network) -> None:
        """Under the lock: the caller has checked that nobody uses it and took down its bridge."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(net.path)

    # -- addresses ------------------------------------------------------------------------------
    def allocate6(self, net: Network, holder: str) -> ipaddress.IPv6Address:
        """Under the lock: the lowest free IPv6 address of the network after its gateway."""
        used = {m["IPv6Address"].split("/")[0] for k, m in net.members.items() if k != holder and m.get("IPv6Address")}
        subnet, gateway = net.subnet6, net.gateway6
        candidate = subnet.network_address + 1
        while candidate in subnet:
            if candidate != gateway and str(candidate) not in used:
                return candidate
            candidate += 1
        raise NetworkError(f"network {net.name}: no free IPv6 address left in {subnet}")

    def allocate(self, net: Network, holder: str, wanted: str = "") -> ipaddress.IPv4Address:
        """Under the lock: the lowest free host address of the subnet (or `wanted`, if free)."""
        used = {ipaddress.IPv4Address(m["IPv4Address"].split("/")[0]) for k, m in net.members.items() if k != holder}
        subnet, gateway = net.subnet, net.gateway
        if wanted:
            try:
                address = ipaddress.IPv4Address(wanted)
            except ValueError:
                raise NetworkError(f'--ip "{wanted}": invalid IPv4 address') from None
            if address not in subnet or address in (subnet.network_address, subnet.broadcast_address, gateway):
                raise NetworkError(f"--ip {wanted}: not a free host address of network {net.name} ({subnet})")
            if address in used:
                raise NetworkError(f"--ip {wanted}: address already in use on network {net.name}")
            return address
        for address in subnet.hosts():
            if address != gateway and address not in used:
                return address
        raise NetworkError(f"network {net.name}: no free address left in {subnet}")
