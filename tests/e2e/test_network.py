"""Networking through the CLI on real kernel networking: bridges, veths, nftables NAT and
filtering, published ports, DNS between containers. Traffic stays on this machine: the host's
own addresses and the bridges these tests make."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_engine import ROOT_ONLY, Engine, _nft_tables, _searchable, take_down

from stockade.kernel import nftables
from stockade.kernel.net import ipv4_routes
from stockade.network import dns

pytestmark = [ROOT_ONLY, pytest.mark.skipif(not os.path.exists("/usr/lib/x86_64-linux-gnu/libnftables.so.1")
                                            and not os.path.exists("/usr/lib/aarch64-linux-gnu/libnftables.so.1"),
                                            reason="needs nftables")]  # fmt: skip

HTTPD = "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www"


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _our_ruleset() -> list[dict[str, Any]]:
    """stockade's tables as nft lists them, handles dropped (they are not ours to compare)."""
    out = []
    for family in ("ip", "ip6", "bridge"):
        for obj in nftables.list_ruleset(family, "stockade"):
            for body in obj.values():
                body.pop("handle", None)
            out.append(obj)
    return out


@pytest.fixture
def net(tmp_path: Path) -> Any:
    _searchable(tmp_path)
    e = Engine(tmp_path)
    e.env["STOCKADE_HOST_IDLE"] = "10"
    e("image", "build-base", "busybox")
    links_before = _links()
    tables_before = _nft_tables()
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    forward6 = Path("/proc/sys/net/ipv6/conf/all/forwarding").read_text()
    yield e
    take_down(e, tables_before)
    Path("/proc/sys/net/ipv4/ip_forward").write_text(forward)
    Path("/proc/sys/net/ipv6/conf/all/forwarding").write_text(forward6)
    assert _wait_links(links_before), f"links left: {_links() - links_before}"


