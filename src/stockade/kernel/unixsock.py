"""Unix stream sockets by path, as raw descriptors (for console and seccomp-notify sockets)."""

from __future__ import annotations

import socket


def connect(path: str) -> int:
    """Connect to the listening socket at `path`; returns the fd. OSError names the path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, e.strerror, path) from None
    return sock.detach()
