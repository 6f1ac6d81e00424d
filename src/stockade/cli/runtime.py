"""`stockade-runtime`: an OCI runtime with runc's command line.

A thin shell over stockade.runtime. The parser is hand-written (argparse costs ~4 ms per
call, and podman calls the runtime several times per container) and follows urfave/cli as
runc uses it: `-flag` and `--flag` alike, `--flag=value` or `--flag value`, flags before the
positional arguments, and for `exec`/`ps` everything after the container ID belongs to it.
"""

from __future__ import annotations

import os
import sys
import time

from stockade import __version__, jsonfast
from stockade.errors import StockadeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

OCI_SPEC_VERSION = "1.2.0"

# flag name -> (destination, kind); kind: "bool", "value", "int", "multi"
GLOBAL_FLAGS = {
    "root": ("root", "value"),
    "log": ("log", "value"),
    "log-format": ("log_format", "value"),
    "debug": ("debug", "bool"),
    "systemd-cgroup": ("systemd_cgroup", "bool"),
    "criu": ("criu", "value"),
    "rootless": ("rootless", "value"),
    "help": ("help", "bool"),
    "h": ("help", "bool"),
    "version": ("version", "bool"),
    "v": ("version", "bool"),
}
CREATE_FLAGS = {
    "bundle": ("bundle", "value"),
    "b": ("bundle", "value"),
    "console-socket": ("console_socket", "value"),
    "pid-file": ("pid_file", "value"),
    "no-pivot": ("no_pivot", "bool"),
    "no-new-keyring": ("no_new_keyring", "bool"),
    "preserve-fds": ("preserve_fds", "int"),
}
COMMAND_FLAGS: dict[str, dict[str, tuple[str, str]]] = {
    "create": CREATE_FLAGS,
    "run": {**CREATE_FLAGS, "detach": ("detach", "bool"), "d": ("detach", "bool"), "keep": ("keep", "bool")},
    "start": {},
    "state": {},
    "kill": {"all": ("all", "bool"), "a": ("all", "bool")},
    "delete": {"force": ("force", "bool"), "f": ("force", "bool")},
    "exec": {
        "console-socket": ("console_socket", "value"),
        "cwd": ("cwd", "value"),
        "env": ("env", "multi"),
        "e": ("env", "multi"),
        "tty": ("tty", "bool"),
        "t": ("tty", "bool"),
        "user": ("user", "value"),
        "u": ("user", "value"),
        "additional-gids": ("additional_gids", "multi"),
        "g": ("additional_gids", "multi"),
        "process": ("process", "value"),
        "p": ("process", "value"),
        "detach": ("detach", "bool"),
        "d": ("detach", "bool"),
        "pid-file": ("pid_file", "value"),
        "process-label": ("process_label", "value"),
        "apparmor": ("apparmor", "value"),
        "no-new-privs": ("no_new_privs", "bool"),
        "cap": ("cap", "multi"),
        "c": ("cap", "multi"),
        "preserve-fds": ("preserve_fds", "int"),
        "ignore-paused": ("ignore_paused", "bool"),
        "cgroup": ("cgroup", "multi"),
    },
    "list": {
        "format": ("format", "value"),
        "f": ("format", "value"),
        "quiet": ("quiet", "bool"),
        "q": ("quiet", "bool"),
    },
    "ps": {"format": ("format", "value"), "f": ("format", "value")},
    "features": {},
    "spec": {"bundle": ("bundle", "value"), "b": ("bundle", "value"), "rootless": ("rootless", "bool")},
    "pause": {},
    "resume": {},
    "update": {
        "resources": ("resources", "value"),
        "r": ("resources", "value"),
        "memory": ("memory", "value"),
        "memory-swap": ("memory_swap", "value"),
        "memory-reservation": ("memory_reservation", "value"),
        "kernel-memory": ("kernel_memory", "value"),
        "kernel-memory-tcp": ("kernel_memory_tcp", "value"),
        "cpu-shares": ("cpu_shares", "value"),
        "cpu-period": ("cpu_period", "value"),
        "cpu-quota": ("cpu_quota", "value"),
        "cpu-rt-period": ("cpu_rt_period", "value"),
        "cpu-rt-runtime": ("cpu_rt_runtime", "value"),
        "cpuset-cpus": ("cpuset_cpus", "value"),
        "cpuset-mems": ("cpuset_mems", "value"),
        "pids-limit": ("pids_limit", "value"),
        "blkio-weight": ("blkio_weight", "value"),
    },
    "events": {"stats": ("stats", "bool"), "interval": ("interval", "value")},
}
ALIASES = {"ls": "list"}
USAGE = """usage: stockade-runtime [global options] command [options] <container-id> [args]

An OCI runtime (runtime-spec {spec}) with runc's command line.

commands:
  create    create a container from a bundle       start     start a created container
  run       create and start a container           state     print a container's state
  kill      send a signal to a container           delete    delete a container
  exec      run a process in a container           list      list containers
  ps        list a container's processes           pause     freeze a container
  resume    thaw a paused container                features  print supported features
  update    change a container's resource limits   events    print usage stats and OOM events
  spec      write a default config.json

global options: --root DIR, --log FILE, --log-format text|json, --debug
"""


