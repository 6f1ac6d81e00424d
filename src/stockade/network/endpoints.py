"""A container's place on its networks: the sequence run between the runtime's create (the
network namespace exists, nothing runs yet) and start, and its undoing.

Per network, in order, under the networks lock:
  1. an address from the network's IPAM (`--ip` if given)      - recorded before anything is made
  2. the bridge, and the network's nft rules, made if missing  - bridges and rules do not survive
                                                                 a reboot; records do
  3. a veth pair: one end on the bridge, eth<N> made inside the container's namespace, its
     address and (first network that leads out) the default route
  4. isolated networks: the bridge port joins the nft isolation set
  5. user-defined networks: the DNS responder runs
Then the published ports' DNAT entries (to the first network's address). The result, a
`settings` document, is everything `detach` needs, even in another process after a crash.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stockade.network import firewall
from stockade.network.config import NetworkError, PortBinding, mac_for
from stockade.network.store import Network, Networks


@dataclass(slots=True)
class EndpointRequest:
    network: str
    ip: str = ""
    aliases: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Member:
    """Who joins: enough for IPAM, DNS and the veth."""

    id: str
    name: str
    netns: str


def attach(
    root: Path,
    runroot: Path,
    member: Member,
    requests: list[EndpointRequest],
    ports: list[PortBinding],
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Join `requests`' networks; with `settings` (a running container's), join more."""
    settings = settings if settings is not None else {"Networks": {}, "Ports": {}, "PortRules": []}
    added: dict[str, Any] = {"Networks": {}, "Ports": {}, "PortRules": []}
    networks = Networks(root)
    try:
        with networks.lock():
            taken = {e["Interface"] for e in settings["Networks"].values()}
            routed = any(not e.get("Internal") for e in settings["Networks"].values())
            for req in requests:
                net = networks.find(req.network)
                if net.name in settings["Networks"]:
                    raise NetworkError(f"endpoint with name {member.name} already exists in network {net.name}")
                index = next(i for i in range(len(taken) + 1) if f"eth{i}" not in taken)
                endpoint = _join(networks, runroot, net, member, req, index, default_route=not routed)
                taken.add(endpoint["Interface"])
                routed = routed or not net.internal
                added["Networks"][net.name] = endpoint
        if ports and added["Networks"]:
            first = next(iter(added["Networks"].values()))
            _publish(added, ports, first["IPAddress"])
    except BaseException:
        detach(root, runroot, member.id, added)
        raise
    settings["Networks"].update(added["Networks"])
    settings["Ports"].update(added.get("Ports") or {})
    settings["PortRules"] += added.get("PortRules") or []
    return settings


