"""Writing a child's uid_map/gid_map from the parent, the only place that may do it.

Root writes /proc/PID/{uid,gid}_map directly. An unprivileged caller may write only a map of
its own single ID (after denying setgroups); anything larger goes through the setuid helpers
newuidmap/newgidmap (Debian's uidmap), which check /etc/subuid and /etc/subgid.
"""

from __future__ import annotations

import os

from stockade.errors import ContainerError
from stockade.kernel.process import write_proc_file
from stockade.spec.runtime import IDMapping


def write_id_maps(pid: int, uid_maps: list[IDMapping], gid_maps: list[IDMapping]) -> None:
    if os.geteuid() == 0 or (_only_own_id(uid_maps, os.geteuid()) and _only_own_id(gid_maps, os.getegid())):
        if os.geteuid() != 0:
            _write(pid, "setgroups", "deny")
        _write(pid, "uid_map", "".join(m.line() for m in uid_maps))
        _write(pid, "gid_map", "".join(m.line() for m in gid_maps))
        return
    _helper("newuidmap", pid, uid_maps)
    _helper("newgidmap", pid, gid_maps)


def _only_own_id(maps: list[IDMapping], own: int) -> bool:
    return len(maps) == 1 and maps[0].size == 1 and maps[0].host_id == own


def _write(pid: int, name: str, content: str) -> None:
    try:
        write_proc_file(f"/proc/{pid}/{name}", content)
    except OSError as e:
        raise ContainerError(
            f"write {name} ({content.strip()!r}): {os.strerror(e.errno or 0)}; check linux.uidMappings/gidMappings"
        ) from None


def _helper(name: str, pid: int, maps: list[IDMapping]) -> None:
    import shutil
    import subprocess

    path = shutil.which(name)
    if path is None:
        raise ContainerError(f"{name} not found: install Debian's uidmap package to map more than your own ID")
    args = [path, str(pid)]
    for m in maps:
        args += [str(m.container_id), str(m.host_id), str(m.size)]
    proc = subprocess.run(args, capture_output=True)
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip()
        raise ContainerError(f"{name} {' '.join(args[2:])}: {detail} (check /etc/sub{name[3:6]})")
