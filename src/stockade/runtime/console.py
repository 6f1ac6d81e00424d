"""A terminal for `run -t` / `exec -t` in the foreground without --console-socket.

As runc does then, the runtime itself receives the pty master (over a socketpair standing in
for the console socket) and copies between its own stdio and the container's terminal,
with our terminal in raw mode and window-size changes passed on, until the container's
side closes.
"""

from __future__ import annotations

import os
import select
import socket

from stockade.kernel import pty, signals


def our_terminal_size() -> tuple[int, int] | None:
    """(rows, columns) of the terminal on our stdin, to give the container's before it runs."""
    import struct

    if not os.isatty(0):
        return None
    rows, cols, _x, _y = struct.unpack("HHHH", pty.get_winsize(0))
    return (rows, cols) if rows and cols else None


class ConsoleProxy:
    def __init__(self) -> None:
        self._ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.child_end = theirs.detach()  # what the container's process sends the master on
        self.master = -1

    def receive_master(self) -> None:
        """After create: the container's process sent the master (create closed child_end)."""
        _msg, fds, _flags, _addr = socket.recv_fds(self._ours, 1024, 1)
        self._ours.close()
        if not fds:
            raise OSError(0, "no pty master received from the container")
        self.master = fds[0]

    def run(self) -> None:
        """Copy stdin -> master and master -> stdout until the container's side closes."""
        import termios
        import tty

        saved = None
        if os.isatty(0):
            saved = termios.tcgetattr(0)
            tty.setraw(0)
            self._resize()
            previous = signals.set_handler(signals.SIGWINCH, lambda _s, _f: self._resize())
        try:
            self._copy()
        finally:
            if saved is not None:
                termios.tcsetattr(0, termios.TCSADRAIN, saved)
                signals.set_handler(signals.SIGWINCH, previous)
            os.close(self.master)

    def _resize(self) -> None:
        try:
            pty.set_winsize(self.master, pty.get_winsize(0))
        except OSError:
            pass

    def _copy(self) -> None:
        inputs = [self.master, 0]
        while True:
            try:
                ready, _, _ = select.select(inputs, [], [])
            except InterruptedError:
                continue
            if self.master in ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: every slave fd is closed, the container is done
                    return
                if not data:
                    return
                os.write(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if not data:
                    inputs.remove(0)  # our stdin ended; keep showing output
                    continue
                os.write(self.master, data)
