"""`create`: an image and a CreateRequest become a container directory with an OCI bundle.

Order, and why:
  1. the image is found (or pulled) and read  - nothing is made for a name that resolves to nothing
  2. the name is taken under the names lock   - two creates cannot both get "web"
  3. an isolated ID range is allocated        - every container's root is a different host uid
  4. the image is held                        - prune cannot take layers a container runs on
  5. config.json is written                   - the contract with the runtime
Any failure after step 2 undoes 2..4, so a bad flag leaves no directory, range or hold behind.
The root filesystem itself is mounted by the monitor at each start and unmounted at each exit,
so stopped containers hold no mounts.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import resource
import shutil
from pathlib import Path
from typing import Any

from stockade.engine import names
from stockade.engine.containers import Container, Containers, EngineError, now_rfc3339, write_json
from stockade.engine.idranges import Allocator, IDMap, keep_id_map
from stockade.engine.options import CreateRequest, MountRequest, capabilities
from stockade.engine.plan import PlanError, container_config
from stockade.image.store import Image, ImageError, Store

INIT_PATH = "/run/stockade-init"
HOST_INIT = "/usr/bin/catatonit"
HOLD_PREFIX = "ctr-"


def store_of(root: Path) -> Store:
    return Store(root / "images").init()


def allocator(root: Path) -> Allocator:
    """ID ranges from /etc/subuid and /etc/subgid ($STOCKADE_SUBUID/$STOCKADE_SUBGID for tests)."""
    return Allocator(
        root,
        Path(os.environ.get("STOCKADE_SUBUID", "/etc/subuid")),
        Path(os.environ.get("STOCKADE_SUBGID", "/etc/subgid")),
    )


def resolve_image(store: Store, text: str, pull: bool = True) -> Image:
    """A local image, or one pulled now (as docker run does); an error suggests near names."""
    try:
        return store.lookup(text)
    except ImageError as local_error:
        if "/" not in text and "." not in text.split(":")[0]:
            with contextlib.suppress(ImageError):
                return store.lookup("localhost/" + text)  # images built or imported here
        from stockade.spec.image import ImageReferenceError, parse_reference

        try:
            ref = parse_reference(text)
        except ImageReferenceError as exc:
            raise EngineError(f'invalid image reference "{text}": {exc}') from None
        if pull:
            from stockade.image.transfer import pull as pull_image

            try:
                pull_image(store, ref, quiet=True)
                return store.lookup(text)
            except (ImageError, OSError):
                pass
        known = sorted({n.repository.rsplit("/", 1)[-1] for i in store.images() for n in i.names})
        close = difflib.get_close_matches(text.split(":")[0].rsplit("/", 1)[-1], known, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise EngineError(f'image "{text}" not found locally or in {ref.domain}{hint}') from local_error


def image_file(store: Store, image: Image, path: str) -> str:
    """A text file from the image's layers (top layer first), "" if absent or whited out."""
    from stockade.image.layers import layer_dir

    rel = path.lstrip("/")
    for diff_id in reversed(image.config.diff_ids):
        base = layer_dir(store, diff_id) / "diff"
        candidate = base / rel
        if candidate.is_symlink() or not candidate.exists():
            if os.path.lexists(base / os.path.dirname(rel) / (".wh." + os.path.basename(rel))):
                return ""
            continue
        with contextlib.suppress(OSError, UnicodeDecodeError):
            return candidate.read_text()
        return ""
    return ""


def host_hard_limit(kind: str) -> int:
    number = getattr(resource, kind)
    hard = resource.getrlimit(number)[1]
    return 2**64 - 1 if hard == resource.RLIM_INFINITY else int(hard)


def default_rlimits() -> list[dict[str, Any]]:
    """Docker's nofile 1048576, but never above what this host lets us set (without
    CAP_SYS_RESOURCE a higher hard limit fails with EPERM, as podman's defaults do here)."""
    limit = min(1048576, host_hard_limit("RLIMIT_NOFILE"))
    return [{"type": "RLIMIT_NOFILE", "soft": limit, "hard": limit}]


