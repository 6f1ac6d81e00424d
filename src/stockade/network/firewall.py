"""stockade's nftables rules, in its own tables only (`ip stockade`, `ip6 stockade`, `bridge
stockade`): we never flush, reorder or touch anyone else's.

    ip stockade
      maps any_addr, any_port   proto . host port           -> container address, port  (-p PORT:PORT)
      maps ip_addr, ip_port     host ip . proto . host port -> container address, port  (-p IP:PORT:PORT)
                                (two maps each: nft 1.0.6 cannot read concatenated map values from JSON)
      set bridges      every stockade bridge
      chain prerouting  (nat, dstnat)  local destination -> published
      chain output      (nat, -100)    local destination -> published  (the host itself, 127.0.0.1)
      chain published   DNAT through the two maps
      chain postrouting (nat, srcnat)  per network: masquerade egress (not --internal), loopback
                                       sources (127.0.0.1 -> published port), hairpin
      chain forward     (filter)       DNATed traffic passes; per network: --internal has no way
                                       in or out, isolate=true has no container-to-container
                                       traffic, no network reaches another's bridge
    ip6 stockade       (with the first --ipv6 network) set bridges; chains postrouting and forward
                       with the IPv6 halves of the per-network rules
    bridge stockade
      set isolated     the bridge ports of containers on isolated networks
      chain forward    isolated port -> isolated port: drop (bridged, never seen by ip hooks)

Per-network rules carry the comment "net:<id12>" and go with the network; what a container
adds is set and map elements, taken out element by element when it stops.
"""

from __future__ import annotations

import contextlib
from typing import Any

from stockade.kernel import nftables

TABLE = "stockade"


def _ip(kind: str, **fields: Any) -> dict[str, Any]:
    return {kind: {"family": "ip", "table": TABLE, **fields}}


def _match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


_SADDR = {"payload": {"protocol": "ip", "field": "saddr"}}
_DADDR = {"payload": {"protocol": "ip", "field": "daddr"}}
_IIF = {"meta": {"key": "iifname"}}
_OIF = {"meta": {"key": "oifname"}}
_L4PROTO = {"meta": {"key": "l4proto"}}
_DPORT = {"payload": {"protocol": "th", "field": "dport"}}
_LOCAL = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
_DNATED = _match({"ct": {"key": "status"}}, "dnat", "in")


_ANY_KEY = ["inet_proto", "inet_service"]
_IP_KEY = ["ipv4_addr", "inet_proto", "inet_service"]


def _dnat(key: list[Any], maps: str) -> dict[str, Any]:
    """dnat to KEY map @M_addr : KEY map @M_port (no entry for the key: no DNAT)."""
    lookup = {"concat": key}
    return {"dnat": {"family": "ip", "addr": {"map": {"key": lookup, "data": f"@{maps}_addr"}},
                     "port": {"map": {"key": lookup, "data": f"@{maps}_port"}}}}  # fmt: skip


def _prefix(cidr: str) -> dict[str, Any]:
    addr, _, length = cidr.partition("/")
    return {"prefix": {"addr": addr, "len": int(length)}}


def _skeleton() -> list[dict[str, Any]]:
    nat_chain = {"type": "nat", "policy": "accept"}
    return [
        {"add": {"table": {"family": "ip", "name": TABLE}}},
        {"add": _ip("map", name="any_addr", type=_ANY_KEY, map="ipv4_addr")},
        {"add": _ip("map", name="any_port", type=_ANY_KEY, map="inet_service")},
        {"add": _ip("map", name="ip_addr", type=_IP_KEY, map="ipv4_addr")},
        {"add": _ip("map", name="ip_port", type=_IP_KEY, map="inet_service")},
        {"add": _ip("set", name="bridges", type="ifname")},
        {"add": _ip("chain", name="published")},
        {"add": _ip("chain", name="prerouting", hook="prerouting", prio=-100, **nat_chain)},
        {"add": _ip("chain", name="output", hook="output", prio=-100, **nat_chain)},
        {"add": _ip("chain", name="postrouting", hook="postrouting", prio=100, **nat_chain)},
        {"add": _ip("chain", name="forward", type="filter", hook="forward", prio=0, policy="accept")},
        {"add": _ip("rule", chain="published", expr=[_dnat([_DADDR, _L4PROTO, _DPORT], "ip")])},
        {"add": _ip("rule", chain="published", expr=[_dnat([_L4PROTO, _DPORT], "any")])},
        {"add": _ip("rule", chain="prerouting", expr=[_LOCAL, {"jump": {"target": "published"}}])},
        {"add": _ip("rule", chain="output", expr=[_LOCAL, {"jump": {"target": "published"}}])},
        {"add": _ip("rule", chain="forward", expr=[_DNATED, {"accept": None}])},
        {"add": {"table": {"family": "bridge", "name": TABLE}}},
        {"add": {"set": {"family": "bridge", "table": TABLE, "name": "isolated", "type": "ifname"}}},
        {"add": {"chain": {"family": "bridge", "table": TABLE, "name": "forward", "type": "filter",
                           "hook": "forward", "prio": 0, "policy": "accept"}}},
        {"add": {"rule": {"family": "bridge", "table": TABLE, "chain": "forward", "expr": [
            _match(_IIF, "@isolated"), _match(_OIF, "@isolated"), {"drop": None}]}}},
    ]  # fmt: skip


