"""The sync channel between the runtime (parent) and the container's set-up processes (children).

Two pipes, one message per line: `<NAME> <argument>`. Pipes rather than a socketpair keep
`socket` (8 ms of imports) off the start-up path. Every named sync point of the set-up
sequence is one of the constants below; an `error` message carries the child's one-line
failure and ends the exchange.
"""

from __future__ import annotations

import os

# child -> parent
USERNS_READY = "userns-ready"  # the child unshared its user namespace: write the ID maps
INIT_PID = "init-pid"  # the intermediate child forked the container's init (pid in the parent's pidns)
RUN_CREATE_HOOKS = "run-create-hooks"  # mounts are ready: run prestart/createRuntime hooks now
CREATED = "created"  # init is set up and waits on the exec fifo
ERROR = "error"
# parent -> child
MAPS_WRITTEN = "maps-written"  # ID maps are in place: go on
INIT_KNOWN = "init-known"  # the parent has the init's pid: the init may speak (the pipe is shared)
CREATE_HOOKS_DONE = "create-hooks-done"


class ChildFailed(Exception):
    """The other side reported an error or died before the expected message."""


class Channel:
    """One end of the two-pipe channel: `rfd` to read from, `wfd` to write to."""

    __slots__ = ("_buf", "rfd", "wfd")

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self._buf = b""

    def send(self, name: str, arg: str = "") -> None:
        line = f"{name} {arg}".rstrip().replace("\n", " ") + "\n"
        try:
            os.write(self.wfd, line.encode())
        except BrokenPipeError:
            # The other side is gone; it may have said why before it went.
            got, why = self.recv()
            raise ChildFailed(why if got == ERROR else "") from None

    def recv(self) -> tuple[str, str]:
        while b"\n" not in self._buf:
            chunk = os.read(self.rfd, 4096)
            if not chunk:
                raise ChildFailed("")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        name, _, arg = line.decode(errors="replace").partition(" ")
        return name, arg

    def expect(self, name: str) -> str:
        """Wait for `name`; an `error` message or EOF raises ChildFailed with the reason."""
        got, arg = self.recv()
        if got == ERROR:
            raise ChildFailed(arg)
        if got != name:
            raise ChildFailed(f"protocol error: expected {name}, got {got}")
        return arg

    def close(self) -> None:
        for fd in (self.rfd, self.wfd):
            try:
                os.close(fd)
            except OSError:
                pass


def channel_pair() -> tuple[Channel, Channel]:
    """(parent end, child end); all four descriptors are close-on-exec."""
    down_r, down_w = os.pipe2(os.O_CLOEXEC)
    up_r, up_w = os.pipe2(os.O_CLOEXEC)
    return Channel(up_r, down_w), Channel(down_r, up_w)