def create(root: Path, req: CreateRequest) -> Container:
    containers = Containers(root).init()
    store = store_of(root)
    image = resolve_image(store, req.image)
    image_name = req.image
    with containers.names_lock():
        taken = {c.name: c for c in containers.all()}
        if req.name is not None:
            name = names.check_name(req.name)
            if name in taken:
                raise EngineError(f'name "{name}" is already in use by container {taken[name].id[:12]}; '
                                  "remove or rename that container first")  # fmt: skip
        else:
            name = names.generate(taken)
        cid = _unused_id(containers)
        cdir = containers.dir / cid
        cdir.mkdir(mode=0o711)
        ctr = Container(cdir, _record(cid, name, image, image_name, req), {"Status": "created"})
        ctr.save_record()
    try:
        _make_bundle(root, store, image, ctr, req)
    except BaseException:
        remove_leftovers(root, cid)
        raise
    return ctr


def _unused_id(containers: Containers) -> str:
    from stockade.engine.containers import new_id

    while True:
        cid = new_id()
        if not cid[:12].isdigit() and not (containers.dir / cid).exists():  # docker avoids all-digit short IDs
            return cid


def _record(cid: str, name: str, image: Image, image_name: str, req: CreateRequest) -> dict[str, Any]:
    run = req.run
    restart, retries = _restart(req.restart)
    return {
        "Id": cid,
        "Created": now_rfc3339(),
        "Name": "/" + name,
        "Image": image.id,
        "ImageName": image_name,
        "ImageManifest": image.manifest_digest,
        "Config": {
            "Hostname": run.hostname or cid[:12],
            "User": run.user or "",
            "Env": [],
            "Cmd": run.command or None,
            "Entrypoint": run.entrypoint,
            "Image": image_name,
            "WorkingDir": run.workdir or "",
            "Labels": {**image.config.labels, **req.labels},
            "Tty": run.tty,
            "OpenStdin": req.interactive,
            "StdinOnce": req.interactive,
            "AttachStdin": req.interactive,
            "AttachStdout": True,
            "AttachStderr": True,
            "StopSignal": req.stop_signal,
            "StopTimeout": req.stop_timeout,
            "ExposedPorts": {p: {} for p in image.config.exposed_ports},
        },
        "HostConfig": {
            "AutoRemove": req.auto_remove,
            "Privileged": req.privileged,
            "ReadonlyRootfs": run.read_only,
            "Init": req.init,
            "RestartPolicy": {"Name": restart, "MaximumRetryCount": retries},
            "NetworkMode": (req.networks or ["bridge"])[0],
            "UsernsMode": req.userns,
            "CapAdd": req.cap_add,
            "CapDrop": req.cap_drop,
            "SecurityOpt": req.security_opt,
            "Memory": req.memory,
            "MemorySwap": req.memory_swap,
            "NanoCpus": int(req.cpus * 1e9),
            "CpuShares": req.cpu_shares,
            "CpusetCpus": req.cpuset_cpus,
            "PidsLimit": req.pids_limit,
            "Ulimits": req.ulimits,
            "Mounts": [m.to_json() for m in req.mounts],
            "Annotations": req.annotations,
            "LogConfig": {"Type": "json-file", "Config": _log_config(req)},
            "Runtime": req.runtime or "stockade",
        },
        "Driver": "overlay",
    }


def _restart(spec: str) -> tuple[str, int]:
    from stockade.engine.options import parse_restart

    return parse_restart(spec)


def _log_config(req: CreateRequest) -> dict[str, str]:
    out = {}
    if req.log_max_size:
        out["max-size"] = str(req.log_max_size)
        out["max-file"] = str(req.log_max_file)
    return out


