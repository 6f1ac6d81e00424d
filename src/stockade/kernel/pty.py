"""Pseudo-terminals: a master/slave pair from a given devpts instance, and fd passing."""

from __future__ import annotations

import fcntl
import os
import struct
import termios

TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441
TIOCSCTTY = 0x540E


def open_pty(ptmx: str = "/dev/ptmx") -> tuple[int, int]:
    """Open a new pty on the devpts instance behind `ptmx`; returns (master, slave).

    The slave is opened through the master (TIOCGPTPEER) rather than by path, so it is
    always the peer of this master even if /dev/pts is not what it seems."""
    master = os.open(ptmx, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    except OSError as e:
        os.close(master)
        raise OSError(e.errno, f"open pty on {ptmx}: {os.strerror(e.errno or 0)}") from None
    return master, slave


def make_controlling_tty(fd: int) -> None:
    fcntl.ioctl(fd, TIOCSCTTY, 0)


def get_winsize(fd: int) -> bytes:
    return fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)


def set_winsize(fd: int, winsize: bytes) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, winsize)
