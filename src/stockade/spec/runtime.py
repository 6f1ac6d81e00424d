"""The OCI runtime-spec (1.2) config.json as typed, validated objects. Pure: no syscalls.

`load_config(raw, bundle)` checks every field it understands and raises SpecError naming the
JSON path of the first bad one (`process.capabilities.bounding[3]: unknown capability ...`).
The classes are plain __slots__ classes rather than dataclasses: the runtime's start-up path
imports this module, and `dataclasses` alone costs ~10 ms of imports.
"""

from __future__ import annotations

import os.path

from stockade.errors import SpecError
from stockade.spec.mountopts import MountPlan, plan_mount
from stockade.spec.reader import Reader
from stockade.spec.resources import check_resources

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SUPPORTED_OCI_MAJOR = 1

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")

RLIMITS = (
    "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS",
    "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME",
)  # fmt: skip

ROOTFS_PROPAGATION = ("private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable")

HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")

CAPABILITY_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")

DEVICE_TYPES = ("c", "b", "u", "p")

PERSONALITY_DOMAINS = ("LINUX", "LINUX32")

TIME_CLOCKS = ("monotonic", "boottime")


class IDMapping:
    __slots__ = ("container_id", "host_id", "size")

    def __init__(self, container_id: int, host_id: int, size: int) -> None:
        self.container_id = container_id
        self.host_id = host_id
        self.size = size

    def line(self) -> str:
        """The mapping as a line of /proc/PID/uid_map."""
        return f"{self.container_id} {self.host_id} {self.size}\n"

    def maps(self, container_id: int) -> bool:
        return self.container_id <= container_id < self.container_id + self.size

    def to_host(self, container_id: int) -> int:
        return self.host_id + container_id - self.container_id


class User:
    __slots__ = ("additional_gids", "gid", "uid", "umask")

    def __init__(self, uid: int, gid: int, umask: int | None, additional_gids: list[int]) -> None:
        self.uid = uid
        self.gid = gid
        self.umask = umask
        self.additional_gids = additional_gids


class Rlimit:
    __slots__ = ("hard", "soft", "type")

    def __init__(self, type: str, soft: int, hard: int) -> None:
        self.type = type
        self.soft = soft
        self.hard = hard


class Capabilities:
    """Capability names per set, as given (validated against the known names)."""

    __slots__ = CAPABILITY_SETS

    def __init__(self, sets: dict[str, list[str]]) -> None:
        for name in CAPABILITY_SETS:
            setattr(self, name, sets.get(name, []))

    def get(self, name: str) -> list[str]:
        return list(getattr(self, name))


class Process:
    __slots__ = (
        "apparmor_profile",
        "args",
        "capabilities",
        "console_size",
        "cwd",
        "env",
        "io_priority",
        "no_new_privileges",
        "oom_score_adj",
        "rlimits",
        "scheduler",
        "selinux_label",
        "terminal",
        "user",
    )  # fmt: skip
    terminal: bool
    console_size: tuple[int, int] | None
    user: User
    args: list[str]
    env: list[str]
    cwd: str
    capabilities: Capabilities | None
    rlimits: list[Rlimit]
    no_new_privileges: bool
    oom_score_adj: int | None
    apparmor_profile: str | None
    selinux_label: str | None
    io_priority: Any
    scheduler: Any

    def __init__(self, **kw: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, kw.get(name))

    def env_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.env:
            key, _, value = item.partition("=")
            out[key] = value
        return out


class Mount:
    __slots__ = ("destination", "gid_mappings", "options", "plan", "source", "type", "uid_mappings")

    def __init__(
        self,
        destination: str,
        type: str | None,
        source: str | None,
        options: list[str],
        uid_mappings: list[IDMapping],
        gid_mappings: list[IDMapping],
    ) -> None:
        self.destination = destination
        self.type = type
        self.source = source
        self.options = options
        self.uid_mappings = uid_mappings
        self.gid_mappings = gid_mappings
        self.plan: MountPlan | None = None


class Hook:
    __slots__ = ("args", "env", "path", "timeout")

    def __init__(self, path: str, args: list[str], env: list[str], timeout: int | None) -> None:
        self.path = path
        self.args = args
        self.env = env
        self.timeout = timeout


class Namespace:
    __slots__ = ("path", "type")

    def __init__(self, type: str, path: str | None) -> None:
        self.type = type
        self.path = path


class Device:
    __slots__ = ("file_mode", "gid", "major", "minor", "path", "type", "uid")
    type: str
    path: str
    major: int | None
    minor: int | None
    file_mode: int | None
    uid: int | None
    gid: int | None

    def __init__(self, **kw: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, kw.get(name))