def _join(
    networks: Networks,
    runroot: Path,
    net: Network,
    member: Member,
    req: EndpointRequest,
    index: int,
    default_route: bool,
) -> dict[str, Any]:
    from stockade.kernel.net import default_route_mtu
    from stockade.network import links

    if net.driver != "bridge":
        raise NetworkError(f"network {net.name} ({net.driver}) cannot be joined with other networks")
    address = networks.allocate(net, member.id, req.ip)
    prefix = net.subnet.prefixlen
    address6 = networks.allocate6(net, member.id) if net.ipv6 else None
    prefix6 = net.subnet6.prefixlen if net.ipv6 else 0
    endpoint: dict[str, Any] = {
        "NetworkID": net.id,
        "EndpointID": os.urandom(32).hex(),  # (not secrets: see host.MONITOR_MODULES)
        "Gateway": str(net.gateway),
        "IPAddress": str(address),
        "IPPrefixLen": prefix,
        "MacAddress": mac_for(address),
        "Aliases": list(req.aliases),
        "HostInterface": "veth" + os.urandom(4).hex()[:7],
        "Interface": f"eth{index}",
        "Bridge": net.bridge,
        "Isolated": net.isolated,
        "Internal": net.internal,
        "DNS": net.dns,
        "GlobalIPv6Address": str(address6 or ""),
        "GlobalIPv6PrefixLen": prefix6,
        "IPv6Gateway": str(net.gateway6) if net.ipv6 else "",
    }
    net.doc.setdefault("Containers", {})[member.id] = {
        "Name": member.name,
        "EndpointID": endpoint["EndpointID"],
        "MacAddress": endpoint["MacAddress"],
        "IPv4Address": f"{address}/{prefix}",
        "IPv6Address": f"{address6}/{prefix6}" if address6 else "",
        "Aliases": list(req.aliases),
    }
    networks.save(net)  # step 1 is on disk before anything exists that detach would look for
    mtu = int(net.doc["Options"].get("com.docker.network.driver.mtu", 0)) or default_route_mtu()
    v6_gateway = (str(net.gateway6), prefix6) if net.ipv6 else None
    made_bridge = links.ensure_bridge(net.bridge, str(net.gateway), prefix, mtu, v6_gateway)
    # The network's rules are checked (an nft listing, ~5 ms) once per boot, then trusted: a
    # marker on the run root's tmpfs says they were there with this bridge.
    marker = rules_marker(runroot, net.id)
    if made_bridge or not marker.exists():
        if made_bridge or not firewall.has_network(net.id):
            firewall.add_network(net.id, net.bridge, str(net.subnet), net.internal, net.isolated,
                                 str(net.subnet6) if net.ipv6 else None)  # fmt: skip
            if not net.internal:
                from stockade.kernel.net import write_sysctl

                write_sysctl("net.ipv4.ip_forward", "1")  # as Docker: routed egress needs it
                if net.ipv6:
                    write_sysctl("net.ipv6.conf.all.forwarding", "1")  # (Docker does the same for IPv6)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    gateway = str(net.gateway) if default_route and not net.internal else None
    v6 = (str(address6), prefix6, str(net.gateway6) if gateway else None) if address6 else None
    links.add_veth(net.bridge, endpoint["HostInterface"], member.netns, endpoint["Interface"], str(address), prefix,
                   endpoint["MacAddress"], gateway, mtu, v6)  # fmt: skip
    if net.isolated:
        firewall.isolate_port(endpoint["HostInterface"])
    if net.dns:
        from stockade.network import dns

        dns.ensure(runroot, net.id, net.path, str(net.gateway))
    return endpoint


def rules_marker(runroot: Path, net_id: str) -> Path:
    return runroot / "firewall" / net_id[:12]


def _publish(settings: dict[str, Any], ports: list[PortBinding], address: str) -> None:
    rules = [
        {"HostIp": p.host_ip, "HostPort": p.host_port, "Proto": p.proto, "ContainerIp": address,
         "ContainerPort": p.container_port}
        for p in ports
    ]  # fmt: skip
    settings["PortRules"] = rules
    firewall.add_ports(rules)
    for p in ports:
        settings["Ports"].setdefault(p.key, []).append({"HostIp": p.host_ip or "0.0.0.0", "HostPort": str(p.host_port)})


def detach(
    root: Path,
    runroot: Path,
    member_id: str,
    settings: dict[str, Any],
    only: str | None = None,
    netns_gone: bool = False,
) -> None:
    """Undo `attach` (all networks, or `only` one): best effort, each step on its own, so that
    a half-made attach or a repeated detach (crash recovery) leaves nothing behind.

    `netns_gone`: the container's network namespace has lost its last process, so the kernel
    deletes its veths itself; deleting them here would wait ~20 ms per link for nothing."""
    from stockade.network import links

    rules = settings.get("PortRules") or []
    if only is not None:  # the ports that lead to the address on the network that goes
        gone = ((settings.get("Networks") or {}).get(only) or {}).get("IPAddress")
        rules = [r for r in rules if r["ContainerIp"] == gone]
    firewall.remove_ports(rules)
    settings["PortRules"] = [r for r in settings.get("PortRules") or [] if r not in rules]
    if not settings["PortRules"]:
        settings["Ports"] = {}
    networks = Networks(root)
    with networks.lock():
        for name, endpoint in list((settings.get("Networks") or {}).items()):
            if only is not None and name != only:
                continue
            if endpoint.get("Isolated"):
                firewall.unisolate_port(endpoint["HostInterface"])
            if not netns_gone:
                with contextlib.suppress(Exception):
                    links.delete_link(endpoint["HostInterface"])  # its peer, in the container, goes too
            with contextlib.suppress(NetworkError):
                net = networks.find(endpoint["NetworkID"])
                members = net.doc.get("Containers") or {}
                if members.pop(member_id, None) is not None:
                    networks.save(net)
                if not members and endpoint.get("DNS"):
                    from stockade.network import dns

                    dns.stop(runroot, net.id)
            del settings["Networks"][name]