def _wait_links(expected: set[str], seconds: float = 10) -> bool:
    """veths of exited containers go with their namespaces, which the kernel frees a moment later."""
    deadline = time.monotonic() + seconds
    while _links() - expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return not (_links() - expected)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _host_address() -> str:
    """This host's address on the interface of its default route (not loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the source address
            return str(s.getsockname()[0])
        except OSError:
            return ""


def _get(url: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return str(r.read().decode().strip())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _server(e: Engine, name: str, *flags: str) -> None:
    e("run", "-d", "--name", name, *flags, "busybox", "sh", "-c", HTTPD)


def test_user_network_containers_reach_each_other_by_name_and_alias(net: Engine) -> None:
    net("network", "create", "appnet")
    _server(net, "web", "--network", "appnet", "--network-alias", "www", "--hostname", "web")
    doc = net.inspect("web")
    address = doc["NetworkSettings"]["Networks"]["appnet"]["IPAddress"]
    assert address and doc["NetworkSettings"]["IPAddress"] == address
    gateway = doc["NetworkSettings"]["Networks"]["appnet"]["Gateway"]
    client = net("run", "--rm", "--network", "appnet", "busybox", "sh", "-c",
                 "for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://web/ && break; sleep 0.2; done; "
                 "wget -qO- http://www/; cat /etc/resolv.conf; ip route")  # fmt: skip
    assert client.stdout.count("hello-from-web") == 2, client.stdout + client.stderr
    assert f"nameserver {gateway}" in client.stdout
    assert f"default via {gateway}" in client.stdout
    hosts = net("exec", "web", "cat", "/etc/hosts").stdout
    assert f"{address}\tweb" in hosts
    listing = json.loads(net("network", "inspect", "appnet").stdout)[0]
    assert [m["Name"] for m in listing["Containers"].values()] == ["web"]
    # the default bridge resolves no container names, as Docker's
    assert gateway not in net("run", "--rm", "busybox", "cat", "/etc/resolv.conf").stdout
    # A container on two networks resolves the members of both (its resolv.conf names the
    # first network's responder, which answers for the second one's members too).
    net("network", "create", "othernet")
    _server(net, "db", "--network", "othernet", "--hostname", "db")
    both = net("run", "--rm", "--network", "appnet", "--network", "othernet", "busybox", "sh", "-c",
               "for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://db/ && break; sleep 0.2; done; wget -qO- http://web/")  # fmt: skip
    assert "hello-from-db" in both.stdout and "hello-from-web" in both.stdout, both.stdout + both.stderr
    lonely = net("run", "--rm", "--network", "appnet", "busybox", "nslookup", "db", check=False).stdout
    assert "can't find" in lonely or "NXDOMAIN" in lonely  # not on othernet: db stays unknown


def test_published_port_from_host_loopback_host_address_and_other_containers(net: Engine) -> None:
    port = _free_port()
    _server(net, "pub", "-p", f"{port}:80", "--hostname", "pub")
    assert _get(f"http://127.0.0.1:{port}/") == "hello-from-pub"
    host = _host_address()
    if host:
        assert _get(f"http://{host}:{port}/") == "hello-from-pub"
        # hairpin: a container on the same bridge, through the host's address
        same = net("run", "--rm", "busybox", "wget", "-qO-", f"http://{host}:{port}/")
        assert same.stdout.strip() == "hello-from-pub"
        net("network", "create", "other")
        across = net("run", "--rm", "--network", "other", "busybox", "wget", "-qO-", f"http://{host}:{port}/")
        assert across.stdout.strip() == "hello-from-pub"
    assert net("port", "pub").stdout.strip() == f"80/tcp -> 0.0.0.0:{port}"
    assert net("port", "pub", "80").stdout.strip() == f"0.0.0.0:{port}"
    ps = net("ps", "--format", "{{.Names}} {{.Ports}}").stdout
    assert f"pub 0.0.0.0:{port}->80/tcp" in ps
    ports = net.inspect("pub")["NetworkSettings"]["Ports"]
    assert ports == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
    # -p CONTAINER_PORT alone: a free host port from the kernel
    _server(net, "anyport", "-p", "80", "--hostname", "anyport")
    given = int(net("port", "anyport", "80").stdout.strip().rsplit(":", 1)[1])
    assert given > 1024 and _get(f"http://127.0.0.1:{given}/") == "hello-from-anyport"
    # a host address given: only that address answers
    local_port = _free_port()
    _server(net, "localonly", "-p", f"127.0.0.1:{local_port}:80", "--hostname", "localonly")
    assert _get(f"http://127.0.0.1:{local_port}/") == "hello-from-localonly"


def test_udp_published_port(net: Engine, escape_binary: Path) -> None:
    _searchable(escape_binary.parent)  # the container's root must reach it
    port = _free_port()
    net("run", "-d", "--name", "udp", "-p", f"{port}:5353/udp", "-v", f"{escape_binary}:/helper:ro",
        "busybox", "/helper", "udp-echo", "5353")  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        for _ in range(20):
            s.sendto(b"ping", ("127.0.0.1", port))
            try:
                assert s.recvfrom(100)[0] == b"udp:ping"
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("no UDP echo through the published port")
    assert net("port", "udp").stdout.strip() == f"5353/udp -> 0.0.0.0:{port}"


def test_internal_network_has_no_way_out(net: Engine) -> None:
    net("network", "create", "--internal", "sealed")
    _server(net, "inside", "--network", "sealed", "--hostname", "inside")
    port = _free_port()
    _server(net, "outside", "-p", f"{port}:80", "--hostname", "outside")
    host = _host_address() or "127.0.0.1"
    out = net("run", "--rm", "--network", "sealed", "busybox", "sh", "-c",
              f"ip route; wget -T 2 -qO- http://{host}:{port}/ || echo NO-WAY-OUT; wget -qO- http://inside/")  # fmt: skip
    assert "default" not in out.stdout
    assert "NO-WAY-OUT" in out.stdout and "hello-from-outside" not in out.stdout
    assert "hello-from-inside" in out.stdout  # members still reach each other


def test_isolated_network_blocks_containers_but_not_the_gateway(net: Engine) -> None:
    net("network", "create", "-o", "isolate=true", "iso")
    _server(net, "lonely", "--network", "iso", "--hostname", "lonely")
    doc = net.inspect("lonely")["NetworkSettings"]["Networks"]["iso"]
    out = net("run", "--rm", "--network", "iso", "busybox", "sh", "-c",
              f"ping -c1 -W2 {doc['Gateway']} >/dev/null && echo GATEWAY-OK; "
              f"wget -T 2 -qO- http://{doc['IPAddress']}/ || echo BLOCKED; "
              f"ping -c1 -W1 {doc['IPAddress']} >/dev/null || echo NO-PING")  # fmt: skip
    assert "GATEWAY-OK" in out.stdout and "BLOCKED" in out.stdout and "NO-PING" in out.stdout
    assert "hello-from-lonely" not in out.stdout
    assert net("exec", "lonely", "ping", "-c1", "-W2", doc["Gateway"]).returncode == 0


def test_network_modes_none_host_and_container(net: Engine) -> None:
    none = net("run", "--rm", "--network", "none", "busybox", "ip", "addr").stdout
    assert "127.0.0.1/8" in none and "LOOPBACK,UP" in none and "eth0" not in none
    host_links = net("run", "--rm", "--network", "host", "busybox", "ls", "/sys/class/net").stdout.split()
    assert set(host_links) == _links()
    _server(net, "base", "--hostname", "base")
    shared = net("run", "--rm", "--network", "container:base", "busybox", "wget", "-qO-", "http://127.0.0.1/")
    assert shared.stdout.strip() == "hello-from-base"
    assert not net.inspect("base")["NetworkSettings"]["Ports"]


def test_connect_and_disconnect_a_running_container(net: Engine) -> None:
    net("network", "create", "second")
    net("run", "-d", "--name", "roamer", "busybox", "sleep", "300")
    net("network", "connect", "--alias", "wanderer", "second", "roamer")
    addrs = net("exec", "roamer", "ip", "-o", "-4", "addr").stdout
    assert " eth0 " in addrs and " eth1 " in addrs
    found = net("run", "--rm", "--network", "second", "busybox", "nslookup", "wanderer").stdout
    second = net.inspect("roamer")["NetworkSettings"]["Networks"]["second"]["IPAddress"]
    assert second in found
    net("network", "disconnect", "second", "roamer")
    assert " eth1 " not in net("exec", "roamer", "ip", "-o", "-4", "addr").stdout
    assert "second" not in net.inspect("roamer")["NetworkSettings"]["Networks"]
    net("network", "rm", "second")


def test_fifty_cycles_leave_no_link_rule_address_or_dns_entry(net: Engine) -> None:
    net("network", "create", "churn")
    net("run", "--rm", "--network", "churn", "busybox", "true")  # bridge and rules made once
    assert _wait_links(_links())
    links, rules = _links(), _our_ruleset()

    def cycle(i: int) -> None:
        port = str(_free_port())
        if i % 2:
            net("run", "--rm", "--network", "churn", "-p", f"{port}:80", "busybox", "true")
        else:
            net("run", "-d", "--name", f"c{i}", "--network", "churn", "-p", f"{port}:80", "busybox", "sleep", "60")
            net("rm", "-f", f"c{i}")

    for i in range(50):
        cycle(i)
    assert _wait_links(links), f"links left: {_links() - links}"
    assert _our_ruleset() == rules
    doc = json.loads(net("network", "inspect", "churn").stdout)[0]
    assert doc["Containers"] == {}
    assert not dns.running(net.root / "run", doc["Id"])


def test_fifty_parallel_containers_get_fifty_addresses(net: Engine) -> None:
    net("network", "create", "crowd")

    def start(i: int) -> str:
        net("run", "-d", "--name", f"p{i}", "--network", "crowd", "busybox", "sleep", "120", timeout=120)
        doc = net.inspect(f"p{i}")
        address = str(doc["NetworkSettings"]["Networks"]["crowd"]["IPAddress"])
        assert address, f"p{i} has no address: State {doc['State']}, NetworkSettings {doc['NetworkSettings']}"
        return address

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        addresses = list(pool.map(start, range(50)))
    assert len(set(addresses)) == 50, sorted(addresses)
    members = json.loads(net("network", "inspect", "crowd").stdout)[0]["Containers"]
    assert sorted(m["IPv4Address"].split("/")[0] for m in members.values()) == sorted(addresses)


def test_errors_ports_subnets_and_networks_in_use(net: Engine) -> None:
    port = _free_port()
    _server(net, "holder", "-p", f"{port}:80")
    taken = net("run", "--rm", "-p", f"{port}:80", "busybox", "true", check=False)
    assert taken.returncode == 125
    assert f"Bind for 0.0.0.0:{port}/tcp failed: port is already allocated" in taken.stderr
    with socket.socket() as listener:  # a host program's port
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        result = net("run", "-d", "--name", "late", "-p", f"{busy}:80", "busybox", "true", check=False)
        assert result.returncode == 125 and "port is already allocated" in result.stderr
    bad = net("run", "--rm", "-p", "80:99999", "busybox", "true", check=False)
    assert bad.returncode == 125 and 'invalid container port "99999"' in bad.stderr
    net("network", "create", "--subnet", "10.123.0.0/16", "first")
    overlap = net("network", "create", "--subnet", "10.123.4.0/24", "second", check=False)
    assert overlap.returncode != 0 and 'overlaps network "first"' in overlap.stderr
    for _iface, dest, prefix, _flags in ipv4_routes():
        if prefix and not dest.startswith(("10.", "172.")):
            host_clash = net("network", "create", "--subnet", f"{dest}/{prefix}", "clash", check=False)
            assert host_clash.returncode != 0 and "host's route" in host_clash.stderr
            break
    net("run", "-d", "--name", "user", "--network", "first", "busybox", "sleep", "60")
    in_use = net("network", "rm", "first", check=False)
    assert in_use.returncode != 0 and "has active endpoints" in in_use.stderr
    missing = net("run", "--rm", "--network", "nowhere", "busybox", "true", check=False)
    assert missing.returncode == 125 and "network nowhere not found" in missing.stderr
    assert "cannot be removed" in net("network", "rm", "bridge", check=False).stderr


def test_dns_responder_forwards_what_it_does_not_know(tmp_path: Path) -> None:
    """Names of members are answered locally; anything else goes to the host's resolvers and
    the answer comes back (a fake upstream on a loopback address stands in for them)."""
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.73", 53))
    doc = tmp_path / "net.json"
    doc.write_text(
        json.dumps({"Containers": {"a" * 64: {"Name": "web", "IPv4Address": "10.9.0.5/16", "Aliases": ["www"]}}})
    )
    responder = dns.Responder(doc, "127.0.0.74", ["127.0.0.73"])
    pid = os.fork()
    if pid == 0:
        try:
            responder.serve()
        finally:
            os._exit(0)
    try:
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(3)

        def query(name: str, qid: int) -> bytes:
            labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
            client.sendto(qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00\x00\x01\x00\x01",
                          ("127.0.0.74", 53))  # fmt: skip
            return bytes(client.recvfrom(512)[0])

        local = query("www", 7)
        assert local[:2] == b"\x00\x07" and local[-4:] == bytes([10, 9, 0, 5])
        client.sendto(b"", ("127.0.0.74", 53))  # garbage is ignored
        labels = b"\x07example\x03com\x00"
        client.sendto(
            b"\x00\x09\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00\x01\x00\x01", ("127.0.0.74", 53)
        )
        upstream.settimeout(3)
        forwarded, source = upstream.recvfrom(512)
        assert labels in forwarded
        reply = (
            forwarded[:2]
            + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
            + forwarded[12:]
            + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04"
        )
        upstream.sendto(reply, source)
        answer = client.recvfrom(512)[0]
        assert answer[:2] == b"\x00\x09" and answer[-4:] == b"\x01\x02\x03\x04"
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        upstream.close()
        responder.udp.close()
        responder.tcp.close()
        responder.upstream.close()


def test_a_crashed_monitor_leaves_nothing_once_noticed(net: Engine) -> None:
    """Monitor and container killed together (a crash): the next command that looks records the
    end and takes the container off its network - address, DNS entry, DNAT entries."""
    net("network", "create", "fragile")
    net("network", "inspect", "fragile")
    port = _free_port()
    _server(net, "victim", "--network", "fragile", "-p", f"{port}:80", "--hostname", "victim")
    rules_running = _our_ruleset()
    state = json.loads((Path(net.inspect("victim")["LogPath"]).with_name("state.json")).read_text())
    os.kill(state["MonitorPid"], 9)
    os.kill(state["Pid"], 9)
    deadline = time.monotonic() + 10
    while net.inspect("victim")["State"]["Status"] != "exited":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert net.inspect("victim")["State"]["ExitCode"] == 255
    assert json.loads(net("network", "inspect", "fragile").stdout)[0]["Containers"] == {}
    after = _our_ruleset()
    assert after != rules_running and str(port) not in json.dumps(after)
    _server(net, "heir", "--network", "fragile", "-p", f"{port}:80", "--hostname", "heir")  # the port is free again
    assert _get(f"http://127.0.0.1:{port}/") == "hello-from-heir"


def test_ipv6_network_addresses_names_and_isolation(net: Engine) -> None:
    """--ipv6: a ULA /64 beside the IPv4 subnet; containers get both, their names resolve to
    AAAA records, the gateway answers; --internal has no IPv6 route out; rules go with rm."""
    net("network", "create", "--ipv6", "v6net")
    doc = json.loads(net("network", "inspect", "v6net").stdout)[0]
    assert doc["EnableIPv6"] is True
    subnet6 = next(c for c in doc["IPAM"]["Config"] if ":" in c["Subnet"])
    assert subnet6["Subnet"].startswith("fd") and subnet6["Subnet"].endswith("::/64")
    net("run", "-d", "--network", "v6net", "--name", "web6", "busybox", "sh", "-c", HTTPD)
    ep = net.inspect("web6")["NetworkSettings"]["Networks"]["v6net"]
    addr6, gw6 = ep["GlobalIPv6Address"], ep["IPv6Gateway"]
    assert addr6 and ep["GlobalIPv6PrefixLen"] == 64 and gw6 == subnet6["Gateway"]
    script = (f"wget -q -O- http://[{addr6}]/index.html; ping -6 -c1 -W3 web6 | head -1; "
              f"ping -6 -c1 -W3 {gw6} >/dev/null && echo gateway-ok; ip -6 route | grep -c default")  # fmt: skip
    out = net("run", "--rm", "--network", "v6net", "busybox", "sh", "-c", script).stdout.splitlines()
    assert out[0].startswith("hello-from-")
    assert f"({addr6})" in out[1]  # the name resolved to its AAAA record
    assert out[2:] == ["gateway-ok", "1"]
    net("network", "create", "--ipv6", "--internal", "v6int")
    routes = net("run", "--rm", "--network", "v6int", "busybox", "ip", "-6", "route").stdout
    assert "default" not in routes and "/64" in routes
    # Overlaps and bad flags are refused before anything is made.
    net("network", "create", "--ipv6", "--subnet", "fd99:1::/64", "v6a")
    clash = net("network", "create", "--ipv6", "--subnet", "fd99:1::/80", "v6b", check=False)
    assert clash.returncode == 1 and 'overlaps network "v6a" (IPv6)' in clash.stderr
    bad = net("network", "create", "--subnet", "fd99:2::/64", "v6c", check=False)
    assert bad.returncode == 125 and "needs --ipv6" in bad.stderr
    net("rm", "-f", "web6")
    for name in ("v6net", "v6int", "v6a"):
        net("network", "rm", name)
    rules6 = [o for o in nftables.list_ruleset("ip6", "stockade") if "rule" in o]
    assert rules6 == [], rules6