class Linux:
    __slots__ = (
        "cgroups_path",
        "devices",
        "gid_mappings",
        "intel_rdt",
        "masked_paths",
        "mount_label",
        "namespaces",
        "personality",
        "readonly_paths",
        "resources",
        "rootfs_propagation",
        "seccomp",
        "sysctl",
        "time_offsets",
        "uid_mappings",
    )  # fmt: skip
    namespaces: list[Namespace]
    uid_mappings: list[IDMapping]
    gid_mappings: list[IDMapping]
    devices: list[Device]
    cgroups_path: str | None
    resources: dict[str, Any] | None
    rootfs_propagation: str | None
    masked_paths: list[str]
    readonly_paths: list[str]
    mount_label: str | None
    sysctl: dict[str, str]
    seccomp: dict[str, Any] | None
    time_offsets: dict[str, tuple[int, int]]
    personality: str | None
    intel_rdt: Any

    def __init__(self, **kw: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, kw.get(name))

    def namespace(self, kind: str) -> Namespace | None:
        for ns in self.namespaces:
            if ns.type == kind:
                return ns
        return None

    def new_namespace(self, kind: str) -> bool:
        """True if the container gets a fresh namespace of this kind (listed, without a path)."""
        ns = self.namespace(kind)
        return ns is not None and ns.path is None


class Config:
    __slots__ = (
        "annotations",
        "domainname",
        "hooks",
        "hostname",
        "linux",
        "mounts",
        "oci_version",
        "process",
        "raw",
        "root_path",
        "root_readonly",
    )  # fmt: skip
    oci_version: str
    root_path: str
    root_readonly: bool
    process: Process | None
    hostname: str | None
    domainname: str | None
    mounts: list[Mount]
    hooks: dict[str, list[Hook]]
    annotations: dict[str, str]
    linux: Linux
    raw: Any

    def __init__(self, **kw: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, kw.get(name))

    def hooks_of(self, kind: str) -> list[Hook]:
        return list(self.hooks.get(kind, []))


def load_config(raw: Any, bundle: str) -> Config:
    """Validate a parsed config.json and translate it into a Config; `bundle` anchors root.path."""
    top = Reader(raw)
    oci_version = top.string("ociVersion", required=True)
    _check_version(top, oci_version)
    root = top.obj("root", required=True)
    assert root is not None
    root_path = root.string("path", required=True)
    if not root_path:
        raise root.fail("path", "must not be empty")
    linux_reader = top.obj("linux") or Reader({}, "linux")
    linux = _load_linux(linux_reader)
    process_reader = top.obj("process")
    process = _load_process(process_reader) if process_reader is not None else None
    config = Config(
        oci_version=oci_version,
        root_path=os.path.normpath(os.path.join(bundle, root_path)),
        root_readonly=root.flag("readonly"),
        process=process,
        hostname=top.string("hostname"),
        domainname=top.string("domainname"),
        mounts=[_load_mount(m) for m in top.objects("mounts")],
        hooks=_load_hooks(top.obj("hooks")),
        annotations=top.string_map("annotations"),
        linux=linux,
        raw=raw,
    )
    _check_cross_fields(config)
    return config


def load_process(raw: Any, path: str = "process") -> Process:
    """A process object on its own, as `exec --process FILE` gives it."""
    return _load_process(Reader(raw, path))


def _check_version(top: Reader, version: str) -> None:
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) != SUPPORTED_OCI_MAJOR:
        raise top.fail("ociVersion", f'unsupported version "{version}" (stockade implements runtime-spec 1.x)')


def _absolute(reader: Reader, key: str | int, path: str) -> str:
    if not path.startswith("/"):
        raise reader.fail(key, f'must be an absolute path, not "{path}"')
    return path


def _load_process(r: Reader) -> Process:
    args = r.strings("args")
    if not args:
        raise r.fail("args", "must name the program to run")
    cwd = _absolute(r, "cwd", r.string("cwd", required=True))
    env = r.strings("env")
    for i, item in enumerate(env):
        if "=" not in item:
            raise SpecError(f"{r.where('env')}[{i}]", f'"{item}" is not of the form KEY=value')
    user_reader = r.obj("user") or Reader({}, r.where("user"))
    console = r.obj("consoleSize")
    caps_reader = r.obj("capabilities")
    return Process(
        terminal=r.flag("terminal"),
        console_size=(console.integer("height", 0, minimum=0), console.integer("width", 0, minimum=0))
        if console
        else None,
        user=_load_user(user_reader),
        args=args,
        env=env,
        cwd=cwd,
        capabilities=_load_capabilities(caps_reader) if caps_reader else None,
        rlimits=_load_rlimits(r),
        no_new_privileges=r.flag("noNewPrivileges"),
        oom_score_adj=_oom_score_adj(r),
        apparmor_profile=r.string("apparmorProfile"),
        selinux_label=r.string("selinuxLabel"),
        io_priority=r.data.get("ioPriority"),
        scheduler=r.data.get("scheduler"),
    )


