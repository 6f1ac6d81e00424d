"""`stockade`: the Docker-style CLI. Images today (issue 5); containers arrive with the engine.

    stockade [--root DIR] [--debug] COMMAND ...

--root (or $STOCKADE_ROOT) is the data root, /var/lib/stockade for root; images live in
<root>/images. Errors print one line, `stockade: <what failed>: <why>`, and exit 1 (125 for a
usage error, as docker does); --debug adds the traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from stockade import __version__

USAGE = """usage: stockade [--root DIR] [--debug] COMMAND

Images:
  pull NAME              pull an image from a registry
  push NAME [DEST]       push an image to a registry
  images                 list images (REPOSITORY TAG IMAGE ID CREATED SIZE)
  history NAME           show an image's history
  tag SOURCE TARGET      add a name to an image
  rmi NAME...            remove images
  save -o FILE NAME...   write images to a docker-archive or oci-archive
  load -i FILE           load images from an archive
  import FILE [REF]      import a rootfs tarball as an image
  image inspect|ls|rm|prune|verify|build-base ...
  login / logout SERVER  store or remove registry credentials

Containers (also as `stockade container COMMAND`):
  run IMAGE [CMD...]     create and start a container (-d, -it, --rm, --name, -v, -e, ...)
  create / start / stop / restart / kill / rm / wait / pause / unpause / rename
  ps                     list containers (-a, -q, --filter, --format)
  logs CTR               show a container's output (-f, --tail, --since, -t)
  exec CTR CMD...        run a command in a running container (-it, -d, -u, -e, -w)
  attach CTR             attach to a running container (detach: Ctrl-P Ctrl-Q)
  inspect / top / stats / port / diff / cp / export / commit / container prune
  volume create|ls|inspect|rm|prune
  network create|ls|inspect|rm|prune|connect|disconnect

Other:
  version, info
"""


CONTAINER_SHORT_FORMS = {
    "run", "create", "start", "stop", "kill", "restart", "rm", "ps", "logs", "exec", "attach", "inspect", "wait",
    "pause", "unpause", "rename", "top", "stats", "port", "diff", "cp", "export", "commit",
}  # fmt: skip


def data_root(flag: str | None) -> Path:
    if flag:
        return Path(flag)
    env = os.environ.get("STOCKADE_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/stockade")
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "stockade"


NO_STORE_COMMANDS = {"version", "--version", "-v", "login", "logout"}


def _enter_rootless(root: Path) -> None:
    """A non-root user's commands run inside its rootless namespace (see engine/rootless.py),
    where it is uid 0: pin the paths chosen for the user first, for every process to come."""
    from stockade.engine import rootless
    from stockade.engine.lifecycle import runroot_for

    runroot = runroot_for(root)
    os.environ["STOCKADE_ROOT"] = str(root)
    os.environ["STOCKADE_RUNROOT"] = str(runroot)
    rootless.enter(runroot)


def _offer_commands_to_host() -> None:
    """A monitor host forked from this process will also serve whole commands to bin/stockade
    (see cli/served.py); a rootless user's host and its workers are in the user's namespace."""
    from stockade.cli import served
    from stockade.engine import host

    host.set_cli_handler(served.serve, served.warm_up, served.rehearse)


HOST_COMMANDS = CONTAINER_SHORT_FORMS | {"container", "network", "volume"}


def _start_host(root: Path) -> None:
    from stockade.engine import host
    from stockade.engine.lifecycle import runroot_for

    host.ensure_running(runroot_for(root))


def _split_globals(args: list[str]) -> tuple[str | None, bool, list[str]]:
    root, debug = None, False
    while args and args[0].startswith("-"):
        head = args.pop(0)
        if head == "--debug":
            debug = True
        elif head == "--root":
            if not args:
                raise SystemExit("stockade: --root needs a directory")
            root = args.pop(0)
        elif head.startswith("--root="):
            root = head.split("=", 1)[1]
        else:
            args.insert(0, head)
            break
    return root, debug, args


def dispatch(root: Path, args: list[str]) -> int:
    command, rest = args[0], args[1:]
    if command in ("container", "volume"):
        from stockade.cli import container

        if not rest or rest[0] in ("-h", "--help"):
            print(f"usage: stockade {command} COMMAND ... (see stockade --help)")
            return 0 if rest else 125
        return container.run(root, rest[0] if command == "container" else f"volume {rest[0]}", rest[1:])
    if command == "network":
        from stockade.cli import network

        if not rest or rest[0] in ("-h", "--help"):
            print("usage: stockade network create|ls|inspect|rm|prune|connect|disconnect ...")
            return 0 if rest else 125
        return network.run(root, rest[0], rest[1:])
    if command in CONTAINER_SHORT_FORMS:
        from stockade.cli import container

        return container.run(root, command, rest)
    from stockade.cli import image  # (after the container commands: it costs ~20 ms of imports)

    if command in ("version", "--version", "-v"):
        print(f"stockade version {__version__}")
        return 0
    if command == "info":
        from stockade.runtime.cgroups import detect_layout

        print(f"stockade {__version__}\ndata root: {root}\ncgroup layout: {detect_layout().kind}")
        return 0
    if command == "image":
        if not rest or rest[0] in ("-h", "--help"):
            print("usage: stockade image " + "|".join(image.SUBCOMMANDS) + " ...")
            return 0 if rest else 125
        return image.run(root / "images", rest[0], rest[1:])
    if command in image.SHORT_FORMS:
        return image.run(root / "images", image.SHORT_FORMS[command], rest)
    if command == "login":
        return image.cmd_login(rest)
    if command == "logout":
        return image.cmd_logout(rest)
    raise image.UsageError(f'unknown command "{command}" (see stockade --help)')


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    root_flag, debug, args = _split_globals(args)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 125
    from stockade.errors import StockadeError

    try:
        root = data_root(root_flag)
        # The store's files and directories get the modes a daemon's would: a caller's umask
        # of 077 would make container directories unreachable for the containers' own root.
        os.umask(0o022)
        if os.geteuid() != 0 and args[0] not in NO_STORE_COMMANDS:
            _enter_rootless(root)
        if "stockade.cli.served" not in sys.modules and args[0] not in NO_STORE_COMMANDS:
            _offer_commands_to_host()
            code = dispatch(root, args)
            if args[0] in HOST_COMMANDS and os.environ.get("STOCKADE_NO_HOST") != "1":
                _start_host(root)  # this command ran cold: the next ones need not
            return code
        return dispatch(root, args)
    except StockadeError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        from stockade.cli.common import UsageError

        print(f"stockade: {exc}", file=sys.stderr)
        return 125 if isinstance(exc, UsageError) else 1
    except BrokenPipeError:  # `stockade export CTR | head`: the reader left, nothing to report
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        return 141
    except OSError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        where = f" {exc.filename}" if exc.filename else ""
        print(f"stockade:{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stockade: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