def _make_bundle(root: Path, store: Store, image: Image, ctr: Container, req: CreateRequest) -> None:
    if req.auto_remove and req.restart not in ("no", ""):
        raise PlanError("--rm and --restart cannot be used together (conflicting options)")
    if req.runtime not in ("", "stockade"):
        from stockade.engine.oci import resolve

        resolve(req.runtime)
    if req.init and not os.path.exists(HOST_INIT):
        raise PlanError(f"--init needs {HOST_INIT} (Debian package catatonit)")
    idmap = _id_map(root, ctr.id, req)
    store.hold(HOLD_PREFIX + ctr.id, image.manifest_digest, durable=ctr.durable)
    passwd = group = ""
    if req.run.user or image.config.user:  # only -u/USER need the image's user database
        passwd, group = image_file(store, image, "/etc/passwd"), image_file(store, image, "/etc/group")
    host_env = dict(os.environ)
    config = container_config(image.config, req.run, idmap or IDMap(0, 0, 0), host_env, passwd, group)
    if req.run.hostname == "":
        config["hostname"] = ctr.id[:12]
        config["process"]["env"] = [
            f"HOSTNAME={ctr.id[:12]}" if e.startswith("HOSTNAME=") else e for e in config["process"]["env"]
        ]
    ctr.record["Config"]["Env"] = config["process"]["env"]
    ctr.record["Config"]["Cmd"] = req.run.command or image.config.cmd or None
    ctr.record["Config"]["Entrypoint"] = (
        req.run.entrypoint if req.run.entrypoint is not None else image.config.entrypoint
    )
    ctr.record["Path"], *ctr.record["Args"] = config["process"]["args"]
    if idmap is None:
        _no_user_namespace(config)
    else:
        ctr.record["IDMap"] = idmap.record()
    _security(config, req)
    _intercept(root, ctr, config, req)
    _resources(config, req)
    config["process"]["rlimits"] = _rlimits(req)
    resolvers = _network(root, ctr, config, req, image)
    _etc_files(ctr, config, idmap, resolvers, req)
    if req.userns == "keep-id" and not req.run.user:
        _keep_id_user(ctr, config, idmap, store, image)
    _mounts(root, ctr, config, req, image)
    if req.init:
        config["mounts"].append(
            {"destination": INIT_PATH, "type": "bind", "source": HOST_INIT, "options": ["bind", "ro"]}
        )
        config["process"]["args"] = [INIT_PATH, "--", *config["process"]["args"]]
    config["annotations"] = {**req.annotations, "io.stockade.name": ctr.name}
    (ctr.dir / "rootfs").mkdir(exist_ok=True)
    write_json(ctr.dir / "config.json", config, ctr.durable)
    ctr.save_record()


def _id_map(root: Path, cid: str, req: CreateRequest) -> IDMap | None:
    if req.privileged or req.userns == "host":
        return None
    if req.userns == "keep-id":
        from stockade.engine import rootless

        if not rootless.active():
            raise PlanError("--userns keep-id is for rootless containers (root's have no user of their own to keep)")
        uid, gid = rootless.host_ids()
        return keep_id_map(uid, gid, min(65536, rootless.container_id_map_size()))
    if req.userns not in ("", "auto", "private"):
        raise PlanError(f"--userns {req.userns}: unknown mode (want host, auto, private or keep-id)")
    return allocator(root).allocate(cid)


def _no_user_namespace(config: dict[str, Any]) -> None:
    linux = config["linux"]
    linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "user"]
    linux.pop("uidMappings", None)
    linux.pop("gidMappings", None)


def _security(config: dict[str, Any], req: CreateRequest) -> None:
    from stockade.kernel.caps import CAP_NAMES, last_cap
    from stockade.spec.profiles import DOCKER_DEFAULT_CAPS, default_seccomp

    process, linux = config["process"], config["linux"]
    if req.privileged:
        every = list(CAP_NAMES[: last_cap() + 1])
        process["capabilities"] = {k: every for k in ("bounding", "effective", "permitted")}
        linux.pop("seccomp", None)
        linux["maskedPaths"], linux["readonlyPaths"] = [], []
        linux["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
        config["mounts"] = [m for m in config["mounts"] if m["destination"] not in ("/dev", "/sys")]
        config["mounts"] += [
            {"destination": "/dev", "type": "bind", "source": "/dev", "options": ["rbind", "nosuid"]},
            {"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev"]},
        ]  # fmt: skip
        process["noNewPrivileges"] = False
        return
    caps = capabilities(list(DOCKER_DEFAULT_CAPS), req.cap_add, req.cap_drop)
    process["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")}
    linux["seccomp"] = default_seccomp(caps)
    for opt in req.security_opt:
        key, _, value = opt.replace(":", "=", 1).partition("=")
        if key == "no-new-privileges":
            process["noNewPrivileges"] = value in ("", "true")
        elif key == "seccomp" and value == "unconfined":
            linux.pop("seccomp", None)
        elif key == "seccomp" and value:
            import json

            try:
                with open(value, "rb") as f:
                    linux["seccomp"] = json.loads(f.read())
            except (OSError, ValueError) as exc:
                raise PlanError(f"--security-opt seccomp={value}: {exc}") from None
        elif key == "intercept":
            if value != "mknod":
                raise PlanError(f"--security-opt intercept={value}: only mknod can be intercepted")
        else:
            raise PlanError(
                f'--security-opt "{opt}": unknown option (want seccomp=FILE|unconfined, no-new-privileges, intercept=mknod)'
            )


