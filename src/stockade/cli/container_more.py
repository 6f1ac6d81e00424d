"""The rest of the container commands: top, stats, port, diff, cp, export, commit, container prune,
and `volume create|ls|inspect|rm|prune`."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from stockade.cli.common import UsageError, each, print_docs
from stockade.cli.container import _find, _parser
from stockade.cli.format import human_size, table
from stockade.engine.containers import Container, Containers, EngineError


def _runtime_state(root: Path, ctr: Container) -> Any:
    from stockade.engine import lifecycle
    from stockade.runtime.state import State

    if lifecycle.refresh(root, ctr).status() not in ("running", "paused"):
        raise EngineError(f"container {ctr.name} is not running")
    return State.load(str(lifecycle.runroot_for(root) / "runtime"), ctr.id)


def cmd_top(root: Path, argv: list[str]) -> int:
    from stockade.runtime.container import cgroup_manager

    p = _parser("stockade top")
    p.add_argument("container")
    p.add_argument("ps_args", nargs="*")
    args = p.parse_args(argv)
    manager = cgroup_manager(_runtime_state(root, _find(root, args.container)))
    pids = sorted(manager.pids()) if manager is not None else []
    if not pids:
        return 0
    options = args.ps_args or ["-f"]
    import subprocess  # (here, not at the top: see engine/host.py MONITOR_MODULES)

    result = subprocess.run(["ps", *options, "-p", ",".join(map(str, pids))], capture_output=True, text=True)
    if result.returncode not in (0, 1):
        raise EngineError(f"ps {' '.join(options)}: {result.stderr.strip()}")
    print(result.stdout, end="")
    return 0


def _stats_row(root: Path, ctr: Container, previous: dict[str, tuple[float, int]]) -> dict[str, str]:
    from stockade.runtime.container import cgroup_manager

    manager = cgroup_manager(_runtime_state(root, ctr))
    data = manager.stats() if manager is not None else {}
    cpu_total = int(data.get("cpu", {}).get("usage", {}).get("total", 0))
    now = time.monotonic()
    last_t, last_cpu = previous.get(ctr.id, (now, cpu_total))
    previous[ctr.id] = (now, cpu_total)
    cpu_pct = (cpu_total - last_cpu) / 1e9 / (now - last_t) * 100 if now > last_t else 0.0
    mem = data.get("memory", {}).get("usage", {})
    usage = int(mem.get("usage", 0)) - int(data.get("memory", {}).get("raw", {}).get("total_inactive_file", 0))
    limit = int(mem.get("limit", 0))
    if not limit or limit >= 1 << 62:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    blk = data.get("blkio", {}).get("ioServiceBytesRecursive") or []
    read = sum(int(e.get("value", 0)) for e in blk if str(e.get("op", "")).lower() == "read")
    written = sum(int(e.get("value", 0)) for e in blk if str(e.get("op", "")).lower() == "write")
    return {
        "ID": ctr.short_id, "Name": ctr.name, "CPUPerc": f"{cpu_pct:.2f}%",
        "MemUsage": f"{_binary(usage)} / {_binary(limit)}", "MemPerc": f"{usage / limit * 100:.2f}%",
        "NetIO": "0B / 0B", "BlockIO": f"{human_size(read)} / {human_size(written)}",
        "PIDs": str(data.get("pids", {}).get("current", 0)),
    }  # fmt: skip


def _binary(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.4g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return f"{n}B"


def cmd_stats(root: Path, argv: list[str]) -> int:
    p = _parser("stockade stats")
    p.add_argument("--no-stream", action="store_true")
    p.add_argument("--format", default="table")
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("containers", nargs="*")
    args = p.parse_args(argv)
    containers = [_find(root, c) for c in args.containers] or [
        c for c in Containers(root).all() if c.status() in ("running", "paused")
    ]
    previous: dict[str, tuple[float, int]] = {}
    for c in containers:  # a first sample, so CPU % is over an interval
        _stats_row(root, c, previous)
    while True:
        time.sleep(0.5 if args.no_stream else 1.0)
        rows = [_stats_row(root, c, previous) for c in containers]
        if args.format == "json":
            for r in rows:
                print(json.dumps(r))
        else:
            if not args.no_stream:
                print("\x1b[2J\x1b[H", end="")
            keys = ["ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO", "PIDs"]
            header = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O", "PIDS"]
            print(table(header, [[r[k] for k in keys] for r in rows]))
        sys.stdout.flush()
        if args.no_stream:
            return 0


def cmd_port(root: Path, argv: list[str]) -> int:
    p = _parser("stockade port")
    p.add_argument("container")
    p.add_argument("private", nargs="?")
    args = p.parse_args(argv)
    ctr = _find(root, args.container)
    from stockade.engine.networking import ports_column

    ports = ports_column(ctr) if ctr.running() else {}
    if args.private:
        key = args.private if "/" in args.private else args.private + "/tcp"
        if not ports.get(key):
            raise EngineError(f"no public port '{args.private}' published for {args.container}")
        for h in ports[key]:
            print(f"{h['HostIp']}:{h['HostPort']}")
        return 0
    for key, hosts in ports.items():
        for h in hosts or []:
            print(f"{key} -> {h['HostIp']}:{h['HostPort']}")
    return 0


def cmd_diff(root: Path, argv: list[str]) -> int:
    from stockade.engine.fs import diff

    p = _parser("stockade diff")
    p.add_argument("container")
    args = p.parse_args(argv)
    for kind, path in diff(_find(root, args.container)):
        print(f"{kind} {path}")
    return 0


def cmd_commit(root: Path, argv: list[str]) -> int:
    from stockade.engine import lifecycle
    from stockade.engine.fs import commit
    from stockade.runtime.container import cgroup_manager

    p = _parser("stockade commit")
    p.add_argument("-m", "--message", default="")
    p.add_argument("-a", "--author", default="")
    p.add_argument("-c", "--change", action="append", default=[])
    p.add_argument("-p", "--pause", default="true")
    p.add_argument("container")
    p.add_argument("repository", nargs="?")
    args = p.parse_args(argv)
    ctr = lifecycle.refresh(root, _find(root, args.container))
    manager = None
    if args.pause != "false" and ctr.status() == "running":  # a consistent snapshot, as docker's
        manager = cgroup_manager(_runtime_state(root, ctr))
        if manager is not None:
            manager.freeze(True)
    try:
        image_id = commit(root, ctr, args.repository, args.message, args.author, args.change)
    finally:
        if manager is not None:
            manager.freeze(False)
    print(image_id)
    return 0


def cmd_export(root: Path, argv: list[str]) -> int:
    from stockade.engine.fs import export

    p = _parser("stockade export")
    p.add_argument("-o", "--output")
    p.add_argument("container")
    args = p.parse_args(argv)
    ctr = _find(root, args.container)
    if args.output:
        tmp = args.output + ".tmp"
        try:
            with open(tmp, "wb") as f:
                export(root, ctr, f)
            os.rename(tmp, args.output)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return 0
    if sys.stdout.isatty():
        raise UsageError("cowardly refusing to write a tar to a terminal: use -o FILE or redirect")
    export(root, ctr, sys.stdout.buffer)
    return 0


def cmd_cp(root: Path, argv: list[str]) -> int:
    from stockade.engine.fs import copy_in, copy_out

    p = _parser("stockade cp")
    p.add_argument("-a", "--archive", action="store_true")
    p.add_argument("-L", "--follow-link", action="store_true")
    p.add_argument("source")
    p.add_argument("dest")
    args = p.parse_args(argv)

    def split(text: str) -> tuple[str | None, str]:
        head, sep, tail = text.partition(":")
        if sep and not head.startswith(("/", ".")) and "/" not in head:
            return head, tail or "/"
        return None, text

    src_ctr, src = split(args.source)
    dst_ctr, dst = split(args.dest)
    if (src_ctr is None) == (dst_ctr is None):
        raise UsageError(
            "cp: copying between containers or between host paths is not supported: one side must be CONTAINER:PATH"
        )
    if src_ctr is not None:
        copy_out(root, _find(root, src_ctr), src, dst)
    else:
        copy_in(root, _find(root, str(dst_ctr)), src, dst)
    return 0


def cmd_prune(root: Path, argv: list[str]) -> int:
    from stockade.engine import lifecycle

    p = _parser("stockade container prune")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("--filter", action="append", default=[])
    args = p.parse_args(argv)
    if not args.force and sys.stdin.isatty():
        answer = input("WARNING! This will remove all stopped containers.\nAre you sure you want to continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    print("Deleted Containers:")
    for ctr in Containers(root).all():
        if lifecycle.refresh(root, ctr).status() in ("exited", "created"):
            lifecycle.remove(root, ctr)
            print(ctr.id)
    return 0


# -- volumes --------------------------------------------------------------------------------
def cmd_volume_create(root: Path, argv: list[str]) -> int:
    from stockade.engine.options import parse_labels
    from stockade.engine.volumes import Volumes

    p = _parser("stockade volume create")
    p.add_argument("-l", "--label", action="append", default=[])
    p.add_argument("-d", "--driver", default="local")
    p.add_argument("name", nargs="?")
    args = p.parse_args(argv)
    if args.driver != "local":
        raise UsageError(f'volume driver "{args.driver}" is not supported (only local)')
    vol = Volumes(root).create(args.name, anonymous=False, labels=parse_labels(args.label, "--label"))
    print(vol.name)
    return 0


def cmd_volume_ls(root: Path, argv: list[str]) -> int:
    from stockade.engine.volumes import Volumes

    p = _parser("stockade volume ls")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--format", default="table")
    args = p.parse_args(argv)
    vols = Volumes(root).all()
    if args.quiet:
        for v in vols:
            print(v.name)
    elif args.format == "json":
        for v in vols:
            print(json.dumps(v.inspect()))
    else:
        print(table(["DRIVER", "VOLUME NAME"], [["local", v.name] for v in vols]))
    return 0


def cmd_volume_inspect(root: Path, argv: list[str]) -> int:
    from stockade.engine.volumes import Volumes

    p = _parser("stockade volume inspect")
    p.add_argument("-f", "--format")
    p.add_argument("names", nargs="+")
    args = p.parse_args(argv)
    print_docs([Volumes(root).get(n).inspect() for n in args.names], args.format)
    return 0


def cmd_volume_rm(root: Path, argv: list[str]) -> int:
    from stockade.engine.volumes import Volumes

    p = _parser("stockade volume rm")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("names", nargs="+")
    args = p.parse_args(argv)
    return each(args.names, Volumes(root).remove)


def cmd_volume_prune(root: Path, argv: list[str]) -> int:
    from stockade.engine.volumes import Volumes

    p = _parser("stockade volume prune")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("-a", "--all", action="store_true")
    args = p.parse_args(argv)
    vols = Volumes(root)
    print("Deleted Volumes:")
    for v in vols.all():
        if not v.meta.get("Users") and (args.all or v.meta.get("Anonymous")):
            vols.remove(v.name)
            print(v.name)
    return 0


COMMANDS: dict[str, Any] = {
    "top": cmd_top, "stats": cmd_stats, "port": cmd_port, "diff": cmd_diff, "commit": cmd_commit,
    "export": cmd_export, "cp": cmd_cp, "prune": cmd_prune,
    "volume create": cmd_volume_create, "volume ls": cmd_volume_ls, "volume list": cmd_volume_ls,
    "volume inspect": cmd_volume_inspect, "volume rm": cmd_volume_rm, "volume remove": cmd_volume_rm,
    "volume prune": cmd_volume_prune,
}  # fmt: skip
SHORT_FORMS = {"top", "stats", "port", "diff", "commit", "export", "cp"}