class UsageError(StockadeError):
    pass


def parse_flags(args: list[str], table: dict[str, tuple[str, str]]) -> tuple[dict[str, Any], list[str]]:
    """Parse leading flags from `args`; stop at the first positional (or after `--`)."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        if name not in table:
            raise UsageError(f"flag provided but not defined: -{name}")
        dest, kind = table[name]
        if kind == "bool":
            values[dest] = value.lower() not in ("false", "0") if has_value else True
        else:
            if not has_value:
                i += 1
                if i >= len(args):
                    raise UsageError(f"flag needs an argument: -{name}")
                value = args[i]
            if kind == "int":
                if not value.isdigit():
                    raise UsageError(f'invalid value "{value}" for flag -{name}: must be a number')
                values[dest] = int(value)
            elif kind == "multi":
                values.setdefault(dest, []).append(value)
            else:
                values[dest] = value
        i += 1
    return values, args[i:]


def default_root() -> str:
    if os.geteuid() == 0:
        return "/run/stockade/runtime"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    return os.path.join(base, "stockade", "runtime")


class Context:
    """Global options and the logger every command reports through."""

    def __init__(self, flags: dict[str, Any]) -> None:
        self.root = os.path.abspath(flags.get("root") or default_root())
        self.log_path = flags.get("log")
        self.log_format = flags.get("log_format") or "text"
        if self.log_format not in ("text", "json"):
            raise UsageError(f'--log-format: unknown format "{self.log_format}" (text or json)')
        self.debug = bool(flags.get("debug"))
        if self.debug:
            from stockade.runtime.trace import enable

            enable()

    def log(self, level: str, msg: str) -> None:
        if not self.log_path:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.log_format == "json":
            line = jsonfast.dumps({"level": level, "msg": msg, "time": stamp})
        else:
            line = f'time="{stamp}" level={level} msg={jsonfast.dumps(msg)}'
        try:
            with open(self.log_path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass


def need_id(command: str, rest: list[str]) -> str:
    if not rest:
        raise UsageError(f'"{command}" requires a container ID')
    return rest[0]


def cmd_create(ctx: Context, flags: dict[str, Any], rest: list[str]) -> int:
    from stockade.runtime.container import create

    container_id = need_id("create", rest)
    create(ctx.root, container_id, flags.get("bundle") or ".", _create_options(flags))
    return 0


def _create_options(flags: dict[str, Any]) -> Any:
    from stockade.runtime.create import CreateOptions

    socket_path = flags.get("console_socket")
    return CreateOptions(
        console_socket=os.path.abspath(socket_path) if socket_path else None,
        pid_file=os.path.abspath(flags["pid_file"]) if flags.get("pid_file") else None,
        preserve_fds=_preserve_fds(flags),
        no_new_keyring=bool(flags.get("no_new_keyring")),
    )


def _preserve_fds(flags: dict[str, Any]) -> int:
    """--preserve-fds N, plus the LISTEN_FDS of socket activation, as runc counts them."""
    count = int(flags.get("preserve_fds") or 0)
    listen = os.environ.get("LISTEN_FDS", "")
    if listen.isdigit() and os.environ.get("LISTEN_PID", str(os.getpid())) == str(os.getpid()):
        count = max(count, int(listen))
    return count


def cmd_run(ctx: Context, flags: dict[str, Any], rest: list[str]) -> int:
    from stockade.runtime.container import run

    container_id = need_id("run", rest)
    return run(ctx.root, container_id, flags.get("bundle") or ".", _create_options(flags), bool(flags.get("detach")))


def cmd_start(ctx: Context, flags: dict[str, Any], rest: list[str]) -> int:
    from stockade.runtime.container import start

    start(ctx.root, need_id("start", rest))
    return 0


def cmd_state(ctx: Context, flags: dict[str, Any], rest: list[str]) -> int:
    import json  # only `state` pretty-prints, as runc does

    from stockade.runtime.state import State

    state = State.load(ctx.root, need_id("state", rest))
    print(json.dumps(state.oci_state(), indent=2))
    return 0


def cmd_kill(ctx: Context, flags: dict[str, Any], rest: list[str]) -> int:
    from stockade.runtime.container import kill, parse_signal

    container_id = need_id("kill", rest)
    sig = parse_signal(rest[1] if len(rest) > 1 else "SIGTERM")
    kill(ctx.root, container_id, sig, bool(flags.get("all")))
    return 0


def cmd_delete(ctx: Context, flags: dict[str, Any], rest: list[str]) -> int:
    from stockade.errors import ContainerError
    from stockade.runtime.container import delete

    container_id = need_id("delete", rest)
    try:
        delete(ctx.root, container_id, bool(flags.get("force")))
    except ContainerError as e:
        # runc: `delete --force` of a container that does not exist is not an error.
        if not (flags.get("force") and "does not exist" in str(e)):
            raise
    return 0


def cmd_list(ctx: Context, flags: dict[str, Any], rest: list[str]) -> int:
    from stockade.runtime.container import list_states

    states = list_states(ctx.root)
    fmt = flags.get("format") or "table"
    if flags.get("quiet"):
        for state in states:
            print(state.id)
        return 0
    if fmt == "json":
        out = []
        for state in states:
            doc = state.oci_state()
            out.append(
                {
                    "ociVersion": doc["ociVersion"],
                    "id": state.id,
                    "pid": doc["pid"],
                    "status": doc["status"],
                    "bundle": state.bundle,
                    "rootfs": state.rootfs,
                    "created": state.created,
                    "annotations": state.annotations,
                    "owner": _owner(state.owner),
                }
            )
        print(jsonfast.dumps(out))
        return 0
    if fmt != "table":
        raise UsageError(f'invalid format option "{fmt}" (table or json)')
    rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
    for state in states:
        doc = state.oci_state()
        rows.append((state.id, str(doc["pid"]), doc["status"], state.bundle, state.created, _owner(state.owner)))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for row in rows:
        print("   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return 0


def _owner(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"


def cmd_ps(ctx: Context, flags: dict[str, Any], rest: list[str]) -> int:
    from stockade.runtime.container import ps

    container_id = need_id("ps", rest)
    pids = ps(ctx.root, container_id)
    fmt = flags.get("format") or "table"
    if fmt == "json":
        print(jsonfast.dumps(pids))
        return 0
    if fmt != "table":
        raise UsageError(f'invalid format option "{fmt}" (table or json)')
    import subprocess

    ps_args = rest[1:] or ["-ef"]
    out = subprocess.run(["ps", *ps_args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise StockadeError(f"ps {' '.join(ps_args)}: {out.stderr.strip()}")
    lines = out.stdout.splitlines()
    if not lines:
        return 0
    header = lines[0]
    try:
        pid_col = header.split().index("PID")
    except ValueError:
        raise StockadeError(f"ps {' '.join(ps_args)}: its output has no PID column") from None
    print(header)
    wanted = set(pids)
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > pid_col and fields[pid_col].isdigit() and int(fields[pid_col]) in wanted:
            print(line)
    return 0


def cmd_exec(ctx: Context, flags: dict[str, Any], rest: list[str]) -> int:
    from stockade.runtime.exec import ExecOptions, container_config, exec_process
    from stockade.runtime.state import State

    container_id = need_id("exec", rest)
    state = State.load(ctx.root, container_id)
    config = container_config(state)
    process = _exec_process_spec(config, flags, rest[1:])
    if process.terminal and flags.get("detach") and not flags.get("console_socket"):
        raise UsageError("cannot allocate a tty for a detached exec without --console-socket")
    opts = ExecOptions(
        console_socket=os.path.abspath(flags["console_socket"]) if flags.get("console_socket") else None,
        pid_file=os.path.abspath(flags["pid_file"]) if flags.get("pid_file") else None,
        detach=bool(flags.get("detach")),
        preserve_fds=_preserve_fds(flags),
    )
    return exec_process(state, config, process, opts)


def _exec_process_spec(config: Any, flags: dict[str, Any], args: list[str]) -> Any:
    """The process to exec: --process FILE as given, else the container's own process with
    args, env, cwd, user, tty and capabilities overridden by the flags (as runc does)."""
    from stockade.spec.runtime import load_process

    if flags.get("process"):
        try:
            with open(flags["process"]) as f:
                raw = jsonfast.loads(f.read())
        except (OSError, ValueError) as e:
            raise StockadeError(f"--process {flags['process']}: {e}") from None
        return load_process(raw)
    if not args:
        raise UsageError("exec needs --process FILE or a command after the container ID")
    base = config.raw.get("process") or {}
    raw = jsonfast.loads(jsonfast.dumps(base))
    raw["args"] = args
    raw["env"] = list(raw.get("env") or []) + list(flags.get("env") or [])
    raw["terminal"] = bool(flags.get("tty"))
    raw["cwd"] = flags.get("cwd") or raw.get("cwd") or "/"
    if flags.get("user"):
        uid, _, gid = flags["user"].partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise UsageError(f'--user "{flags["user"]}": use UID[:GID] as numbers')
        raw["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    if flags.get("additional_gids"):
        raw.setdefault("user", {})["additionalGids"] = [int(g) for g in flags["additional_gids"]]
    if flags.get("no_new_privs"):
        raw["noNewPrivileges"] = True
    for cap in flags.get("cap") or []:
        sets = raw.setdefault("capabilities", {})
        for name in ("bounding", "effective", "permitted", "ambient"):
            if cap not in sets.setdefault(name, []):
                sets[name].append(cap)
    raw.pop("consoleSize", None)
    return load_process(raw)


def cmd_features(ctx: Context, flags: dict[str, Any], rest: list[str]) -> int:
    import json

    from stockade.runtime.features import features

    print(json.dumps(features(), indent=2))
    return 0


def cmd_spec(ctx: Context, flags: dict[str, Any], rest: list[str]) -> int:
    import json

    from stockade.spec.defaults import default_config

    bundle = flags.get("bundle") or "."
    path = os.path.join(bundle, "config.json")
    if os.path.exists(path):
        raise StockadeError(f"File {path} exists. Remove it first")
    with open(path, "w") as f:
        json.dump(default_config(rootless=bool(flags.get("rootless"))), f, indent="\t")
    return 0


def cmd_pause(ctx: Context, flags: dict[str, Any], rest: list[str]) -> int:
    return _freeze(ctx, need_id("pause", rest), True)


def cmd_resume(ctx: Context, flags: dict[str, Any], rest: list[str]) -> int:
    return _freeze(ctx, need_id("resume", rest), False)


def _freeze(ctx: Context, container_id: str, on: bool) -> int:
    from stockade.errors import ContainerError
    from stockade.runtime.container import cgroup_manager, require
    from stockade.runtime.state import State

    state = State.load(ctx.root, container_id)
    require(state, "pause" if on else "resume")
    manager = cgroup_manager(state)
    if manager is None:
        raise ContainerError(f"container {container_id} has no cgroup to freeze")
    manager.freeze(on)
    return 0


def cmd_update(ctx: Context, flags: dict[str, Any], rest: list[str]) -> int:
    from stockade.runtime.resources import update

    update(ctx.root, need_id("update", rest), _update_resources(flags))
    return 0


def _update_resources(flags: dict[str, Any]) -> dict[str, Any]:
    """--resources FILE|- as the base, then the per-field flags, as runc builds it."""
    from stockade.runtime.resources import parse_bytes

    resources: dict[str, Any] = {}
    if flags.get("resources"):
        source = flags["resources"]
        try:
            if source == "-":
                text = sys.stdin.read()
            else:
                with open(source) as f:
                    text = f.read()
            resources = jsonfast.loads(text)
        except (OSError, ValueError) as e:
            raise UsageError(f"--resources {source}: {e}") from None

    def number(key: str) -> int:
        value = str(flags[key])
        if not value.lstrip("-").isdigit():
            raise UsageError(f'--{key.replace("_", "-")}: "{value}" is not a number')
        return int(value)

    memory = resources.setdefault("memory", {})
    for flag, field in (("memory", "limit"), ("memory_swap", "swap"), ("memory_reservation", "reservation"),
                        ("kernel_memory", "kernel"), ("kernel_memory_tcp", "kernelTCP")):  # fmt: skip
        if flags.get(flag) is not None:
            memory[field] = parse_bytes(flags[flag])
    cpu = resources.setdefault("cpu", {})
    for flag, field in (("cpu_shares", "shares"), ("cpu_period", "period"), ("cpu_quota", "quota"),
                        ("cpu_rt_period", "realtimePeriod"), ("cpu_rt_runtime", "realtimeRuntime")):  # fmt: skip
        if flags.get(flag) is not None:
            cpu[field] = number(flag)
    if flags.get("cpuset_cpus") is not None:
        cpu["cpus"] = flags["cpuset_cpus"]
    if flags.get("cpuset_mems") is not None:
        cpu["mems"] = flags["cpuset_mems"]
    if flags.get("pids_limit") is not None:
        resources["pids"] = {"limit": number("pids_limit")}
    if flags.get("blkio_weight") is not None:
        resources.setdefault("blockIO", {})["weight"] = number("blkio_weight")
    return {key: value for key, value in resources.items() if value}


def cmd_events(ctx: Context, flags: dict[str, Any], rest: list[str]) -> int:
    from stockade.runtime.resources import events

    interval = _duration(flags.get("interval") or "5s")
    try:
        events(ctx.root, need_id("events", rest), bool(flags.get("stats")), interval)
    except KeyboardInterrupt:
        pass
    return 0


def _duration(text: str) -> float:
    """Go-style durations as runc takes them: 100ms, 5s, 1m, or plain seconds."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * scale
    if text.replace(".", "", 1).isdigit():
        return float(text)
    raise UsageError(f'--interval: "{text}" is not a duration like 100ms, 5s or 1m')