def _intercept(root: Path, ctr: Container, config: dict[str, Any], req: CreateRequest) -> None:
    """--security-opt intercept=mknod: mknod/mknodat go to the container's monitor through
    seccomp notify; it creates the harmless character devices (null, zero, full, random,
    urandom, tty) for the container and refuses the rest (runtime/mediation.py)."""
    from stockade.engine.lifecycle import notify_socket, runroot_for

    path = notify_socket(runroot_for(root), ctr)
    if path is None:
        return
    from stockade.engine import rootless
    from stockade.spec.profiles import with_mknod_mediation

    if rootless.active():
        raise PlanError("--security-opt intercept=mknod: rootless, nobody may create device nodes for the container")
    if config["linux"].get("seccomp") is None:
        raise PlanError(
            "--security-opt intercept=mknod needs a seccomp profile (not seccomp=unconfined or --privileged)"
        )
    config["linux"]["seccomp"] = with_mknod_mediation(config["linux"]["seccomp"], str(path))


def _resources(config: dict[str, Any], req: CreateRequest) -> None:
    res = config["linux"].setdefault("resources", {})
    if req.memory:
        res.setdefault("memory", {})["limit"] = req.memory
    if req.memory_swap:
        if not req.memory:
            raise PlanError("--memory-swap needs --memory as well")
        if req.memory_swap != -1 and req.memory_swap < req.memory:
            raise PlanError("--memory-swap must be at least --memory (it is memory plus swap)")
        res.setdefault("memory", {})["swap"] = req.memory_swap
    cpu: dict[str, Any] = {}
    if req.cpus:
        cpu["period"], cpu["quota"] = 100000, int(req.cpus * 100000)
    if req.cpu_shares:
        cpu["shares"] = req.cpu_shares
    if req.cpuset_cpus:
        cpu["cpus"] = req.cpuset_cpus
    if cpu:
        res["cpu"] = cpu
    if req.pids_limit is not None:
        res["pids"] = {"limit": req.pids_limit if req.pids_limit > 0 else -1}
    from stockade.engine import rootless

    if rootless.active() and not _cgroup_delegated():
        _without_cgroup(config, req)


def _cgroup_delegated() -> bool:
    from stockade.runtime import cgroups

    layout = cgroups.detect_layout()
    return layout.kind == "unified" and cgroups.delegated_parent(layout, cgroups.own_cgroups()) is not None


def _without_cgroup(config: dict[str, Any], req: CreateRequest) -> None:
    """Rootless on a host that gave the user no cgroup (cgroup v1, or v2 without systemd's
    delegation): no limits can be applied, so none are asked of the runtime; the default pids
    limit goes quietly, limits the user asked for with a warning (as podman does)."""
    import sys

    asked = [flag for flag, value in (("--memory", req.memory), ("--memory-swap", req.memory_swap),
             ("--cpus", req.cpus), ("--cpu-shares", req.cpu_shares), ("--cpuset-cpus", req.cpuset_cpus),
             ("--pids-limit", req.pids_limit)) if value]  # fmt: skip
    if asked:
        print(
            f"WARNING: {', '.join(asked)} ignored: rootless containers get no cgroup on this host"
            " (cgroup v2 with a delegated subtree is needed)",
            file=sys.stderr,
        )
    linux = config["linux"]
    linux["resources"] = {k: v for k, v in linux.get("resources", {}).items() if k == "devices"}
    linux.pop("cgroupsPath", None)


def _rlimits(req: CreateRequest) -> list[dict[str, Any]]:
    limits = {r["type"]: r for r in default_rlimits()}
    for r in req.ulimits:
        limits[r["type"]] = r
    return list(limits.values())


