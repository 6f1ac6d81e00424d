"""Commands run by the warm monitor host for bin/stockade's small client (see engine/host.py).

Why: a fresh interpreter that imports the CLI costs ~80 ms before any work; a fork of the host,
which has imported everything once, starts in about a millisecond. The client sends

    "cli 2\\n", then a 4-byte length and NUL-separated fields: cwd, argc, argv..., KEY=VALUE...
    with its stdin, stdout and stderr attached (SCM_RIGHTS)

and the worker answers its pid (4 bytes; the client relays SIGINT, SIGTERM, SIGHUP, SIGWINCH
to it) and, at the end, the exit status (4 bytes). The worker takes the client's descriptors,
directory and environment, so a command behaves exactly as if run in the client's process.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import sys

FIELD = b"\0"
MAX_REQUEST = 1 << 20


def serve(conn: socket.socket) -> None:
    """In a fresh fork of the host: run one command for the client on `conn`."""
    fds, payload = _receive(conn)
    _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if uid != os.geteuid() or len(fds) != 3:  # (the socket's directory admits only us anyway)
        return
    fields = payload.split(FIELD)
    cwd, argc = fields[0], int(fields[1])
    argv = [os.fsdecode(a) for a in fields[2 : 2 + argc]]
    env = dict(item.split(b"=", 1) for item in fields[2 + argc :] if b"=" in item)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    _new_stdio()
    os.chdir(cwd)
    pinned = _rootless_pins(env)
    os.environb.clear()
    os.environb.update(env)
    os.environ.update(pinned)
    conn.sendall(struct.pack("!i", os.getpid()))
    from stockade.engine import host

    host.serving_commands()
    if _starts_a_container(argv):
        host.prefork_monitor()
    code = _run(argv)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    _let_go_of_stdio()
    conn.sendall(struct.pack("!i", code))


def _starts_a_container(argv: list[str]) -> bool:
    words = [a for a in argv[:3] if not a.startswith("-")]
    if words[:1] == ["container"]:
        words = words[1:]
    return words[:1] in (["run"], ["start"], ["restart"])


def _rootless_pins(client_env: dict[bytes, bytes]) -> dict[str, str]:
    """A rootless host's workers are uid 0 in the user's namespace: the variables that tell the
    CLI it works for that user (cli/main.py's _enter_rootless), the data root defaulting to
    the user's XDG directory as the client's own CLI would have chosen it."""
    from stockade.engine import rootless

    if not rootless.active():
        return {}
    pins = {rootless.ENV: "1", "STOCKADE_RUNROOT": os.environ["STOCKADE_RUNROOT"]}
    if b"STOCKADE_ROOT" not in client_env:
        home = client_env.get(b"HOME", b"").decode(errors="surrogateescape")
        data = client_env.get(b"XDG_DATA_HOME", b"").decode(errors="surrogateescape") or f"{home}/.local/share"
        pins["STOCKADE_ROOT"] = f"{data}/stockade"
    return pins


def _receive(conn: socket.socket) -> tuple[list[int], bytes]:
    conn.settimeout(5)
    head, ancillary, _flags, _addr = conn.recvmsg(4, socket.CMSG_SPACE(3 * 4))
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(data[i : i + 4], sys.byteorder) for i in range(0, len(data) - len(data) % 4, 4)]
    if len(head) != 4:
        raise OSError("command request cut short")
    size = struct.unpack("!i", head)[0]
    if not 0 <= size <= MAX_REQUEST:
        raise OSError("command request too large")
    payload = b""
    while len(payload) < size:
        chunk = conn.recv(size - len(payload))
        if not chunk:
            raise OSError("command request cut short")
        payload += chunk
    conn.settimeout(None)
    return fds, payload


def _let_go_of_stdio() -> None:
    """/dev/null over the client's descriptors before it hears the status: a caller reading the
    client's output through pipes (subprocess.run, $(...)) sees their end when the client
    exits, not once this worker's exit has unmapped its memory (~1-3 ms later)."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _new_stdio() -> None:
    """Text streams over the client's descriptors, buffered as the interpreter would have made
    them for it (line-buffered on a terminal)."""
    sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False), errors="surrogateescape")  # noqa: SIM115
    for fd, name in ((1, "stdout"), (2, "stderr")):
        raw = open(fd, "wb", closefd=False)  # noqa: SIM115 (stdio for the rest of the process)
        tty = os.isatty(fd)
        wrapper = io.TextIOWrapper(raw, errors="backslashreplace" if fd == 2 else "surrogateescape",
                                   line_buffering=tty or fd == 2, write_through=fd == 2)  # fmt: skip
        setattr(sys, name, wrapper)


def _run(argv: list[str]) -> int:
    from stockade.cli.main import main

    sys.argv = ["stockade", *argv]
    try:
        return int(main(argv) or 0)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def rehearse() -> None:
    """In a spare worker, before its command comes (engine/host.py): the common part of a
    `run` once, pure functions only (nothing read or written), so that its first writes to the
    pages it shares with the host, each a page fault and a copy, happen now: ~3 ms of a run."""
    import json

    from stockade.cli.container import _request, create_parser
    from stockade.engine.idranges import IDMap
    from stockade.engine.plan import container_config
    from stockade.spec.image import parse_config

    _new_stdio()  # (over the spare's own /dev/null: the command's replace them)
    env = dict(os.environb)
    os.environb.clear()
    os.environb.update(env)
    args = create_parser(run=True).parse_args(["--rm", "--network", "none", "image", "true"])
    image = parse_config({"rootfs": {"type": "layers", "diff_ids": []}, "config": {"Cmd": ["sh"]}}, "rehearsal")
    config = container_config(image, _request(args).run, IDMap(1 << 20, 1 << 20, 65536), dict(os.environ))
    json.dumps(config, separators=(",", ":"))


def warm_up() -> None:
    """Once, in the host: everything a command may import, so that workers start warm."""
    import argparse  # noqa: F401

    import stockade.cli.attach
    import stockade.cli.container
    import stockade.cli.container_more
    import stockade.cli.format
    import stockade.cli.image
    import stockade.cli.main
    import stockade.cli.network
    import stockade.engine.execute
    import stockade.engine.rootless
    import stockade.spec.profiles

    stockade.cli.container.create_parser(run=True)
    stockade.cli.container.create_parser(run=False)
