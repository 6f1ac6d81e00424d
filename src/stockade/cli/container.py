"""`stockade run|create|start|stop|kill|restart|rm|ps|logs|exec|attach|inspect|wait|...` and the
`stockade container ...` long forms, with Docker's flags, columns and exit codes:
125 when stockade itself fails, 126 when the command cannot be invoked, 127 when it is not found,
otherwise the container's own exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from stockade.cli.common import UsageError, _go_template, _Parser, each, print_docs
from stockade.cli.format import human_ago, parse_time, table
from stockade.engine.containers import Container, Containers, EngineError
from stockade.errors import StockadeError


class CommandFailed(StockadeError):
    """A failure whose exit code is not 1 (Docker's 125/126/127)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _parser(prog: str, add_help: bool = True) -> _Parser:
    return _Parser(prog=prog, add_help=add_help)


def _find(root: Path, text: str) -> Container:
    return Containers(root).find(text)


# -- run / create ---------------------------------------------------------------------------
def _add_create_flags(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--help", action="help")
    a("--name")
    a("-i", "--interactive", action="store_true")
    a("-t", "--tty", action="store_true")
    a("-e", "--env", action="append", default=[])
    a("--env-file", action="append", default=[])
    a("-w", "--workdir")
    a("-u", "--user")
    a("--entrypoint")
    a("-h", "--hostname", default="")
    a("-v", "--volume", action="append", default=[])
    a("--mount", action="append", default=[])
    a("--tmpfs", action="append", default=[])
    a("-p", "--publish", action="append", default=[])
    a("-P", "--publish-all", action="store_true")
    a("--network", "--net", action="append", default=[])
    a("--ip", default="")
    a("--network-alias", "--net-alias", action="append", default=[])
    a("--dns", action="append", default=[])
    a("--add-host", action="append", default=[])
    a("-m", "--memory")
    a("--memory-swap")
    a("--cpus", type=float, default=0.0)
    a("-c", "--cpu-shares", type=int, default=0)
    a("--cpuset-cpus", default="")
    a("--pids-limit", type=int)
    a("--ulimit", action="append", default=[])
    a("--init", action="store_true")
    a("--restart", default="no")
    a("--stop-signal", default="SIGTERM")
    a("--stop-timeout", type=int, default=10)
    a("-l", "--label", action="append", default=[])
    a("--annotation", action="append", default=[])
    a("--log-opt", action="append", default=[])
    a("--cap-add", action="append", default=[])
    a("--cap-drop", action="append", default=[])
    a("--security-opt", action="append", default=[])
    a("--privileged", action="store_true")
    a("--userns", default="")
    a("--read-only", action="store_true")
    a("--rm", action="store_true")
    a("--runtime", default="")
    a("--pull", default="missing")
    a("image")
    a("command", nargs=argparse.REMAINDER)


def _request(args: argparse.Namespace) -> Any:
    from stockade.engine import options as o
    from stockade.engine.plan import RunOptions

    env = []
    for path in args.env_file:
        try:
            env += o.parse_env_file(Path(path).read_text(), path)
        except OSError as exc:
            raise UsageError(f"--env-file {path}: {exc.strerror}") from None
    env += args.env
    entrypoint = None
    if args.entrypoint is not None:
        entrypoint = [args.entrypoint] if args.entrypoint else []
    run = RunOptions(
        command=list(args.command), entrypoint=entrypoint, env=env, workdir=args.workdir, user=args.user,
        hostname=args.hostname, tty=args.tty, read_only=args.read_only,
    )  # fmt: skip
    from stockade.network.config import check_add_host, check_dns, parse_publish

    publish = [b for spec in args.publish for b in parse_publish(spec)]
    mounts = [o.parse_volume(v) for v in args.volume]
    for m in args.mount:
        req = o.parse_mount(m)
        if req.type == "bind":
            req.options = ["--mount"]  # a missing source is an error for --mount, as in docker
        mounts.append(req)
    mounts += [o.parse_tmpfs(t) for t in args.tmpfs]
    log = o.parse_labels(args.log_opt, "--log-opt")
    unknown = set(log) - {"max-size", "max-file"}
    if unknown:
        raise UsageError(f'--log-opt: unknown option "{sorted(unknown)[0]}" (json-file takes max-size, max-file)')
    memory_swap = 0
    if args.memory_swap:
        memory_swap = -1 if args.memory_swap == "-1" else o.parse_size(args.memory_swap, "--memory-swap")
    return o.CreateRequest(
        image=args.image, run=run, name=args.name, interactive=args.interactive, mounts=mounts,
        memory=o.parse_size(args.memory, "--memory") if args.memory else 0, memory_swap=memory_swap,
        cpus=args.cpus, cpu_shares=args.cpu_shares, cpuset_cpus=args.cpuset_cpus, pids_limit=args.pids_limit,
        ulimits=[o.parse_ulimit(u) for u in args.ulimit], init=args.init, restart=args.restart,
        stop_signal=args.stop_signal, stop_timeout=args.stop_timeout,
        labels=o.parse_labels(args.label, "--label"), annotations=o.parse_labels(args.annotation, "--annotation"),
        log_max_size=o.parse_size(log["max-size"], "--log-opt max-size") if "max-size" in log else 0,
        log_max_file=int(log.get("max-file", "1")) if log.get("max-file", "1").isdigit() else _bad("--log-opt max-file"),
        cap_add=args.cap_add, cap_drop=args.cap_drop, security_opt=args.security_opt, privileged=args.privileged,
        userns=args.userns, auto_remove=args.rm, runtime=args.runtime,
        networks=[n for spec in args.network for n in spec.split(",") if n], publish=publish,
        publish_all=args.publish_all, ip=args.ip, aliases=args.network_alias,
        dns=[check_dns(d) for d in args.dns], add_hosts=[check_add_host(h) for h in args.add_host],
    )  # fmt: skip


def _bad(what: str) -> int:
    raise UsageError(f"{what}: must be a positive integer")


def _create(root: Path, args: argparse.Namespace) -> Container:
    from stockade.engine.create import create

    request = _request(args)
    try:
        return create(root, request)
    except StockadeError as exc:
        raise CommandFailed(str(exc), 125) from None


_PARSERS: dict[str, _Parser] = {}


def create_parser(run: bool) -> _Parser:
    """The parser of `run` or `create` (~60 flags: ~5 ms to build), built once per process;
    the monitor host builds both before it serves commands (cli/served.py)."""
    name = "run" if run else "create"
    if name not in _PARSERS:
        p = _parser(f"stockade {name}", add_help=False)
        _add_create_flags(p)
        if run:
            p.add_argument("-d", "--detach", action="store_true")
            p.add_argument("--detach-keys")
            p.add_argument("-a", "--attach", action="append", default=[])
        _PARSERS[name] = p
    return _PARSERS[name]


def cmd_create(root: Path, argv: list[str]) -> int:
    ctr = _create(root, create_parser(run=False).parse_args(argv))
    print(ctr.id)
    return 0


def cmd_run(root: Path, argv: list[str]) -> int:
    args = create_parser(run=True).parse_args(argv)
    if args.privileged:
        print(
            "stockade: warning: --privileged: no user namespace, all capabilities, no seccomp, host devices",
            file=sys.stderr,
        )
    if args.detach and args.rm and args.restart not in ("no", ""):
        raise UsageError("--rm and --restart cannot be used together")
    ctr = _create(root, args)
    if args.detach:
        _start_detached(root, ctr)
        print(ctr.id)
        return 0
    return _start_attached(root, ctr, stdin=args.interactive, detach_keys=args.detach_keys)


def _start_detached(root: Path, ctr: Container) -> None:
    from stockade.engine import lifecycle, stream

    sock = lifecycle.start(root, ctr, {"stdin": False, "stdout": False, "stderr": False})
    with sock:
        try:
            lifecycle.await_start(sock, stream.FrameReader())
        except lifecycle.StartFailed as exc:
            raise CommandFailed(str(exc), _start_code(ctr)) from None


def _start_code(ctr: Container) -> int:
    code = int(ctr.reload().state.get("ExitCode", 125))
    return code if code in (126, 127) else 125


def _start_attached(root: Path, ctr: Container, stdin: bool, detach_keys: str | None) -> int:
    from stockade.cli.attach import DEFAULT_DETACH_KEYS, DETACHED, Session, parse_detach_keys, terminal_size
    from stockade.engine import lifecycle, stream

    tty = bool(ctr.record["Config"]["Tty"])
    keys = parse_detach_keys(DEFAULT_DETACH_KEYS if detach_keys is None else detach_keys)
    hello: dict[str, object] = {"stdin": stdin, "stdout": True, "stderr": True}
    if tty:
        hello["resize"] = terminal_size() or [24, 80]
    sock = lifecycle.start(root, ctr, hello)
    reader = stream.FrameReader()
    with sock:
        try:
            _pid, pending = lifecycle.await_start(sock, reader)
        except lifecycle.StartFailed as exc:
            raise CommandFailed(str(exc), _start_code(ctr)) from None
        code = Session(sock, reader, stdin, tty, keys).run(pending)
    if code == DETACHED:
        return 0
    return code


def cmd_start(root: Path, argv: list[str]) -> int:
    p = _parser("stockade start")
    p.add_argument("-a", "--attach", action="store_true")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("--detach-keys")
    p.add_argument("containers", nargs="+")
    args = p.parse_args(argv)
    if args.attach and len(args.containers) > 1:
        raise UsageError("you cannot start and attach multiple containers at once")
    failed = 0
    for text in args.containers:
        try:
            ctr = _find(root, text)
            if args.attach:
                return _start_attached(root, ctr, args.interactive, args.detach_keys)
            if ctr.reload().status() in ("running", "paused"):
                print(text)
                continue
            _start_detached(root, ctr)
            print(text)
        except StockadeError as exc:
            print(f"stockade: {exc}", file=sys.stderr)
            failed = 1
    return failed


def _each(root: Path, names: list[str], action: Any) -> int:
    return each(names, lambda text: action(_find(root, text)))


def cmd_stop(root: Path, argv: list[str]) -> int:
    from stockade.engine import lifecycle

    p = _parser("stockade stop")
    p.add_argument("-t", "--time", "--timeout", type=int, dest="timeout")
    p.add_argument("-s", "--signal")
    p.add_argument("containers", nargs="+")
    args = p.parse_args(argv)
    return _each(root, args.containers, lambda c: lifecycle.stop(root, c, args.timeout, args.signal))


def cmd_kill(root: Path, argv: list[str]) -> int:
    from stockade.engine import lifecycle

    p = _parser("stockade kill")
    p.add_argument("-s", "--signal", default="SIGKILL")
    p.add_argument("containers", nargs="+")
    args = p.parse_args(argv)
    return _each(root, args.containers, lambda c: lifecycle.kill(root, c, args.signal))


def cmd_restart(root: Path, argv: list[str]) -> int:
    from stockade.engine import lifecycle

    p = _parser("stockade restart")
    p.add_argument("-t", "--time", "--timeout", type=int, dest="timeout")
    p.add_argument("containers", nargs="+")
    args = p.parse_args(argv)

    def restart(c: Container) -> None:
        lifecycle.stop(root, c, args.timeout)
        lifecycle._wait_monitor_exit(c, 15)
        _start_detached(root, c)

    return _each(root, args.containers, restart)


def cmd_rm(root: Path, argv: list[str]) -> int:
    from stockade.engine import lifecycle

    p = _parser("stockade rm")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("-v", "--volumes", action="store_true")
    p.add_argument("containers", nargs="+")
    args = p.parse_args(argv)
    return _each(root, args.containers, lambda c: lifecycle.remove(root, c, args.force, args.volumes))


def cmd_wait(root: Path, argv: list[str]) -> int:
    from stockade.engine import lifecycle

    p = _parser("stockade wait")
    p.add_argument("containers", nargs="+")
    args = p.parse_args(argv)
    for text in args.containers:
        print(lifecycle.wait_exit(root, _find(root, text)))
    return 0


def cmd_pause(root: Path, argv: list[str], on: bool = True) -> int:
    from stockade.engine import lifecycle
    from stockade.runtime.container import cgroup_manager
    from stockade.runtime.state import State

    p = _parser("stockade pause" if on else "stockade unpause")
    p.add_argument("containers", nargs="+")
    args = p.parse_args(argv)

    def freeze(c: Container) -> None:
        status = lifecycle.refresh(root, c).status()
        if on and status != "running":
            raise EngineError(f"container {c.name} is not running")
        if not on and status != "paused":
            raise EngineError(f"container {c.name} is not paused")
        manager = cgroup_manager(State.load(str(lifecycle.runroot_for(root) / "runtime"), c.id))
        if manager is None:
            raise EngineError(f"container {c.name} has no cgroup to freeze")
        manager.freeze(on)

    return _each(root, args.containers, freeze)


def cmd_rename(root: Path, argv: list[str]) -> int:
    from stockade.engine.names import check_name

    p = _parser("stockade rename")
    p.add_argument("container")
    p.add_argument("new_name")
    args = p.parse_args(argv)
    containers = Containers(root)
    new = check_name(args.new_name)
    with containers.names_lock():
        ctr = containers.find(args.container)
        owner = containers.name_owner(new)
        if owner is not None:
            raise EngineError(f'name "{new}" is already in use by container {owner.id[:12]}')
        ctr.record["Name"] = "/" + new
        ctr.save_record()
    return 0


# -- ps / inspect -----------------------------------------------------------------------------
def status_text(ctr: Container, now: float | None = None) -> str:
    status = ctr.status()
    state = ctr.state
    if status in ("running", "paused"):
        up = human_ago(parse_time(state.get("StartedAt", "")), now).removesuffix(" ago")
        return f"Up {up}" + (" (Paused)" if status == "paused" else "")
    if status == "restarting":
        return f"Restarting ({state.get('ExitCode', 0)}) {human_ago(parse_time(state.get('FinishedAt', '')), now)}"
    if status == "exited":
        return f"Exited ({state.get('ExitCode', 0)}) {human_ago(parse_time(state.get('FinishedAt', '')), now)}"
    return status.capitalize()


def command_text(ctr: Container) -> str:
    args = [ctr.record.get("Path", ""), *ctr.record.get("Args", [])]
    return " ".join(a for a in args if a)


def _ports_text(ctr: Container) -> str:
    if not (ctr.dir / "network.json").exists() or not ctr.running():
        return ""
    from stockade.engine.networking import ports_column
    from stockade.network.config import format_ports

    return format_ports(ports_column(ctr))


def _image_text(ctr: Container) -> str:
    return str(ctr.record.get("ImageName") or ctr.record["Image"])


def inspect_doc(root: Path, ctr: Container) -> dict[str, Any]:
    from stockade.engine import lifecycle

    lifecycle.refresh(root, ctr)
    status, state = ctr.status(), ctr.state
    doc = dict(ctr.record)
    doc.pop("ImageManifest", None)
    doc["State"] = {
        "Status": status,
        "Running": status in ("running", "paused"),
        "Paused": status == "paused",
        "Restarting": status == "restarting",
        "OOMKilled": bool(state.get("OOMKilled")),
        "Dead": False,
        "Pid": int(state.get("Pid", 0)) if status in ("running", "paused") else 0,
        "ExitCode": int(state.get("ExitCode", 0)),
        "Error": state.get("Error", ""),
        "StartedAt": state.get("StartedAt", "0001-01-01T00:00:00Z"),
        "FinishedAt": state.get("FinishedAt", "0001-01-01T00:00:00Z"),
    }
    doc["RestartCount"] = int(state.get("RestartCount", 0))
    doc["LogPath"] = str(ctr.log_path)
    doc["Mounts"] = [_mount_doc(root, m) for m in ctr.record["HostConfig"].get("Mounts", [])]
    doc["NetworkSettings"] = _network_doc(ctr, status in ("running", "paused"))
    doc["GraphDriver"] = {
        "Name": "overlay",
        "Data": {"UpperDir": str(ctr.dir / "upper"), "WorkDir": str(ctr.dir / "work"),
                 "MergedDir": str(ctr.dir / "rootfs"), "IDMapping": state.get("IDMapping", "")},
    }  # fmt: skip
    return doc


def _network_doc(ctr: Container, running: bool) -> dict[str, Any]:
    """Docker's NetworkSettings: what was asked (the record) filled with what was got."""
    from stockade.engine import networking

    got = networking.settings(ctr) if running else {}
    networks = {}
    for name, asked in (ctr.record.get("NetworkSettings", {}).get("Networks") or {}).items():
        have = (got.get("Networks") or {}).get(name, {})
        networks[name] = {
            "IPAMConfig": asked.get("IPAMConfig"), "Links": None, "Aliases": asked.get("Aliases") or None,
            "NetworkID": asked.get("NetworkID", ""), "EndpointID": have.get("EndpointID", ""),
            "Gateway": have.get("Gateway", ""), "IPAddress": have.get("IPAddress", ""),
            "IPPrefixLen": have.get("IPPrefixLen", 0), "IPv6Gateway": have.get("IPv6Gateway", ""),
            "GlobalIPv6Address": have.get("GlobalIPv6Address", ""),
            "GlobalIPv6PrefixLen": have.get("GlobalIPv6PrefixLen", 0), "MacAddress": have.get("MacAddress", ""),
            "DNSNames": [ctr.name, ctr.short_id, *(asked.get("Aliases") or [])] if have else None,
        }  # fmt: skip
    first = next(iter(networks.values()), {})
    if not first and got.get("UserNet"):  # rootless: pasta / slirp4netns
        first = {"IPAddress": got.get("IPAddress", ""), "Gateway": got.get("Gateway", "")}
    pid = int(ctr.state.get("Pid", 0)) if running else 0
    doc = {
        "Bridge": "", "SandboxID": "", "SandboxKey": f"/proc/{pid}/ns/net" if pid else "",
        "Ports": got.get("Ports") or {}, "HairpinMode": False,
        "IPAddress": first.get("IPAddress", ""), "IPPrefixLen": first.get("IPPrefixLen", 0),
        "Gateway": first.get("Gateway", ""), "MacAddress": first.get("MacAddress", ""),
        "GlobalIPv6Address": first.get("GlobalIPv6Address", ""),
        "GlobalIPv6PrefixLen": first.get("GlobalIPv6PrefixLen", 0), "IPv6Gateway": first.get("IPv6Gateway", ""),
        "Networks": networks,
    }  # fmt: skip
    rootless_net = ctr.record.get("NetworkSettings", {}).get("RootlessNetwork")
    if rootless_net:  # which helper and why (not in Docker's document: podman shows it in its own way)
        doc["RootlessNetwork"] = {**rootless_net, "Pid": (got.get("UserNet") or {}).get("Pid", 0)}
    return doc


def _mount_doc(root: Path, m: dict[str, Any]) -> dict[str, Any]:
    out = {"Type": m["Type"], "Destination": m["Target"], "RW": not m.get("ReadOnly"), "Mode": ""}
    if m["Type"] == "volume":
        out.update(Name=m["Source"], Source=str(root / "volumes" / m["Source"] / "_data"), Driver="local")
    else:
        out["Source"] = m.get("Source", "")
    return out


def cmd_inspect(root: Path, argv: list[str]) -> int:
    p = _parser("stockade inspect")
    p.add_argument("-f", "--format")
    p.add_argument("-s", "--size", action="store_true")
    p.add_argument("--type", default="")
    p.add_argument("names", nargs="+")
    args = p.parse_args(argv)
    docs, failed = [], 0
    for text in args.names:
        try:
            if args.type == "image":
                raise EngineError("")
            docs.append(inspect_doc(root, _find(root, text)))
        except StockadeError as exc:
            if args.type in ("", "image"):
                try:
                    from stockade.cli.image import inspect_doc as image_doc
                    from stockade.image.store import Store

                    store = Store(root / "images").init()
                    docs.append(image_doc(store, store.lookup(text)))
                    continue
                except StockadeError:
                    pass
            print(f"stockade: {exc or 'no such object: ' + text}", file=sys.stderr)
            failed = 1
    print_docs(docs, args.format)
    return failed


def _ps_filter(ctr: Container, filters: list[str]) -> bool:
    for f in filters:
        key, _, value = f.partition("=")
        if key == "name" and value not in ctr.name:
            return False
        if key == "id" and not ctr.id.startswith(value):
            return False
        if key == "status" and ctr.status() != value:
            return False
        if key == "label":
            k, eq, v = value.partition("=")
            labels = ctr.record["Config"].get("Labels") or {}
            if k not in labels or (eq and labels[k] != v):
                return False
        if key == "ancestor" and value not in (ctr.record.get("ImageName"), ctr.record["Image"]):
            return False
        if key == "exited" and (ctr.status() != "exited" or str(ctr.state.get("ExitCode")) != value):
            return False
        if key not in ("name", "id", "status", "label", "ancestor", "exited"):
            raise UsageError(f'--filter: unknown filter "{key}"')
    return True


def cmd_ps(root: Path, argv: list[str]) -> int:
    from stockade.engine import lifecycle

    p = _parser("stockade ps")
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-f", "--filter", action="append", default=[])
    p.add_argument("--format", default="table")
    p.add_argument("--no-trunc", action="store_true")
    p.add_argument("-n", "--last", type=int, default=-1)
    p.add_argument("-l", "--latest", action="store_true")
    args = p.parse_args(argv)
    containers = [lifecycle.refresh(root, c) for c in Containers(root).all()]
    containers.sort(key=lambda c: c.record.get("Created", ""), reverse=True)
    if not args.all and args.last < 0 and not args.latest:
        containers = [c for c in containers if c.status() in ("running", "paused", "restarting")]
    containers = [c for c in containers if _ps_filter(c, args.filter)]
    if args.latest:
        containers = containers[:1]
    elif args.last >= 0:
        containers = containers[: args.last]
    if args.quiet:
        for c in containers:
            print(c.id if args.no_trunc else c.short_id)
        return 0
    now = time.time()
    rows = []
    for c in containers:
        command = command_text(c)
        if not args.no_trunc and len(command) > 20:
            command = command[:19] + "…"
        rows.append({
            "ID": c.id if args.no_trunc else c.short_id, "Image": _image_text(c), "Command": f'"{command}"',
            "CreatedAt": c.record.get("Created", ""), "RunningFor": human_ago(parse_time(c.record.get("Created", "")), now),
            "Status": status_text(c, now), "State": c.status(), "Ports": _ports_text(c), "Names": c.name,
            "Labels": ",".join(f"{k}={v}" for k, v in (c.record["Config"].get("Labels") or {}).items()),
        })  # fmt: skip
    if args.format == "json":
        for row in rows:
            print(json.dumps(row))
    elif args.format in ("table", ""):
        header = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
        keys = ["ID", "Image", "Command", "RunningFor", "Status", "Ports", "Names"]
        print(table(header, [[r[k] for k in keys] for r in rows]))
    else:
        fmt = args.format.removeprefix("table ").replace("\\t", "\t")
        for row in rows:
            print(_go_template(fmt, row))
    return 0


# -- logs -------------------------------------------------------------------------------------
def _time_arg(text: str | None, flag: str) -> float | None:
    if not text:
        return None
    import re

    m = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|h)", text)
    if m:
        return time.time() - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]
    if text.replace(".", "", 1).isdigit():
        return float(text)
    parsed = parse_time(text if text[-1] == "Z" or "+" in text[10:] else text + "Z")
    if parsed is None:
        raise UsageError(f'{flag}: invalid time "{text}" (RFC 3339, a unix timestamp or a duration like 10m)')
    return parsed