def _network(root: Path, ctr: Container, config: dict[str, Any], req: CreateRequest, image: Image) -> list[str]:
    """The network mode into the record and the bundle; the nameservers the container gets
    ([] for the host's)."""
    from stockade.engine import rootless
    from stockade.network.config import exposed_bindings, port_bindings_json

    names = req.networks or ["" if rootless.active() else "bridge"]
    mode = names[0]
    namespaces = config["linux"]["namespaces"]
    bindings = list(req.publish) + (exposed_bindings(image.config.exposed_ports) if req.publish_all else [])
    host_config = ctr.record["HostConfig"]
    if rootless.active() and mode not in ("none", "host") and not mode.startswith("container:"):
        return _usermode_network(ctr, names, bindings, req)
    if mode in ("none", "host") or mode.startswith("container:"):
        if len(names) > 1:
            raise PlanError(f"--network {mode} cannot be combined with other networks")
        if req.ip or req.aliases:
            raise PlanError("--ip and --network-alias need a user-defined network")
        if bindings:
            import sys

            print(f"WARNING: published ports are discarded when using --network {mode.split(':')[0]}", file=sys.stderr)
            bindings = []
    if mode == "host":
        config["linux"]["namespaces"] = [n for n in namespaces if n["type"] != "network"]
        config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/sys"] + [
            {"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
        ]  # fmt: skip
    elif mode.startswith("container:"):
        target = Containers(root).find(mode.split(":", 1)[1])
        if target.id == ctr.id:
            raise PlanError("--network container: a container cannot join its own network namespace")
        mode = "container:" + target.id
        for n in namespaces:
            if n["type"] == "network":
                n["path"] = "/proc/self/ns/net"  # replaced by the target's at each start
    host_config["NetworkMode"] = mode
    host_config["PortBindings"] = port_bindings_json(bindings)
    host_config["PublishAllPorts"] = req.publish_all
    host_config["Dns"], host_config["ExtraHosts"] = list(req.dns), list(req.add_hosts)
    for b in bindings:
        ctr.record["Config"]["ExposedPorts"].setdefault(b.key, {})
    wanted: dict[str, Any] = {}
    resolvers: list[str] = []
    if mode not in ("none", "host") and not mode.startswith("container:"):
        from stockade.network.store import Networks

        store = Networks(root)
        for i, name in enumerate(names):
            net = store.find(name)
            if net.driver != "bridge":
                raise PlanError(f"--network {name}: {net.driver} networks cannot be combined with others")
            if net.name in wanted:
                raise PlanError(f"--network {name}: given twice")
            if i == 0 and (req.ip or req.aliases) and net.name == "bridge":
                raise PlanError("--ip and --network-alias need a user-defined network (not the default bridge)")
            if i == 0 and req.ip:
                from stockade.network.config import check_ip

                check_ip(req.ip)
            wanted[net.name] = {
                "IPAMConfig": {"IPv4Address": req.ip} if i == 0 and req.ip else None,
                "Aliases": list(req.aliases) if i == 0 else [],
                "NetworkID": net.id,
            }
            if i == 0 and net.dns:
                resolvers = [str(net.gateway)]  # its DNS responder
    ctr.record["NetworkSettings"] = {"Networks": wanted}
    return list(req.dns) or resolvers


def _usermode_network(ctr: Container, names: list[str], bindings: list[Any], req: CreateRequest) -> list[str]:
    """Rootless: pasta or slirp4netns (see network/usermode.py) instead of bridge networks."""
    from stockade.network.config import port_bindings_json
    from stockade.network.usermode import DRIVERS, check_options, choose, split_mode

    driver, options = split_mode(names[0])
    if len(names) > 1 or (driver and driver not in DRIVERS):
        raise PlanError(
            f"--network {','.join(names)}: rootless containers cannot join bridge networks (that needs root);"
            " use pasta, slirp4netns, host or none"
        )
    if req.ip or req.aliases:
        raise PlanError("--ip and --network-alias need a user-defined network (rootless: not available)")
    check_options(driver, options)
    driver, reason = choose(driver)
    host_config = ctr.record["HostConfig"]
    host_config["NetworkMode"] = driver + (":" + ",".join(options) if options else "")
    host_config["PortBindings"] = port_bindings_json(bindings)
    host_config["PublishAllPorts"] = req.publish_all
    host_config["Dns"], host_config["ExtraHosts"] = list(req.dns), list(req.add_hosts)
    for b in bindings:
        ctr.record["Config"]["ExposedPorts"].setdefault(b.key, {})
    ctr.record["NetworkSettings"] = {
        "Networks": {},
        "RootlessNetwork": {"Driver": driver, "Reason": reason, "Options": options},
    }
    return list(req.dns)


def _etc_files(
    ctr: Container, config: dict[str, Any], idmap: IDMap | None, resolvers: list[str], req: CreateRequest
) -> None:
    """/etc/hostname, /etc/hosts, /etc/resolv.conf as Docker gives them, owned by the container's root
    (hosts gets the container's address at each start)."""
    from stockade.engine.networking import hosts_text

    hostname = config["hostname"]
    files = {
        "hostname": f"{hostname}\n",
        "hosts": hosts_text(hostname, "", list(req.add_hosts)),
        "resolv.conf": _resolv_conf(resolvers),
    }
    for name, text in files.items():
        _bind_etc_file(ctr, config, idmap, name, text)