def _oom_score_adj(r: Reader) -> int | None:
    value = r.integer("oomScoreAdj")
    if value is not None and not -1000 <= value <= 1000:
        raise r.fail("oomScoreAdj", f"must be between -1000 and 1000, not {value}")
    return value


def _load_user(r: Reader) -> User:
    gids = r.array("additionalGids")
    for i, gid in enumerate(gids):
        if not isinstance(gid, int) or isinstance(gid, bool) or gid < 0:
            raise SpecError(f"{r.where('additionalGids')}[{i}]", "must be a non-negative integer")
    if r.has("username"):
        raise r.fail("username", "is for Windows containers; use uid and gid")
    return User(
        uid=r.integer("uid", 0, minimum=0),
        gid=r.integer("gid", 0, minimum=0),
        umask=r.integer("umask", minimum=0),
        additional_gids=gids,
    )


def _load_capabilities(r: Reader) -> Capabilities:
    # Imported here so the pure check shares the kernel module's table of names.
    from stockade.kernel.caps import CAP_NUMBERS

    sets: dict[str, list[str]] = {}
    for name in CAPABILITY_SETS:
        names = r.strings(name)
        for i, cap in enumerate(names):
            if cap not in CAP_NUMBERS:
                raise SpecError(f"{r.where(name)}[{i}]", f'unknown capability "{cap}"')
        sets[name] = names
    return Capabilities(sets)


def _load_rlimits(r: Reader) -> list[Rlimit]:
    seen: set[str] = set()
    out = []
    for item in r.objects("rlimits"):
        kind = item.string("type", required=True)
        if kind not in RLIMITS:
            raise item.fail("type", f'unknown rlimit "{kind}"')
        if kind in seen:
            raise item.fail("type", f"{kind} is set twice")
        seen.add(kind)
        soft = item.integer("soft", required=True, minimum=0)
        hard = item.integer("hard", required=True, minimum=0)
        if soft > hard:
            raise item.fail("soft", f"{kind} soft limit {soft} is above its hard limit {hard}")
        out.append(Rlimit(kind, soft, hard))
    return out


def _load_mount(r: Reader) -> Mount:
    destination = _absolute(r, "destination", r.string("destination", required=True))
    if "\0" in destination or any(part == ".." for part in destination.split("/")):
        raise r.fail("destination", f'"{destination}" must not contain ".." components')
    options = r.strings("options")
    mount = Mount(
        destination=os.path.normpath(destination),
        type=r.string("type"),
        source=r.string("source"),
        options=options,
        uid_mappings=_load_mappings(r, "uidMappings"),
        gid_mappings=_load_mappings(r, "gidMappings"),
    )
    mount.plan = plan_mount(r.path, mount.destination, mount.type, mount.source, options)
    return mount


def _load_hooks(r: Reader | None) -> dict[str, list[Hook]]:
    hooks: dict[str, list[Hook]] = {}
    if r is None:
        return hooks
    for kind in HOOK_KINDS:
        for item in r.objects(kind):
            timeout = item.integer("timeout")
            if timeout is not None and timeout <= 0:
                raise item.fail("timeout", f"must be a positive number of seconds, not {timeout}")
            path = _absolute(item, "path", item.string("path", required=True))
            hooks.setdefault(kind, []).append(Hook(path, item.strings("args"), item.strings("env"), timeout))
    return hooks


def _load_mappings(r: Reader, key: str) -> list[IDMapping]:
    out = []
    for item in r.objects(key):
        out.append(
            IDMapping(
                item.integer("containerID", required=True, minimum=0),
                item.integer("hostID", required=True, minimum=0),
                item.integer("size", required=True, minimum=1),
            )
        )
    return out


def _load_namespaces(r: Reader) -> list[Namespace]:
    seen: set[str] = set()
    out = []
    for item in r.objects("namespaces"):
        kind = item.string("type", required=True)
        if kind not in NAMESPACE_TYPES:
            raise item.fail("type", f'unknown namespace type "{kind}"')
        if kind in seen:
            raise item.fail("type", f'namespace "{kind}" is listed twice')
        seen.add(kind)
        path = item.string("path")
        if path is not None:
            _absolute(item, "path", path)
        out.append(Namespace(kind, path))
    return out


def _load_devices(r: Reader) -> list[Device]:
    out = []
    for item in r.objects("devices"):
        kind = item.string("type", required=True)
        if kind not in DEVICE_TYPES:
            raise item.fail("type", f'unknown device type "{kind}" (one of c, b, u, p)')
        path = _absolute(item, "path", item.string("path", required=True))
        needs_numbers = kind != "p"
        out.append(
            Device(
                type=kind,
                path=os.path.normpath(path),
                major=item.integer("major", required=needs_numbers, minimum=0),
                minor=item.integer("minor", required=needs_numbers, minimum=0),
                file_mode=item.integer("fileMode", minimum=0),
                uid=item.integer("uid", minimum=0),
                gid=item.integer("gid", minimum=0),
            )
        )
    return out