def cmd_logs(root: Path, argv: list[str]) -> int:
    from stockade.engine import lifecycle
    from stockade.engine.logs import parse_line, read_entries

    p = _parser("stockade logs")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--tail", default="all")
    p.add_argument("--since")
    p.add_argument("--until")
    p.add_argument("-t", "--timestamps", action="store_true")
    p.add_argument("container")
    args = p.parse_args(argv)
    ctr = _find(root, args.container)
    since, until = _time_arg(args.since, "--since"), _time_arg(args.until, "--until")

    def emit(entry: tuple[str, str, str]) -> None:
        stamp, stream_name, text = entry
        moment = parse_time(stamp) or 0
        if (since is not None and moment < since) or (until is not None and moment > until):
            return
        out = sys.stdout.buffer if stream_name == "stdout" else sys.stderr.buffer
        out.write(((stamp + " ") if args.timestamps else "").encode() + text.encode())
        out.flush()

    entries = list(read_entries(ctr.log_path))
    if args.tail != "all":
        if not args.tail.isdigit():
            raise UsageError(f'--tail: "{args.tail}" is not a number')
        entries = entries[-int(args.tail) :] if int(args.tail) else []
    for entry in entries:
        emit(entry)
    if not args.follow:
        return 0
    try:
        f = open(ctr.log_path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return 0
    with f:
        f.seek(0, os.SEEK_END)
        buffer = b""
        while True:
            chunk = f.read()
            if chunk:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    parsed = parse_line(line)
                    if parsed:
                        emit(parsed)
                continue
            if os.stat(ctr.log_path).st_ino != os.fstat(f.fileno()).st_ino:
                f.close()
                f = open(ctr.log_path, "rb")  # noqa: SIM115 - rotated: follow the new file
                continue
            lifecycle.refresh(root, ctr)
            if not ctr.running() and not ctr.monitor_alive():
                return 0
            time.sleep(0.05)


# -- exec / attach ----------------------------------------------------------------------------
def cmd_exec(root: Path, argv: list[str]) -> int:
    from stockade.engine.execute import exec_in

    p = _parser("stockade exec")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("-u", "--user")
    p.add_argument("-w", "--workdir")
    p.add_argument("--privileged", action="store_true")
    p.add_argument("container")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if not args.command:
        raise UsageError("exec needs a command after the container")
    ctr = _find(root, args.container)
    try:
        return exec_in(root, ctr, args.command, env=args.env, user=args.user, workdir=args.workdir,
                       tty=args.tty, interactive=args.interactive, detach=args.detach)  # fmt: skip
    except CommandFailed:
        raise
    except StockadeError as exc:
        message = str(exc)
        from stockade.engine.monitor import exit_code_for_start_error

        code = exit_code_for_start_error(message)
        raise CommandFailed(message, code if code != 128 else 126) from None


def cmd_attach(root: Path, argv: list[str]) -> int:
    from stockade.cli.attach import DEFAULT_DETACH_KEYS, DETACHED, Session, parse_detach_keys, terminal_size
    from stockade.engine import lifecycle, stream

    p = _parser("stockade attach")
    p.add_argument("--detach-keys")
    p.add_argument("--no-stdin", action="store_true")
    p.add_argument("--sig-proxy", default="true")
    p.add_argument("container")
    args = p.parse_args(argv)
    ctr = lifecycle.refresh(root, _find(root, args.container))
    if ctr.status() not in ("running", "paused") or not ctr.monitor_alive():
        raise EngineError(f"cannot attach to a stopped container {ctr.name}, start it first")
    tty = bool(ctr.record["Config"]["Tty"])
    stdin = not args.no_stdin and bool(ctr.record["Config"]["OpenStdin"])
    keys = parse_detach_keys(DEFAULT_DETACH_KEYS if args.detach_keys is None else args.detach_keys)
    sock = stream.connect(str(ctr.socket_path))
    hello: dict[str, object] = {"stdin": stdin, "stdout": True, "stderr": True}
    size = terminal_size() if tty else None
    if size:
        hello["resize"] = size
    with sock:
        sock.sendall(stream.json_frame(stream.HELLO, hello))
        code = Session(sock, stream.FrameReader(), stdin, tty, keys).run()
    return 0 if code == DETACHED else code


# -- dispatch ---------------------------------------------------------------------------------
COMMANDS = {
    "run": cmd_run, "create": cmd_create, "start": cmd_start, "stop": cmd_stop, "kill": cmd_kill,
    "restart": cmd_restart, "rm": cmd_rm, "ps": cmd_ps, "ls": cmd_ps, "list": cmd_ps, "logs": cmd_logs,
    "exec": cmd_exec, "attach": cmd_attach, "inspect": cmd_inspect, "wait": cmd_wait, "pause": cmd_pause,
    "unpause": lambda r, a: cmd_pause(r, a, on=False), "rename": cmd_rename,
}  # fmt: skip
SHORT_FORMS = {"run", "create", "start", "stop", "kill", "restart", "rm", "ps", "logs", "exec", "attach",
               "inspect", "wait", "pause", "unpause", "rename"}  # fmt: skip


def extra_commands() -> None:
    from stockade.cli import container_more

    COMMANDS.update(container_more.COMMANDS)
    SHORT_FORMS.update(container_more.SHORT_FORMS)


def run(root: Path, command: str, argv: list[str]) -> int:
    if command not in COMMANDS:
        extra_commands()
    if command not in COMMANDS:
        raise UsageError(f'unknown command "container {command}"')
    try:
        return int(COMMANDS[command](root, argv))
    except CommandFailed as exc:
        print(f"stockade: {exc}", file=sys.stderr)
        return exc.code
    except StockadeError as exc:
        if command not in ("run", "create"):
            raise
        print(f"stockade: {exc}", file=sys.stderr)
        return 125  # docker run's own failures are 125, apart from the container's exit codes