COMMANDS: dict[str, Callable[[Context, dict[str, Any], list[str]], int]] = {
    "create": cmd_create,
    "run": cmd_run,
    "start": cmd_start,
    "state": cmd_state,
    "kill": cmd_kill,
    "delete": cmd_delete,
    "exec": cmd_exec,
    "list": cmd_list,
    "ps": cmd_ps,
    "features": cmd_features,
    "spec": cmd_spec,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "update": cmd_update,
    "events": cmd_events,
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    ctx: Context | None = None
    command = ""
    try:
        global_flags, rest = parse_flags(args, GLOBAL_FLAGS)
        if global_flags.get("version"):
            print(f"stockade-runtime version {__version__}\nspec: {OCI_SPEC_VERSION}")
            return 0
        if global_flags.get("help") or not rest:
            print(USAGE.format(spec=OCI_SPEC_VERSION), end="")
            return 0 if global_flags.get("help") else 1
        ctx = Context(global_flags)
        if global_flags.get("systemd_cgroup"):
            raise UsageError("--systemd-cgroup: the systemd cgroup driver is not supported yet; use cgroupfs paths")
        command = ALIASES.get(rest[0], rest[0])
        if command not in COMMANDS:
            raise UsageError(f'unknown command "{rest[0]}"')
        flags, positional = parse_flags(rest[1:], COMMAND_FLAGS[command])
        if positional and command not in ("list", "features", "spec"):
            command = f"{command} {positional[0]}"  # errors read "create c1: <what failed>"
        code = COMMANDS[rest[0] if rest[0] not in ALIASES else ALIASES[rest[0]]](ctx, flags, positional)
        sys.stdout.flush()
        return code
    except (StockadeError, OSError) as e:
        if ctx is not None and ctx.debug:
            import traceback

            traceback.print_exc()
        msg = _message(command, e)
        if ctx is not None:
            ctx.log("error", msg)
        print(f"stockade-runtime: {msg}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: still one line, the traceback with --debug
        if ctx is not None and ctx.debug:
            raise
        msg = f"{command + ': ' if command else ''}internal error: {type(e).__name__}: {e} (--debug shows where)"
        if ctx is not None:
            ctx.log("error", msg)
        print(f"stockade-runtime: {msg}", file=sys.stderr)
        return 1


def _message(command: str, e: BaseException) -> str:
    text = str(e)
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return f"{command}: {text}" if command else text


if __name__ == "__main__":
    sys.exit(main())