def _bind_etc_file(ctr: Container, config: dict[str, Any], idmap: IDMap | None, name: str, text: str) -> None:
    """/etc/`name` in the container: a file of ours (in the container's directory, owned by
    its root), bind-mounted over the image's."""
    path = ctr.dir / name
    path.write_text(text)
    os.chmod(path, 0o644)
    if idmap is not None:
        os.chown(path, idmap.uid_start, idmap.gid_start)
    config["mounts"].append(
        {"destination": f"/etc/{name}", "type": "bind", "source": str(path), "options": ["bind", "nosuid", "nodev", "noexec"]}
    )  # fmt: skip


def _keep_id_user(ctr: Container, config: dict[str, Any], idmap: IDMap | None, store: Store, image: Image) -> None:
    """--userns keep-id: the process is the user itself (its uid and gid), known by name in the
    container's /etc/passwd and /etc/group (the image's, with it added, as podman does), with
    HOME its home directory unless the image or -e set another."""
    import pwd

    from stockade.engine.plan import with_user
    from stockade.engine.rootless import host_ids

    uid, gid = host_ids()
    config["process"]["user"] = {"uid": uid, "gid": gid}
    try:
        entry = pwd.getpwuid(uid)
        name, home = entry.pw_name, entry.pw_dir
    except KeyError:
        name, home = os.environ.get("USER") or f"user{uid}", "/"
    passwd, group = (image_file(store, image, f"/etc/{base}") for base in ("passwd", "group"))
    passwd, group = with_user(passwd, group, name, uid, gid, home)
    _bind_etc_file(ctr, config, idmap, "passwd", passwd)
    _bind_etc_file(ctr, config, idmap, "group", group)
    env = config["process"]["env"]
    if "HOME=/root" in env or not any(e.startswith("HOME=") for e in env):
        config["process"]["env"] = [e for e in env if not e.startswith("HOME=")] + [f"HOME={home}"]


def _resolv_conf(resolvers: list[str]) -> str:
    """The host's, without loopback resolvers the container cannot reach; `resolvers` (--dns,
    or a user-defined network's responder) replace its nameservers."""
    try:
        with open("/etc/resolv.conf") as f:
            lines = [ln for ln in f.read().splitlines() if not ln.startswith("nameserver 127.")]
    except OSError:
        lines = []
    if resolvers:
        lines = [f"nameserver {r}" for r in resolvers] + [ln for ln in lines if not ln.startswith("nameserver")]
    if not any(ln.startswith("nameserver") for ln in lines):
        lines += ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]  # what Docker falls back to
    return "\n".join(lines) + "\n"


def _mounts(root: Path, ctr: Container, config: dict[str, Any], req: CreateRequest, image: Image) -> None:
    from stockade.engine.volumes import Volumes

    volumes = Volumes(root)
    wanted = list(req.mounts)
    targets = {m.target for m in wanted}
    for path in image.config.volumes:  # the image's VOLUME list: anonymous volumes
        if path not in targets:
            wanted.append(MountRequest("volume", path))
    recorded = []
    for i, m in enumerate(wanted):
        if m.type == "volume":
            if not m.source:
                m.source = volumes.create(None, anonymous=True, container=ctr.id).name
            else:
                volumes.create(m.source, exist_ok=True)
            volumes.add_user(m.source, ctr.id)
            source = str(ctr.dir / "volumes" / str(i))  # the monitor attaches it here, idmapped
            options = ["rbind", "ro" if m.read_only else "rw"]
        elif m.type == "bind":
            source = m.source
            if not os.path.exists(source):
                if m.options == ["--mount"]:
                    raise PlanError(f"bind source path does not exist: {source}")
                os.makedirs(source, exist_ok=True)  # -v creates a missing host directory, as docker does
            options = ["rbind", "ro" if m.read_only else "rw"]
        else:
            source = "tmpfs"
            options = ["nosuid", "nodev", "noexec", *m.options]
        config["mounts"].append({"destination": m.target, "type": m.type if m.type == "tmpfs" else "bind",
                                 "source": source, "options": options})  # fmt: skip
        recorded.append(m.to_json())
    ctr.record["HostConfig"]["Mounts"] = recorded


def remove_leftovers(root: Path, cid: str) -> None:
    """Undo what create made: the ID range, the image hold, volume uses, the directory."""
    from stockade.engine.volumes import Volumes

    with contextlib.suppress(Exception):
        allocator(root).release(cid)
    with contextlib.suppress(Exception):
        store_of(root).release(HOLD_PREFIX + cid)
    with contextlib.suppress(Exception):
        Volumes(root).drop_user(cid)
    shutil.rmtree(Containers(root).dir / cid, ignore_errors=True)
