"""Docker's run/create flag values, parsed and checked (pure): volumes, mounts, tmpfs, ulimits,
restart policies, CPU and memory sizes, capabilities, security options, env files."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from stockade.engine.plan import PlanError, RunOptions

RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")
ULIMITS = {
    "core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA", "fsize": "RLIMIT_FSIZE",
    "locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK", "msgqueue": "RLIMIT_MSGQUEUE", "nice": "RLIMIT_NICE",
    "nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC", "rss": "RLIMIT_RSS", "rtprio": "RLIMIT_RTPRIO",
    "rttime": "RLIMIT_RTTIME", "sigpending": "RLIMIT_SIGPENDING", "stack": "RLIMIT_STACK", "as": "RLIMIT_AS",
}  # fmt: skip
VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(slots=True)
class MountRequest:
    """One -v/--mount/--tmpfs: Docker's HostConfig.Mounts entry."""

    type: str  # bind | volume | tmpfs
    target: str
    source: str = ""  # host path (bind) or volume name ("" = anonymous)
    read_only: bool = False
    options: list[str] = field(default_factory=list)  # tmpfs size=/mode=, bind propagation

    def to_json(self) -> dict[str, Any]:
        return {"Type": self.type, "Source": self.source, "Target": self.target, "ReadOnly": self.read_only,
                "Options": self.options}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MountRequest:
        return cls(data["Type"], data["Target"], data.get("Source", ""), bool(data.get("ReadOnly")),
                   list(data.get("Options") or []))  # fmt: skip


@dataclass(slots=True)
class CreateRequest:
    image: str
    run: RunOptions = field(default_factory=RunOptions)
    name: str | None = None
    interactive: bool = False
    mounts: list[MountRequest] = field(default_factory=list)
    memory: int = 0
    memory_swap: int = 0
    cpus: float = 0.0
    cpu_shares: int = 0
    cpuset_cpus: str = ""
    pids_limit: int | None = None
    ulimits: list[dict[str, Any]] = field(default_factory=list)
    init: bool = False
    restart: str = "no"
    stop_signal: str = "SIGTERM"
    stop_timeout: int = 10
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    log_max_size: int = 0
    log_max_file: int = 1
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    security_opt: list[str] = field(default_factory=list)
    privileged: bool = False
    userns: str = ""  # "" (isolated), host, auto, keep-id
    auto_remove: bool = False
    networks: list[str] = field(default_factory=list)  # [] = the default bridge; the first is the mode
    publish: list[Any] = field(default_factory=list)  # network.config.PortBinding
    publish_all: bool = False
    ip: str = ""
    aliases: list[str] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    add_hosts: list[str] = field(default_factory=list)
    runtime: str = ""  # "" = stockade-runtime in-process; crun | runc | PATH


def parse_size(text: str, flag: str) -> int:
    value = text.strip().lower()
    number = value.rstrip("bkmgt")
    unit = value[len(number) :].rstrip("b")
    if not number.replace(".", "", 1).isdigit() or unit not in _UNITS:
        raise PlanError(f'{flag}: invalid size "{text}" (a number with an optional unit b, k, m, g)')
    return int(float(number) * _UNITS[unit])


def parse_volume(spec: str) -> MountRequest:
    """-v [SOURCE:]TARGET[:OPTIONS]; SOURCE is a host path (absolute) or a volume name."""
    parts = spec.split(":")
    if len(parts) == 1:
        source, target, opts = "", parts[0], ""
    elif len(parts) == 2:
        source, target, opts = (parts[0], parts[1], "") if parts[1].startswith("/") else ("", parts[0], parts[1])
    elif len(parts) == 3:
        source, target, opts = parts
    else:
        raise PlanError(f"-v {spec}: invalid volume specification (want [SOURCE:]TARGET[:ro|rw])")
    if not target.startswith("/"):
        raise PlanError(f'-v {spec}: invalid mount target "{target}": must be an absolute path')
    read_only = False
    for opt in filter(None, opts.split(",")):
        if opt in ("ro", "rw"):
            read_only = opt == "ro"
        elif opt not in ("z", "Z", "private", "rprivate", "shared", "rshared", "slave", "rslave", "nocopy"):
            raise PlanError(f'-v {spec}: unknown option "{opt}"')
    if source.startswith("/"):
        return MountRequest("bind", target, source, read_only)
    if source and not VOLUME_NAME.match(source):
        raise PlanError(f'-v {spec}: "{source}" is neither an absolute host path nor a volume name')
    return MountRequest("volume", target, source, read_only)