def _ip6(kind: str, **fields: Any) -> dict[str, Any]:
    return {kind: {"family": "ip6", "table": TABLE, **fields}}


_SADDR6 = {"payload": {"protocol": "ip6", "field": "saddr"}}


def _skeleton6() -> list[dict[str, Any]]:
    """`ip6 stockade`, made with the first IPv6 network: egress masquerade and the forward
    filter of IPv6 networks (ports are published over IPv4 only)."""
    return [
        {"add": {"table": {"family": "ip6", "name": TABLE}}},
        {"add": _ip6("set", name="bridges", type="ifname")},
        {"add": _ip6("chain", name="postrouting", type="nat", hook="postrouting", prio=100, policy="accept")},
        {"add": _ip6("chain", name="forward", type="filter", hook="forward", prio=0, policy="accept")},
    ]


_tables_seen = False  # this process has seen (or made) our tables: no need to list them again


def ensure_tables() -> None:
    """Our tables, made once (checked by listing: `add` of an existing rule would duplicate it)."""
    global _tables_seen
    if not _tables_seen and not nftables.list_ruleset("ip", TABLE):
        nftables.run(_skeleton())
    _tables_seen = True


Rules = list[tuple[str, list[dict[str, Any]]]]  # (chain, expressions)


def _egress(saddr: dict[str, Any], bridge: str, subnet: str) -> Rules:
    return [("postrouting", [_match(saddr, _prefix(subnet)), _match(_OIF, bridge, "!="), {"masquerade": None}])]


def _filter(bridge: str, internal: bool, isolated: bool) -> Rules:
    """The forward filter of a network, the same in both IP families."""
    rules: Rules = []
    if internal:
        rules.append(("forward", [_match(_IIF, bridge), _match(_OIF, bridge, "!="), {"drop": None}]))
        rules.append(("forward", [_match(_OIF, bridge), _match(_IIF, bridge, "!="), {"drop": None}]))
    if isolated:
        rules.append(("forward", [_match(_IIF, bridge), _match(_OIF, bridge), {"drop": None}]))
    rules.append(
        ("forward", [_match(_IIF, bridge), _match(_OIF, "@bridges"), _match(_OIF, bridge, "!="), {"drop": None}])
    )
    return rules


def _commands(builder: Any, net_id: str, bridge: str, rules: Rules) -> list[dict[str, Any]]:
    comment = "net:" + net_id[:12]
    out: list[dict[str, Any]] = [{"add": builder("element", name="bridges", elem=[bridge])}]
    out += [{"add": builder("rule", chain=chain, expr=expr, comment=comment)} for chain, expr in rules]
    return out


def network_rules(net_id: str, bridge: str, subnet: str, internal: bool, isolated: bool) -> list[dict[str, Any]]:
    rules = [] if internal else _egress(_SADDR, bridge, subnet)
    rules.append(("postrouting", [_match(_OIF, bridge), _match(_SADDR, _prefix("127.0.0.0/8")), {"masquerade": None}]))
    rules.append(
        ("postrouting", [_match(_OIF, bridge), _match(_SADDR, _prefix(subnet)), _DNATED, {"masquerade": None}])
    )
    return _commands(_ip, net_id, bridge, rules + _filter(bridge, internal, isolated))


