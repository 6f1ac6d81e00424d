"""A DNS responder per user-defined network (Docker's embedded DNS, podman's aardvark-dns).

It listens on the network's gateway address, port 53 (UDP and TCP), inside the host's network
namespace. Names it answers: every member's container name, aliases and short ID, read from the
network's record (re-read when it changes), and, for a container that is also on other
user-defined networks, the members of those (its resolv.conf names only its first network's
responder). Anything else is forwarded to the host's resolvers
and the answer relayed. It exits by itself when the network has no members left or is gone;
the last container to leave also stops it at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import socket
import struct
import time
from pathlib import Path
from typing import Any

TYPE_A, TYPE_AAAA, TYPE_ANY = 1, 28, 255
RCODE_SERVFAIL, RCODE_NXDOMAIN = 2, 3
TTL = 600
FORWARD_TIMEOUT = 3.0


def parse_question(query: bytes) -> tuple[int, int, str, int, int] | None:
    """(id, flags, name, qtype, end of question) of a query with one question, else None."""
    if len(query) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    labels, pos = [], 12
    while pos < len(query):
        n = query[pos]
        if n == 0:
            pos += 1
            break
        if n & 0xC0:  # no compression in a question
            return None
        labels.append(query[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    if pos + 4 > len(query):
        return None
    qtype, _qclass = struct.unpack("!HH", query[pos : pos + 4])
    return qid, flags, ".".join(labels).lower(), qtype, pos + 4


def answer(query: bytes, addresses: list[str] | None, rcode: int = 0) -> bytes:
    """The response to `query`: A or AAAA records for `addresses`, as the question asks (None:
    the name is unknown; a known name without an address of the asked type has no answers)."""
    parsed = parse_question(query)
    assert parsed is not None
    qid, flags, _name, qtype, end = parsed
    records = b""
    count = 0
    if addresses is None and rcode == 0:
        rcode = RCODE_NXDOMAIN
    for addr in addresses or []:
        if ":" in addr and qtype in (TYPE_AAAA, TYPE_ANY):
            records += struct.pack("!HHHIH", 0xC00C, TYPE_AAAA, 1, TTL, 16) + ipaddress.IPv6Address(addr).packed
            count += 1
        elif ":" not in addr and qtype in (TYPE_A, TYPE_ANY):
            records += struct.pack("!HHHIH", 0xC00C, TYPE_A, 1, TTL, 4) + ipaddress.IPv4Address(addr).packed
            count += 1
    out_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode  # QR, AA, RD copied, RA
    return struct.pack("!HHHHHH", qid, out_flags, 1, count, 0, 0) + query[12:end] + records


def records_of(doc: dict[str, object]) -> dict[str, list[str]]:
    """name -> addresses (IPv4, then IPv6), from a network record's members (name, aliases,
    short ID)."""
    out: dict[str, list[str]] = {}
    members = doc.get("Containers") or {}
    assert isinstance(members, dict)
    for cid, m in members.items():
        addrs = [str(m.get(k, "")).split("/")[0] for k in ("IPv4Address", "IPv6Address") if m.get(k)]
        if not addrs:
            continue
        for name in [m.get("Name", ""), cid[:12], *(m.get("Aliases") or [])]:
            if name:
                out.setdefault(str(name).lower(), []).extend(addrs)
    return out


def host_resolvers(path: str = "/etc/resolv.conf") -> list[str]:
    out = []
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    out.append(str(ipaddress.IPv4Address(fields[1])))
    return out


class Responder:
    def __init__(self, doc_path: Path, listen: str, upstreams: list[str]) -> None:
        self.doc_path = doc_path
        self.upstreams = upstreams
        self.records: dict[str, list[str]] = {}
        self.members: dict[str, str] = {}  # IPv4 address -> container ID, on this network
        self.mtime = 0
        self.others: list[dict[str, Any]] = []  # the store's other user-defined networks
        self.others_mtime = 0
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.udp.bind((listen, 53))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((listen, 53))
        self.tcp.listen(16)
        self.upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.pending: dict[int, tuple[tuple[str, int], bytes, float]] = {}
        self.next_id = 1

    def reload(self) -> bool:
        """False once the network is gone or has nobody left to answer for."""
        try:
            mtime = os.stat(self.doc_path).st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime != self.mtime:
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(self.doc_path.read_bytes())
                self.records = records_of(doc)
                self.members = {str(m.get("IPv4Address", "")).split("/")[0]: cid
                                for cid, m in (doc.get("Containers") or {}).items()}  # fmt: skip
                self.mtime = mtime
        return bool(self.records)

    def _other_networks(self) -> list[dict[str, Any]]:
        """Every other user-defined network's record (re-read when any network changes: the
        records are replaced by rename, which changes the directory)."""
        directory = self.doc_path.parent
        with contextlib.suppress(OSError):
            mtime = os.stat(directory).st_mtime_ns
            if mtime != self.others_mtime:
                docs = []
                for path in directory.glob("*.json"):
                    if path != self.doc_path:
                        with contextlib.suppress(OSError, ValueError):
                            doc = json.loads(path.read_bytes())
                            if doc.get("Name") != "bridge" and doc.get("Driver") == "bridge":
                                docs.append(doc)
                self.others, self.others_mtime = docs, mtime
        return self.others

    def lookup(self, name: str, client: str) -> list[str] | None:
        """Addresses of `name` for the container at `client`: on this network first, then on
        every other user-defined network that container is on (as Docker answers)."""
        found = self.records.get(name)
        if found is not None:
            return found
        cid = self.members.get(client)
        if cid is None:
            return None
        for doc in self._other_networks():
            if cid in (doc.get("Containers") or {}):
                found = records_of(doc).get(name)
                if found is not None:
                    return found
        return None

    def resolve(self, query: bytes, client: str = "") -> bytes | None:
        """A local answer, or None when the query is to be forwarded."""
        parsed = parse_question(query)
        if parsed is None:
            return None
        found = self.lookup(parsed[2].rstrip("."), client)
        if found is not None:
            return answer(query, found)
        return None

    def on_udp(self) -> None:
        query, client = self.udp.recvfrom(4096)
        if parse_question(query) is None:
            return
        local = self.resolve(query, client[0])
        if local is not None:
            self.udp.sendto(local, client)
        elif not self.upstreams:
            self.udp.sendto(answer(query, [], RCODE_SERVFAIL), client)
        else:
            fid = self.next_id
            self.next_id = self.next_id % 65535 + 1
            self.pending[fid] = (client, query, time.monotonic() + FORWARD_TIMEOUT)
            with contextlib.suppress(OSError):
                self.upstream.sendto(struct.pack("!H", fid) + query[2:], (self.upstreams[0], 53))

    def on_upstream(self) -> None:
        data, _ = self.upstream.recvfrom(65535)
        if len(data) < 12:
            return
        fid = struct.unpack("!H", data[:2])[0]
        entry = self.pending.pop(fid, None)
        if entry is not None:
            client, query, _ = entry
            with contextlib.suppress(OSError):
                self.udp.sendto(query[:2] + data[2:], client)

    def on_tcp(self) -> None:
        conn, peer = self.tcp.accept()
        with conn:
            conn.settimeout(FORWARD_TIMEOUT)
            with contextlib.suppress(OSError, struct.error, AssertionError):
                size = struct.unpack("!H", conn.recv(2, socket.MSG_WAITALL))[0]
                query = conn.recv(size, socket.MSG_WAITALL)
                reply = self.resolve(query, peer[0]) if parse_question(query) else None
                if reply is None and parse_question(query):
                    reply = self._forward_tcp(query)
                if reply:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)

    def _forward_tcp(self, query: bytes) -> bytes:
        for server in self.upstreams:
            with contextlib.suppress(OSError), socket.create_connection((server, 53), FORWARD_TIMEOUT) as up:
                up.sendall(struct.pack("!H", len(query)) + query)
                size = struct.unpack("!H", up.recv(2, socket.MSG_WAITALL))[0]
                return up.recv(size, socket.MSG_WAITALL)
        return answer(query, [], RCODE_SERVFAIL)

    def expire(self) -> None:
        now = time.monotonic()
        for fid, (client, query, deadline) in list(self.pending.items()):
            if deadline < now:
                del self.pending[fid]
                with contextlib.suppress(OSError):
                    self.udp.sendto(answer(query, [], RCODE_SERVFAIL), client)

    def serve(self) -> None:
        handlers = {self.udp.fileno(): self.on_udp, self.tcp.fileno(): self.on_tcp,
                    self.upstream.fileno(): self.on_upstream}  # fmt: skip
        while self.reload():
            ready, _, _ = select.select(list(handlers), [], [], 1.0)
            for fd in ready:
                with contextlib.suppress(OSError):
                    handlers[fd]()
            self.expire()


def pid_file(runroot: Path, net_id: str) -> Path:
    return runroot / "dns" / f"{net_id[:12]}.pid"


def running(runroot: Path, net_id: str) -> int:
    """The responder's pid if it is alive (pid and start time both match), else 0."""
    from stockade.kernel.process import proc_start_time

    with contextlib.suppress(OSError, ValueError):
        pid, start = map(int, pid_file(runroot, net_id).read_text().split())
        if proc_start_time(pid) == start:
            return pid
    return 0


