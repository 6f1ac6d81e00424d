"""`exec`: another process in a running container, with the init's namespaces, cgroup,
capabilities, seccomp filter and no_new_privs (the runtime's exec, in-process; for a container
of --runtime runc|crun|PATH, that runtime's `exec --process`). -u resolves
against the container's own /etc/passwd, -e adds to the container's environment."""

from __future__ import annotations

import os
from pathlib import Path

from stockade.engine.containers import Container, EngineError


def exec_in(
    root: Path, ctr: Container, command: list[str], env: list[str], user: str | None, workdir: str | None,
    tty: bool, interactive: bool, detach: bool,
) -> int:  # fmt: skip
    from stockade.engine import lifecycle
    from stockade.engine.plan import merge_env, resolve_user
    from stockade.runtime.exec import ExecOptions, container_config, exec_process
    from stockade.runtime.state import State
    from stockade.spec.runtime import load_process

    lifecycle.refresh(root, ctr)
    runtime = ctr.record["HostConfig"].get("Runtime") or "stockade"
    status = ctr.status()
    if status != "running":
        raise EngineError(
            f"container {ctr.name} is not running"
            if status != "paused"
            else f"container {ctr.name} is paused, unpause it first"
        )
    external = None
    if runtime != "stockade":  # the runtime's CLI; the process starts from the bundle's
        from stockade.engine.containers import read_json
        from stockade.engine.oci import External, resolve

        external = External(resolve(runtime), lifecycle.runroot_for(root))
        raw = dict(read_json(ctr.dir / "config.json").get("process") or {})
    else:
        state = State.load(str(lifecycle.runroot_for(root) / "runtime"), ctr.id)
        config = container_config(state)
        raw = dict(config.raw.get("process") or {})
    raw["args"] = command
    raw["terminal"] = tty
    raw["env"] = merge_env(list(raw.get("env") or []), env, dict(os.environ), ctr.record["Config"]["Hostname"], tty)
    raw["cwd"] = workdir or raw.get("cwd") or "/"
    if user is not None:
        rootfs = ctr.dir / "rootfs"
        passwd, group = _read(rootfs / "etc/passwd"), _read(rootfs / "etc/group")
        uid, gid, extra = resolve_user(user, passwd, group)
        raw["user"] = {"uid": uid, "gid": gid, **({"additionalGids": extra} if extra else {})}
    raw.pop("consoleSize", None)
    if detach and tty:
        raw["terminal"] = False
    if not interactive and not tty and not detach:
        _stdin_from_null()
    if external is not None:
        return external.exec(ctr.id, raw, detach)
    return exec_process(state, config, load_process(raw), ExecOptions(None, None, detach, 0))


def _stdin_from_null() -> None:
    """Without -i the process gets no input, as with docker exec."""
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def _read(path: Path) -> str:
    """A file of the container's, its symlinks resolved inside the container's root."""
    from stockade.kernel import mounts

    try:
        base = os.open(path.parent.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = mounts.openat2(base, f"etc/{path.name}", os.O_RDONLY | os.O_CLOEXEC, mounts.RESOLVE_IN_ROOT)
        finally:
            os.close(base)
        with open(fd, "rb") as f:
            return f.read(1 << 20).decode()
    except (OSError, UnicodeDecodeError):
        return ""