def network_rules6(net_id: str, bridge: str, subnet6: str, internal: bool, isolated: bool) -> list[dict[str, Any]]:
    """The IPv6 half of network_rules: masquerade for egress, the same forward filter."""
    rules = [] if internal else _egress(_SADDR6, bridge, subnet6)
    return _commands(_ip6, net_id, bridge, rules + _filter(bridge, internal, isolated))


def add_network(
    net_id: str, bridge: str, subnet: str, internal: bool, isolated: bool, subnet6: str | None = None
) -> None:
    ensure_tables()
    remove_network(net_id, bridge)  # rules left from before (a crash, a reboot's leftovers)
    nftables.run(network_rules(net_id, bridge, subnet, internal, isolated))
    if subnet6:
        if not nftables.list_ruleset("ip6", TABLE):
            nftables.run(_skeleton6())
        nftables.run(network_rules6(net_id, bridge, subnet6, internal, isolated))


def remove_network(net_id: str, bridge: str) -> None:
    comment = "net:" + net_id[:12]
    for family, builder in (("ip", _ip), ("ip6", _ip6)):
        commands = []
        objects = nftables.list_ruleset(family, TABLE)
        for obj in objects:
            rule = obj.get("rule")
            if rule and rule.get("comment") == comment:
                commands.append({"delete": builder("rule", chain=rule["chain"], handle=rule["handle"])})
        if commands:
            nftables.run(commands)
        if objects:
            with contextlib.suppress(OSError):
                nftables.run([{"delete": builder("element", name="bridges", elem=[bridge])}])


def has_network(net_id: str) -> bool:
    global _tables_seen
    comment = "net:" + net_id[:12]
    objects = nftables.list_ruleset("ip", TABLE)
    _tables_seen = _tables_seen or bool(objects)
    return any((o.get("rule") or {}).get("comment") == comment for o in objects)


def _port_elements(binding: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(map, key, value) pairs for one published port."""
    if binding.get("HostIp"):
        maps, key = "ip", {"concat": [binding["HostIp"], binding["Proto"], int(binding["HostPort"])]}
    else:
        maps, key = "any", {"concat": [binding["Proto"], int(binding["HostPort"])]}
    return [(f"{maps}_addr", key, binding["ContainerIp"]), (f"{maps}_port", key, int(binding["ContainerPort"]))]


def add_ports(bindings: list[dict[str, Any]]) -> None:
    """DNAT for published ports: {HostIp, HostPort, Proto, ContainerIp, ContainerPort} each."""
    if not bindings:
        return
    ensure_tables()
    commands = []
    for b in bindings:
        for name, key, value in _port_elements(b):
            commands.append({"add": _ip("element", name=name, elem=[[key, value]])})
    nftables.run(commands)


def remove_ports(bindings: list[dict[str, Any]]) -> None:
    """One element at a time: one already gone (a flushed table) must not keep the rest."""
    for b in bindings:
        for name, key, _value in _port_elements(b):
            with contextlib.suppress(OSError):
                nftables.run([{"delete": _ip("element", name=name, elem=[key])}])


def isolate_port(veth: str) -> None:
    ensure_tables()
    nftables.run([{"add": {"element": {"family": "bridge", "table": TABLE, "name": "isolated", "elem": [veth]}}}])


def unisolate_port(veth: str) -> None:
    with contextlib.suppress(OSError):
        nftables.run(
            [{"delete": {"element": {"family": "bridge", "table": TABLE, "name": "isolated", "elem": [veth]}}}]
        )


FAMILIES = ("ip", "ip6", "bridge")


def tables_present() -> set[str]:
    """The families that have our table now (tests and benches remove what they added)."""
    return {family for family in FAMILIES if nftables.list_ruleset(family, TABLE)}


def remove_tables(families: tuple[str, ...] | set[str] = FAMILIES) -> None:
    """Our tables (tests, benches; `stockade system reset` one day)."""
    global _tables_seen
    for family in families:
        with contextlib.suppress(OSError):
            nftables.run([{"delete": {"table": {"family": family, "name": TABLE}}}])
    _tables_seen = False
