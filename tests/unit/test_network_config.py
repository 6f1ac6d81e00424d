"""Pure network planning: -p specs, subnets, names, DNS messages, nft rule documents."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from stockade.network import dns, firewall
from stockade.network.config import (
    NetworkError,
    PortBinding,
    bindings_from_json,
    check_add_host,
    check_network_name,
    choose_subnet,
    exposed_bindings,
    format_ports,
    mac_for,
    parse_gateway,
    parse_publish,
    parse_subnet,
    port_bindings_json,
)


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("80", [PortBinding(80)]),
        ("8080:80", [PortBinding(80, "tcp", "", 8080)]),
        ("127.0.0.1:8080:80/udp", [PortBinding(80, "udp", "127.0.0.1", 8080)]),
        ("127.0.0.1::80", [PortBinding(80, "tcp", "127.0.0.1", 0)]),
        ("8000-8001:80-81", [PortBinding(80, "tcp", "", 8000), PortBinding(81, "tcp", "", 8001)]),
        ("53/UDP", [PortBinding(53, "udp")]),
    ],
)
def test_publish_forms(spec: str, want: list[PortBinding]) -> None:
    assert parse_publish(spec) == want


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("80/icmp", 'unknown protocol "icmp"'),
        ("0:80", 'invalid host port "0"'),
        ("8080:99999", 'invalid container port "99999"'),
        ("8000-8002:80-81", "differ in size"),
        ("8000-8002:80", "needs a container port range"),
        ("300.1.1.1:80:80", 'invalid host IP "300.1.1.1"'),
        ("1:2:3:4", "invalid port specification"),
        ("[::1]:80:80", "IPv6"),
        ("web:80", 'invalid host port "web"'),
    ],
)
def test_publish_errors_name_the_spec(spec: str, message: str) -> None:
    with pytest.raises(NetworkError, match=f"-p {spec.replace('[', '.').replace(']', '.')}: .*") as err:
        parse_publish(spec)
    assert message in str(err.value)


def test_port_documents_round_trip_and_ps_column() -> None:
    bindings = [PortBinding(80, "tcp", "", 8080), PortBinding(53, "udp", "127.0.0.1", 5353)]
    doc = port_bindings_json(bindings)
    assert doc == {
        "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
    }
    assert bindings_from_json(doc) == bindings
    shown = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}], "53/udp": []}
    assert format_ports(shown) == "0.0.0.0:8080->80/tcp, 53/udp"
    assert exposed_bindings(["80/tcp", "53/udp", "bad"]) == [PortBinding(80), PortBinding(53, "udp")]


def test_subnets_gateways_names_macs() -> None:
    taken = {'network "a"': ipaddress.IPv4Network("10.200.0.0/16"), "route": ipaddress.IPv4Network("10.201.3.0/24")}
    assert str(choose_subnet(taken)) == "10.202.0.0/16"
    with pytest.raises(NetworkError, match="invalid IPv4 subnet"):
        parse_subnet("10.0.0.1/16")
    with pytest.raises(NetworkError, match="too small"):
        parse_subnet("10.0.0.0/31")
    subnet = parse_subnet("10.5.0.0/24")
    assert str(parse_gateway("10.5.0.254", subnet)) == "10.5.0.254"
    for bad in ("10.5.0.0", "10.5.0.255", "10.6.0.1"):
        with pytest.raises(NetworkError, match="not a host address"):
            parse_gateway(bad, subnet)
    assert check_network_name("my-net_1.x") == "my-net_1.x"
    with pytest.raises(NetworkError, match="invalid network name"):
        check_network_name("-bad")
    assert mac_for(ipaddress.IPv4Address("10.88.0.2")) == "02:42:0a:58:00:02"
    assert check_add_host("db:10.0.0.5") == "db:10.0.0.5"
    with pytest.raises(NetworkError, match="want NAME:IP"):
        check_add_host("db")


def _query(name: str, qtype: int = dns.TYPE_A, qid: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", qtype, 1)


def test_dns_answers_members_by_name_alias_and_short_id() -> None:
    records = dns.records_of(
        {"Containers": {"ab" * 32: {"Name": "Web", "IPv4Address": "10.9.0.5/16", "Aliases": ["www"]}}}
    )
    assert records == {"web": ["10.9.0.5"], ("ab" * 32)[:12]: ["10.9.0.5"], "www": ["10.9.0.5"]}
    parsed = dns.parse_question(_query("WWW"))
    assert parsed is not None and parsed[2] == "www" and parsed[3] == dns.TYPE_A
    reply = dns.answer(_query("www"), ["10.9.0.5"])
    qid, flags, qd, an = struct.unpack("!HHHH", reply[:8])
    assert (qid, flags & 0x800F, qd, an) == (0x1234, 0x8000, 1, 1)
    assert reply.endswith(bytes([10, 9, 0, 5]))
    empty = dns.answer(_query("www", dns.TYPE_AAAA), ["10.9.0.5"])  # known name, no IPv6: NOERROR, no records
    assert struct.unpack("!HHHH", empty[:8])[3] == 0 and struct.unpack("!H", empty[2:4])[0] & 0xF == 0
    unknown = dns.answer(_query("nope"), None)
    assert struct.unpack("!H", unknown[2:4])[0] & 0xF == dns.RCODE_NXDOMAIN
    assert dns.parse_question(b"\x00" * 5) is None
    assert (
        dns.parse_question(struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01") is None
    )  # a response


def test_network_rules_follow_the_network_kind() -> None:
    def chains(internal: bool, isolated: bool) -> list[tuple[str, str]]:
        out = []
        for cmd in firewall.network_rules("f" * 64, "stk-x", "10.9.0.0/16", internal, isolated)[1:]:
            rule = cmd["add"]["rule"]
            assert rule["comment"] == "net:" + "f" * 12
            out.append((rule["chain"], str(rule["expr"][-1])))
        return out

    plain = chains(False, False)
    assert ("postrouting", "{'masquerade': None}") in plain
    assert sum(1 for c, _ in plain if c == "forward") == 1  # only: no traffic to other networks' bridges
    internal = chains(True, False)
    assert sum(1 for c, _ in internal if c == "postrouting") == 2  # no egress masquerade
    assert sum(1 for c, _ in internal if c == "forward") == 3
    assert sum(1 for c, _ in chains(False, True) if c == "forward") == 2


def test_ipv6_subnets_gateways_and_ula_choice() -> None:
    import ipaddress

    from stockade.network.config import choose_subnet6, parse_gateway6, parse_subnet6

    net = parse_subnet6("fd12:3456:789a::/64")
    assert parse_gateway6("fd12:3456:789a::1", net) == ipaddress.IPv6Address("fd12:3456:789a::1")
    for bad in ("fd12::/130", "10.0.0.0/8", "fd12::1/64"):
        with pytest.raises(NetworkError):
            parse_subnet6(bad)
    with pytest.raises(NetworkError, match="not a host address"):
        parse_gateway6("fd00::1", net)
    chosen = choose_subnet6("ab" * 32, {})
    assert chosen.prefixlen == 64 and str(chosen).startswith("fd")
    taken = {"x": chosen}
    assert not choose_subnet6("ab" * 32, taken).overlaps(chosen)


def test_dns_answers_aaaa_for_ipv6_members() -> None:
    import struct

    from stockade.network.dns import TYPE_A, TYPE_AAAA, answer, records_of

    doc = {"Containers": {"c" * 64: {"Name": "web", "IPv4Address": "10.1.0.2/16", "IPv6Address": "fd00:1::2/64"}}}
    found = records_of(doc)["web"]
    assert found == ["10.1.0.2", "fd00:1::2"]

    def query(qtype: int) -> bytes:
        return struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x03web\x00" + struct.pack("!HH", qtype, 1)

    aaaa = answer(query(TYPE_AAAA), found)
    assert struct.unpack("!H", aaaa[6:8])[0] == 1 and aaaa.endswith(bytes.fromhex("fd000001" + "00" * 10 + "0002"))
    a = answer(query(TYPE_A), found)
    assert struct.unpack("!H", a[6:8])[0] == 1 and a.endswith(bytes([10, 1, 0, 2]))
