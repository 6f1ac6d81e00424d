"""The monitor's socket protocol: frames of (kind: 1 byte, length: 4 bytes big-endian, payload).

client -> monitor: STDIN data, STDIN_EOF, RESIZE "rows cols", STOP {signal, timeout}, KILL {signal}
monitor -> client: STDOUT / STDERR data, STARTED {pid}, EXIT {code, oom}, ERROR text, OK
The first frame a client sends is HELLO {stdin, stdout, stderr}: what it wants attached.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

STDIN, STDOUT, STDERR, RESIZE, STDIN_EOF, EXIT, HELLO, STOP, KILL, STARTED, ERROR, OK = range(12)
HEADER = struct.Struct(">BI")


def frame(kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def json_frame(kind: int, data: Any) -> bytes:
    return frame(kind, json.dumps(data).encode())


class FrameReader:
    """Reassembles frames from whatever chunks the socket delivers."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buffer += data
        out = []
        while len(self.buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self.buffer)
            if len(self.buffer) < HEADER.size + length:
                break
            out.append((kind, self.buffer[HEADER.size : HEADER.size + length]))
            self.buffer = self.buffer[HEADER.size + length :]
        return out


def connect(path: str) -> socket.socket:
    """Connect to a unix socket whatever the length of its path (through an O_PATH fd)."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(f"/proc/self/fd/{fd}")
        except OSError:
            sock.close()
            raise
        return sock
    finally:
        os.close(fd)


def request(path: str, kind: int, data: Any, timeout: float | None = None) -> tuple[int, bytes]:
    """Send one control frame and wait for the monitor's first reply frame."""
    sock = connect(path)
    try:
        sock.settimeout(timeout)
        sock.sendall(json_frame(HELLO, {"stdin": False, "stdout": False, "stderr": False}))
        sock.sendall(json_frame(kind, data))
        reader = FrameReader()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return EXIT, b"{}"
            for kind_got, payload in reader.feed(chunk):
                if kind_got in (OK, EXIT, ERROR):
                    return kind_got, payload
    finally:
        sock.close()