def ensure(runroot: Path, net_id: str, doc_path: Path, listen: str) -> None:
    """Start the network's responder unless it runs (the caller holds the networks lock)."""
    if running(runroot, net_id):
        return
    path = pid_file(runroot, net_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    upstreams = host_resolvers()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's life
        try:
            os.close(ready_r)
            os.setsid()
            if os.fork():
                os._exit(0)
            from stockade.kernel.process import detach_stdio, proc_start_time

            detach_stdio(keep=ready_w)
            responder = Responder(doc_path, listen, upstreams)

            path.write_text(f"{os.getpid()} {proc_start_time(os.getpid())}")
            os.write(ready_w, b"1")
            os.close(ready_w)
            responder.serve()
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(ready_w, f"0{exc}".encode())
        finally:
            os._exit(0)
    os.close(ready_w)
    os.waitpid(pid, 0)
    with os.fdopen(ready_r, "rb") as f:
        status = f.read().decode(errors="replace")
    if not status.startswith("1"):
        from stockade.network.config import NetworkError

        raise NetworkError(f"DNS responder on {listen}:53: {status[1:] or 'did not start'}")


def stop(runroot: Path, net_id: str) -> None:
    pid = running(runroot, net_id)
    if pid:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    with contextlib.suppress(OSError):
        pid_file(runroot, net_id).unlink()


def stop_all(runroot: Path) -> None:
    """Every responder of a run root (tests)."""
    with contextlib.suppress(OSError):
        for entry in os.listdir(runroot / "dns"):
            if entry.endswith(".pid"):
                stop(runroot, entry[:-4])
