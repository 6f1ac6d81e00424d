"""Image config + run options -> the OCI config.json of a container (pure, Docker's rules).

- the command is Entrypoint + Cmd; `--entrypoint` replaces the image's entrypoint and drops its
  Cmd, arguments after the image replace Cmd; nothing left is "no command specified";
- the environment is the image's, then -e (a bare `-e KEY` takes the caller's value; a key
  that is unset there is dropped), PATH and HOSTNAME/TERM defaults as Docker sets them;
- -u NAME[:GROUP] resolves against the image's /etc/passwd and /etc/group text;
- every container gets the secure defaults and its own ID map (engine.idranges).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stockade.engine.idranges import IDMap
from stockade.errors import StockadeError
from stockade.spec.defaults import apply_secure_defaults, default_config
from stockade.spec.image import ImageConfig

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PlanError(StockadeError):
    pass


@dataclass(slots=True)
class RunOptions:
    command: list[str] = field(default_factory=list)
    entrypoint: list[str] | None = None  # None: the image's; []: cleared (--entrypoint "")
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    hostname: str = ""
    tty: bool = False
    read_only: bool = False


def process_args(image: ImageConfig, opts: RunOptions) -> list[str]:
    if opts.entrypoint is not None:
        entrypoint, cmd = opts.entrypoint, opts.command
    else:
        entrypoint, cmd = image.entrypoint or [], opts.command or image.cmd or []
    args = [*entrypoint, *cmd]
    if not args:
        raise PlanError("no command specified (the image has no Entrypoint or Cmd: give one after the image)")
    return args


def merge_env(
    image_env: list[str], overrides: list[str], host_env: dict[str, str], hostname: str, tty: bool
) -> list[str]:
    env: dict[str, str] = {}
    for item in [DEFAULT_PATH, f"HOSTNAME={hostname}", *image_env]:
        key, _, value = item.partition("=")
        env[key] = value
    for item in overrides:
        key, eq, value = item.partition("=")
        if not key:
            raise PlanError(f'invalid environment variable "{item}"')
        if eq:
            env[key] = value
        elif key in host_env:
            env[key] = host_env[key]
        else:
            env.pop(key, None)
    if tty:
        env.setdefault("TERM", "xterm")
    return [f"{k}={v}" for k, v in env.items()]


def with_user(passwd: str, group: str, name: str, uid: int, gid: int, home: str) -> tuple[str, str]:
    """The image's /etc/passwd and /etc/group text with a user `name` (uid, gid, home) and its
    group added, unless the image already has that uid / gid (as podman's --userns keep-id)."""
    if not any(len(f) > 2 and f[2] == str(uid) for f in _table(passwd)):
        passwd = _append_line(passwd, f"{name}:*:{uid}:{gid}:{name}:{home}:/bin/sh")
    if not any(len(f) > 2 and f[2] == str(gid) for f in _table(group)):
        group = _append_line(group, f"{name}:x:{gid}:")
    return passwd, group


def _append_line(text: str, line: str) -> str:
    return (text.rstrip("\n") + "\n" if text.strip() else "") + line + "\n"


def _table(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(spec: str, passwd: str, group: str) -> tuple[int, int, list[int]]:
    """(uid, gid, additional gids) for -u/USER: NAME|UID[:GROUP|GID], against the image's files."""
    user_part, _, group_part = spec.partition(":")
    users, groups = _table(passwd), _table(group)
    uid = gid = None
    name = None
    if user_part.isdigit():
        uid = int(user_part)
        for row in users:
            if len(row) > 3 and row[2] == user_part:
                name, gid = row[0], int(row[3])
                break
    else:
        for row in users:
            if len(row) > 3 and row[0] == user_part:
                name, uid, gid = row[0], int(row[2]), int(row[3])
                break
        if uid is None:
            raise PlanError(f"unable to find user {user_part}: no matching entries in the image's /etc/passwd")
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            match = next((row for row in groups if len(row) > 2 and row[0] == group_part), None)
            if match is None:
                raise PlanError(f"unable to find group {group_part}: no matching entries in the image's /etc/group")
            gid = int(match[2])
    extra = sorted({int(row[2]) for row in groups if name and len(row) > 3 and name in row[3].split(",")} - {gid or 0})
    return uid, gid if gid is not None else 0, extra


def container_config(
    image: ImageConfig, opts: RunOptions, idmap: IDMap, host_env: dict[str, str], passwd: str = "", group: str = ""
) -> dict[str, Any]:
    args = process_args(image, opts)
    config = default_config(args=args, terminal=opts.tty)
    hostname = opts.hostname or "localhost"
    config["hostname"] = hostname
    config["root"] = {"path": "rootfs", "readonly": opts.read_only}
    process = config["process"]
    process["env"] = merge_env(image.env, opts.env, host_env, hostname, opts.tty)
    process["cwd"] = opts.workdir or image.working_dir or "/"
    if not process["cwd"].startswith("/"):
        raise PlanError(f'working directory "{process["cwd"]}" is not an absolute path')
    user = opts.user if opts.user is not None else image.user
    if user:
        uid, gid, extra = resolve_user(user, passwd, group)
        process["user"] = {"uid": uid, "gid": gid, **({"additionalGids": extra} if extra else {})}
    apply_secure_defaults(config, idmap.uid_start, idmap.size)
    config["linux"]["uidMappings"] = idmap.uid_mappings()
    config["linux"]["gidMappings"] = idmap.gid_mappings()
    return config