def parse_mount(spec: str) -> MountRequest:
    """--mount type=bind|volume|tmpfs,source=..,target=..,readonly,tmpfs-size=..,tmpfs-mode=.."""
    fields: dict[str, str] = {}
    for item in spec.split(","):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if key in ("readonly", "ro") and not eq:
            value = "true"
        fields[key] = value
    kind = fields.pop("type", "volume")
    if kind not in ("bind", "volume", "tmpfs"):
        raise PlanError(f'--mount {spec}: unknown type "{kind}" (want bind, volume or tmpfs)')
    target = fields.pop("target", "") or fields.pop("destination", "") or fields.pop("dst", "")
    if not target.startswith("/"):
        raise PlanError(f"--mount {spec}: target must be an absolute path")
    source = fields.pop("source", "") or fields.pop("src", "")
    read_only = fields.pop("readonly", fields.pop("ro", "false")) in ("true", "1", "")
    options = []
    if "tmpfs-size" in fields:
        options.append(f"size={parse_size(fields.pop('tmpfs-size'), '--mount tmpfs-size')}")
    if "tmpfs-mode" in fields:
        options.append(f"mode={fields.pop('tmpfs-mode')}")
    fields.pop("bind-propagation", None)
    fields.pop("volume-nocopy", None)
    if fields:
        raise PlanError(f'--mount {spec}: unknown field "{next(iter(fields))}"')
    if kind == "bind" and not source.startswith("/"):
        raise PlanError(f"--mount {spec}: a bind mount needs an absolute source path")
    if kind == "tmpfs" and source:
        raise PlanError(f"--mount {spec}: a tmpfs mount takes no source")
    if kind == "volume" and source and not VOLUME_NAME.match(source):
        raise PlanError(f'--mount {spec}: invalid volume name "{source}"')
    return MountRequest(kind, target, source, read_only, options)


def parse_tmpfs(spec: str) -> MountRequest:
    target, _, opts = spec.partition(":")
    if not target.startswith("/"):
        raise PlanError(f"--tmpfs {spec}: target must be an absolute path")
    return MountRequest("tmpfs", target, "", False, [o for o in opts.split(",") if o])


def parse_ulimit(spec: str) -> dict[str, Any]:
    """--ulimit NAME=SOFT[:HARD] -> an OCI rlimit."""
    name, eq, values = spec.partition("=")
    if not eq or name not in ULIMITS:
        raise PlanError(f"--ulimit {spec}: want NAME=SOFT[:HARD] with NAME one of {', '.join(sorted(ULIMITS))}")
    soft_text, _, hard_text = values.partition(":")
    try:
        soft = -1 if soft_text == "-1" else int(soft_text)
        hard = soft if not hard_text else (-1 if hard_text == "-1" else int(hard_text))
    except ValueError:
        raise PlanError(f"--ulimit {spec}: limits must be integers") from None
    unlimited = 2**64 - 1
    soft, hard = (unlimited if soft < 0 else soft), (unlimited if hard < 0 else hard)
    if soft > hard:
        raise PlanError(f"--ulimit {spec}: soft limit {soft} is above the hard limit {hard}")
    return {"type": ULIMITS[name], "soft": soft, "hard": hard}


def parse_restart(spec: str) -> tuple[str, int]:
    name, _, count = spec.partition(":")
    if name not in RESTART_POLICIES:
        raise PlanError(f"--restart {spec}: invalid restart policy (want {', '.join(RESTART_POLICIES)})")
    if count and (name != "on-failure" or not count.isdigit()):
        raise PlanError(f"--restart {spec}: only on-failure takes a maximum retry count")
    return name, int(count or 0)


def parse_env_file(text: str, path: str) -> list[str]:
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key = line.partition("=")[0]
        if not key or any(c.isspace() for c in key):
            raise PlanError(f"{path}:{number}: invalid variable name {key!r}")
        out.append(line)
    return out


def parse_labels(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise PlanError(f'{flag} "{item}": empty key')
        out[key] = value
    return out


def normalise_cap(name: str) -> str:
    from stockade.kernel.caps import CAP_NAMES

    full = name.upper()
    if full != "ALL" and not full.startswith("CAP_"):
        full = "CAP_" + full
    if full != "ALL" and full not in CAP_NAMES:
        raise PlanError(f'unknown capability "{name}"')
    return full


def capabilities(defaults: list[str], add: list[str], drop: list[str]) -> list[str]:
    """Docker's rule: drop first (ALL clears), then add (ALL = every capability)."""
    from stockade.kernel.caps import CAP_NAMES, last_cap

    adds, drops = [normalise_cap(c) for c in add], [normalise_cap(c) for c in drop]
    caps = [] if "ALL" in drops else [c for c in defaults if c not in drops]
    if "ALL" in adds:
        return list(CAP_NAMES[: last_cap() + 1])
    return caps + [c for c in adds if c not in caps]
