"""The engine's side of networking: which networks a container asked for (its record), what it
got (network.json in its directory, written under the networks lock by the monitor or by
`network connect`), and the /etc/hosts it sees.

    network.json   {"Networks": {name: endpoint}, "Ports": {...}, "PortRules": [...]}
                   present while the container runs; what `detach` needs after any crash
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from stockade.engine.containers import Container, Containers, EngineError, NoSuchContainer, read_json, write_json

SETTINGS = "network.json"


def mode(record: dict[str, Any]) -> str:
    """none | host | container:<id> | pasta | slirp4netns (rootless) | bridge (the default
    bridge or user-defined networks)."""
    first = str(record["HostConfig"].get("NetworkMode") or "none")
    if first in ("none", "host") or first.startswith("container:"):
        return first
    if record.get("NetworkSettings", {}).get("RootlessNetwork"):
        return first.split(":", 1)[0]
    return "bridge"


def publishes(record: dict[str, Any]) -> bool:
    """Whether the container's own network stack gets published ports (bridge, pasta, slirp)."""
    return mode(record) in ("bridge", "pasta", "slirp4netns")


def attach_usermode(ctr: Container, pid: int, ports: list[Any]) -> None:
    """Rootless: start the container's pasta or slirp4netns (the ports were checked free)."""
    from stockade.network.usermode import split_mode, start

    driver, options = split_mode(str(ctr.record["HostConfig"]["NetworkMode"]))
    doc = start(driver, options, pid, ports)
    save_settings(ctr, doc)
    host = doc.get("HostAddress") or ""
    write_hosts(
        ctr,
        {"Networks": {driver: {"IPAddress": doc["IPAddress"]}}},
        [f"host.containers.internal:{host}"] if host else [],
    )


def requests(record: dict[str, Any]) -> list[Any]:
    from stockade.network.endpoints import EndpointRequest

    out = []
    for name, cfg in (record.get("NetworkSettings", {}).get("Networks") or {}).items():
        ip = ((cfg or {}).get("IPAMConfig") or {}).get("IPv4Address", "")
        out.append(EndpointRequest(name, ip, list((cfg or {}).get("Aliases") or [])))
    return out


def settings(ctr: Container) -> dict[str, Any]:
    with contextlib.suppress(FileNotFoundError, ValueError):
        return dict(read_json(ctr.dir / SETTINGS))
    return {}


def save_settings(ctr: Container, doc: dict[str, Any]) -> None:
    if doc.get("Networks") or doc.get("PortRules") or doc.get("UserNet"):
        write_json(ctr.dir / SETTINGS, doc)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ctr.dir / SETTINGS)


def attach(root: Path, runroot: Path, ctr: Container, pid: int, ports: list[Any]) -> dict[str, Any]:
    from stockade.network.endpoints import Member
    from stockade.network.endpoints import attach as attach_endpoints

    member = Member(ctr.id, ctr.name, f"/proc/{pid}/ns/net")
    doc = attach_endpoints(root, runroot, member, requests(ctr.record), ports)
    save_settings(ctr, doc)
    write_hosts(ctr, doc)
    return doc


def detach(root: Path, runroot: Path, ctr: Container, exited: bool = False) -> None:
    """Everything the container added to its networks goes (also after a monitor crash).
    `exited`: its init is gone, so its network namespace dies with it unless another
    container joined it (--network container:) and still runs."""
    from stockade.network.endpoints import detach as detach_endpoints

    doc = settings(ctr)
    if doc.get("UserNet"):
        from stockade.network.usermode import stop

        stop(doc)
        save_settings(ctr, {})
    elif doc:
        netns_gone = exited and not _joiners_running(ctr)
        detach_endpoints(root, runroot, ctr.id, doc, netns_gone=netns_gone)
        save_settings(ctr, {})


def _joiners_running(ctr: Container) -> bool:
    containers = Containers(ctr.dir.parent.parent)
    with contextlib.suppress(FileNotFoundError):
        for joiner in os.listdir(ctr.dir / "joiners"):
            with contextlib.suppress(NoSuchContainer):
                if containers.load(joiner).running():
                    return True
    return False


def hosts_text(hostname: str, address: str, extra: list[str], address6: str = "") -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             "fe00::0\tip6-localnet", "ff00::0\tip6-mcastprefix", "ff02::1\tip6-allnodes", "ff02::2\tip6-allrouters"]  # fmt: skip
    for entry in extra:
        name, _, ip = entry.partition(":")
        lines.append(f"{ip}\t{name}")
    lines.append(f"{address or '127.0.1.1'}\t{hostname}")
    if address6:
        lines.append(f"{address6}\t{hostname}")
    return "\n".join(lines) + "\n"


def write_hosts(ctr: Container, doc: dict[str, Any], more: list[str] | None = None) -> None:
    """Rewritten in place: the container has the file bind-mounted, a rename would not reach it."""
    first: dict[str, Any] = next(iter((doc.get("Networks") or {}).values()), {})
    extra = list(ctr.record["HostConfig"].get("ExtraHosts") or []) + (more or [])
    text = hosts_text(
        ctr.record["Config"]["Hostname"], first.get("IPAddress", ""), extra, first.get("GlobalIPv6Address", "")
    )
    with contextlib.suppress(OSError), open(ctr.dir / "hosts", "r+") as f:
        f.write(text)
        f.truncate()