def _load_time_offsets(r: Reader | None) -> dict[str, tuple[int, int]]:
    offsets: dict[str, tuple[int, int]] = {}
    if r is None:
        return offsets
    for clock in r.data:
        if clock not in TIME_CLOCKS:
            raise r.fail(clock, f'unknown clock "{clock}" (one of monotonic, boottime)')
        item = r.obj(clock, required=True)
        assert item is not None
        nanos = item.integer("nanosecs", 0, minimum=0)
        if nanos >= 1_000_000_000:
            raise item.fail("nanosecs", "must be below 1000000000")
        offsets[clock] = (item.integer("secs", 0), nanos)
    return offsets


def _load_personality(r: Reader | None) -> str | None:
    if r is None:
        return None
    domain = r.string("domain", required=True)
    if domain not in PERSONALITY_DOMAINS:
        raise r.fail("domain", f'unknown personality domain "{domain}" (one of LINUX, LINUX32)')
    if r.strings("flags"):
        raise r.fail("flags", "personality flags are not supported")
    return str(domain)


def _load_linux(r: Reader) -> Linux:
    propagation = r.string("rootfsPropagation")
    if propagation is not None and propagation not in ROOTFS_PROPAGATION:
        raise r.fail("rootfsPropagation", f'unknown propagation "{propagation}"')
    masked = r.strings("maskedPaths")
    readonly = r.strings("readonlyPaths")
    for key, paths in (("maskedPaths", masked), ("readonlyPaths", readonly)):
        for i, path in enumerate(paths):
            if not path.startswith("/"):
                raise SpecError(f"{r.where(key)}[{i}]", f'must be an absolute path, not "{path}"')
    resources = r.obj("resources")
    if resources is not None:
        check_resources(resources.data)
    seccomp = r.obj("seccomp")
    return Linux(
        namespaces=_load_namespaces(r),
        uid_mappings=_load_mappings(r, "uidMappings"),
        gid_mappings=_load_mappings(r, "gidMappings"),
        devices=_load_devices(r),
        cgroups_path=r.string("cgroupsPath"),
        resources=resources.data if resources else None,
        rootfs_propagation=propagation,
        masked_paths=masked,
        readonly_paths=readonly,
        mount_label=r.string("mountLabel"),
        sysctl=r.string_map("sysctl"),
        seccomp=seccomp.data if seccomp else None,
        time_offsets=_load_time_offsets(r.obj("timeOffsets")),
        personality=_load_personality(r.obj("personality")),
        intel_rdt=r.data.get("intelRdt"),
    )


def _check_cross_fields(config: Config) -> None:
    """Rules that tie several fields together."""
    linux: Linux = config.linux
    if linux.namespace("mount") is None:
        raise SpecError("linux.namespaces", "a mount namespace is required")
    userns = linux.namespace("user")
    if linux.uid_mappings and userns is None:
        raise SpecError("linux.uidMappings", "is set but no user namespace is requested")
    if userns is not None and userns.path is None:
        if not linux.uid_mappings or not linux.gid_mappings:
            raise SpecError("linux.uidMappings", "a new user namespace needs uidMappings and gidMappings")
        if config.process is not None:
            _check_mapped(config.process.user, linux)
    if linux.time_offsets and not linux.new_namespace("time"):
        raise SpecError("linux.timeOffsets", "needs a new time namespace in linux.namespaces")
    if not linux.new_namespace("uts") and (config.hostname or config.domainname):
        key = "hostname" if config.hostname else "domainname"
        raise SpecError(key, "setting it needs a new uts namespace in linux.namespaces")
    if linux.intel_rdt is not None:
        raise SpecError("linux.intelRdt", "Intel RDT is not supported")
    for i, mount in enumerate(config.mounts):
        if mount.uid_mappings or mount.gid_mappings:
            raise SpecError(f"mounts[{i}].uidMappings", "idmapped mounts are not supported yet")


def _check_mapped(user: User, linux: Linux) -> None:
    if not any(m.maps(user.uid) for m in linux.uid_mappings):
        raise SpecError("process.user.uid", f"{user.uid} is not mapped by linux.uidMappings")
    for key, gid in [("gid", user.gid)] + [(f"additionalGids[{i}]", g) for i, g in enumerate(user.additional_gids)]:
        if not any(m.maps(gid) for m in linux.gid_mappings):
            raise SpecError(f"process.user.{key}", f"{gid} is not mapped by linux.gidMappings")
