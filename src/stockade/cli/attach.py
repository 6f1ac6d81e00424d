"""The CLI's end of an attached container: our stdin to it, its output to our stdout/stderr,
our terminal in raw mode with window-size changes passed on, and the detach keys
(Ctrl-P Ctrl-Q by default) that leave it running."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
from typing import Any

from stockade.engine import stream
from stockade.errors import StockadeError

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
DETACHED = -1


def parse_detach_keys(text: str) -> bytes:
    """Docker's syntax: comma-separated `ctrl-<x>` or single characters; "" disables."""
    out = b""
    for key in filter(None, text.split(",")):
        key = key.strip()
        if key.startswith("ctrl-") and len(key) == 6:
            c = key[5].lower()
            codes = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}
            code = ord(c) - ord("a") + 1 if "a" <= c <= "z" else codes.get(c)
            if code is None:
                raise StockadeError(f'--detach-keys: invalid key "{key}"')
            out += bytes([code])
        elif len(key) == 1:
            out += key.encode()
        else:
            raise StockadeError(f'--detach-keys: invalid key "{key}" (use ctrl-<value> or a single character)')
    return out


def terminal_size() -> list[int] | None:
    from stockade.kernel import pty

    for fd in (0, 1):
        if os.isatty(fd):
            rows, cols, _x, _y = struct.unpack("HHHH", pty.get_winsize(fd))
            if rows and cols:
                return [rows, cols]
    return None


class Session:
    def __init__(
        self, sock: socket.socket, reader: stream.FrameReader, stdin: bool, tty: bool, detach_keys: bytes
    ) -> None:
        self.sock = sock
        self.reader = reader
        self.stdin = stdin
        self.tty = tty
        self.keys = detach_keys if stdin else b""
        self.matched = b""

    def run(self, pending: list[tuple[int, bytes]] | None = None) -> int:
        """Until EXIT (the container's exit code) or detach (DETACHED)."""
        saved = None
        previous: Any = None
        if self.tty and self.stdin and os.isatty(0):
            import termios
            import tty

            from stockade.kernel import signals

            saved = termios.tcgetattr(0)
            tty.setraw(0, termios.TCSANOW)  # not TCSAFLUSH: keep what was typed ahead
            previous = signals.set_handler(signals.SIGWINCH, lambda _s, _f: self._resize())
        try:
            for kind, payload in pending or []:
                code = self._frame(kind, payload)
                if code is not None:
                    return code
            return self._loop()
        finally:
            if saved is not None:
                import termios

                from stockade.kernel import signals

                termios.tcsetattr(0, termios.TCSADRAIN, saved)
                signals.set_handler(signals.SIGWINCH, previous)

    def _resize(self) -> None:
        size = terminal_size()
        if size:
            with contextlib.suppress(OSError):
                self.sock.sendall(stream.json_frame(stream.RESIZE, size))

    def _loop(self) -> int:
        inputs = [self.sock.fileno()] + ([0] if self.stdin else [])
        while True:
            try:
                ready, _, _ = select.select(inputs, [], [])
            except InterruptedError:
                continue
            if 0 in ready:
                data = os.read(0, 65536)
                if not data:
                    inputs.remove(0)
                    self.sock.sendall(stream.frame(stream.STDIN_EOF))
                else:
                    data, detach = self._scan(data)
                    if data:
                        self.sock.sendall(stream.frame(stream.STDIN, data))
                    if detach:
                        return DETACHED
            if self.sock.fileno() in ready:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return 255  # the monitor went away without an exit status
                for kind, payload in self.reader.feed(chunk):
                    code = self._frame(kind, payload)
                    if code is not None:
                        return code

    def _scan(self, data: bytes) -> tuple[bytes, bool]:
        """Pass input through, holding back a prefix of the detach keys until it completes."""
        if not self.keys:
            return data, False
        out = b""
        for byte in data:
            b = bytes([byte])
            if self.keys[len(self.matched) : len(self.matched) + 1] == b:
                self.matched += b
                if self.matched == self.keys:
                    return out, True
                continue
            out += self.matched + b
            self.matched = b""
        return out, False

    def _frame(self, kind: int, payload: bytes) -> int | None:
        if kind == stream.STDOUT:
            _write_all(1, payload)
        elif kind == stream.STDERR:
            _write_all(2, payload)
        elif kind == stream.EXIT:
            return int(json.loads(payload).get("code", 0))
        elif kind == stream.ERROR:
            raise StockadeError(payload.decode(errors="replace"))
        return None


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        data = data[n:]
