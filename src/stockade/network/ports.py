"""Host ports for published container ports: reserved by binding them (not listening) in the
monitor for as long as the container runs. A port another program or container already holds
fails here, with a clear error, before the container starts; `-p 80` gets a free port from the
kernel's ephemeral range. The DNAT rules send the traffic on before it reaches these sockets."""

from __future__ import annotations

import contextlib
import errno
import socket

from stockade.network.config import NetworkError, PortBinding

_KIND = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}


def reserve(bindings: list[PortBinding]) -> tuple[list[PortBinding], list[socket.socket]]:
    held: list[socket.socket] = []
    resolved: list[PortBinding] = []
    try:
        for b in bindings:
            if b.proto not in _KIND:  # sctp: nothing to hold it with
                resolved.append(b)
                continue
            sock = socket.socket(socket.AF_INET, _KIND[b.proto])
            held.append(sock)
            try:
                sock.bind((b.host_ip or "0.0.0.0", b.host_port))
            except OSError as exc:
                where = f"{b.host_ip or '0.0.0.0'}:{b.host_port or '(any)'}/{b.proto}"
                if exc.errno == errno.EADDRINUSE:
                    raise NetworkError(f"Bind for {where} failed: port is already allocated") from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise NetworkError(f"Bind for {where} failed: {b.host_ip} is not an address of this host") from None
                raise NetworkError(f"Bind for {where} failed: {exc.strerror}") from None
            resolved.append(PortBinding(b.container_port, b.proto, b.host_ip, sock.getsockname()[1]))
    except BaseException:
        release(held)
        raise
    return resolved, held


def release(held: list[socket.socket]) -> None:
    for sock in held:
        with contextlib.suppress(OSError):
            sock.close()