def join_container_netns(ctr: Container, config_path: Path) -> None:
    """--network container:ID: the bundle names the other container's network namespace, which
    is only known while it runs, so it is written at each start."""
    target_id = mode(ctr.record).split(":", 1)[1]
    target = Containers(ctr.dir.parent.parent).load(target_id)
    if not target.running():
        raise EngineError(f"cannot join network of a non running container: {target.name}")
    (target.dir / "joiners").mkdir(exist_ok=True)
    (target.dir / "joiners" / ctr.id).touch()  # so its end does not assume its namespace died
    config = read_json(config_path)
    for ns in config["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = f"/proc/{target.state['Pid']}/ns/net"
    with open(config_path, "w") as f:
        json.dump(config, f)


def ports_column(ctr: Container) -> dict[str, Any]:
    return dict(settings(ctr).get("Ports") or {})


def users(root: Path, net_id: str) -> list[Container]:
    """Containers whose record names the network (running or not)."""

    out = []
    for c in Containers(root).all():
        asked = c.record.get("NetworkSettings", {}).get("Networks") or {}
        if any((cfg or {}).get("NetworkID") == net_id for cfg in asked.values()):
            out.append(c)
    return out


def remove_network(root: Path, runroot: Path, name: str) -> str:
    """`network rm`: refused while any container refers to it; its bridge, rules and DNS
    responder go with it."""
    from stockade.network import dns, firewall, links
    from stockade.network.config import PREDEFINED, NetworkError
    from stockade.network.endpoints import rules_marker
    from stockade.network.store import Networks

    networks = Networks(root)
    net = networks.find(name)
    if net.name in PREDEFINED:
        raise NetworkError(f"{net.name} is a pre-defined network and cannot be removed")
    with networks.lock():
        net = networks.find(net.id)
        held = users(root, net.id)
        if held or net.members:
            who = held[0].name if held else next(iter(net.members.values())).get("Name", "?")
            raise NetworkError(f"error while removing network: network {net.name} id {net.id} has active endpoints "
                               f"(container {who})")  # fmt: skip
        dns.stop(runroot, net.id)
        firewall.remove_network(net.id, net.bridge)
        links.delete_link(net.bridge)
        rules_marker(runroot, net.id).unlink(missing_ok=True)
        networks.remove(net)
    return net.name


def connect(root: Path, runroot: Path, ctr: Container, name: str, ip: str, aliases: list[str]) -> None:
    """`network connect`: recorded, and joined at once if the container runs."""
    from stockade.network.config import NetworkError
    from stockade.network.endpoints import EndpointRequest, Member
    from stockade.network.endpoints import attach as attach_endpoints
    from stockade.network.store import Networks

    if mode(ctr.record) != "bridge":
        raise NetworkError(f"container {ctr.name} uses --network {mode(ctr.record)}: it cannot join other networks")
    net = Networks(root).find(name)
    if net.driver != "bridge":
        raise NetworkError(f"network {net.name} ({net.driver}) cannot be connected to")
    if (ip or aliases) and net.name == "bridge":
        raise NetworkError("--ip and --alias need a user-defined network (not the default bridge)")
    asked = ctr.record.setdefault("NetworkSettings", {}).setdefault("Networks", {})
    if net.name in asked:
        raise NetworkError(f"endpoint with name {ctr.name} already exists in network {net.name}")
    if ctr.running():
        member = Member(ctr.id, ctr.name, f"/proc/{ctr.state['Pid']}/ns/net")
        doc = attach_endpoints(root, runroot, member, [EndpointRequest(net.name, ip, aliases)], [], settings(ctr))
        save_settings(ctr, doc)
    with Containers(root).names_lock():
        ctr.record = Containers(root).load(ctr.id).record
        ctr.record.setdefault("NetworkSettings", {}).setdefault("Networks", {})[net.name] = {
            "IPAMConfig": {"IPv4Address": ip} if ip else None, "Aliases": list(aliases), "NetworkID": net.id,
        }  # fmt: skip
        ctr.save_record()


def disconnect(root: Path, runroot: Path, ctr: Container, name: str) -> None:
    from stockade.network.config import NetworkError
    from stockade.network.endpoints import detach as detach_endpoints
    from stockade.network.store import Networks

    net = Networks(root).find(name)
    asked = ctr.record.get("NetworkSettings", {}).get("Networks") or {}
    if net.name not in asked:
        raise NetworkError(f"container {ctr.name} is not connected to network {net.name}")
    doc = settings(ctr)
    if ctr.running() and net.name in (doc.get("Networks") or {}):
        detach_endpoints(root, runroot, ctr.id, doc, only=net.name)
        save_settings(ctr, doc)
    with Containers(root).names_lock():
        ctr.record = Containers(root).load(ctr.id).record
        ctr.record["NetworkSettings"]["Networks"].pop(net.name, None)
        ctr.save_record()


def take_down_all(root: Path, runroot: Path) -> None:
    """Every network of a store goes from the host (bridges, rules, DNS responders); user-defined
    networks are removed, the predefined ones forgotten. For tests and resets: the caller has
    removed the containers."""
    from stockade.network import dns, firewall, links
    from stockade.network.endpoints import rules_marker
    from stockade.network.store import Networks

    networks = Networks(root)
    with networks.lock():
        for net in networks.all():
            if net.driver == "bridge":
                dns.stop(runroot, net.id)
                with contextlib.suppress(OSError):
                    firewall.remove_network(net.id, net.bridge)
                links.delete_link(net.bridge)
                rules_marker(runroot, net.id).unlink(missing_ok=True)
            networks.remove(net)
