"""A container's state on disk, and its status derived from the kernel each time it is read.

<root>/<id>/state.json records what cannot be recomputed: the init pid and its start time
(from /proc/PID/stat, which guards against PID reuse), the bundle, cgroup paths, annotations.
The status is never stored: "created" while the init process lives and the exec fifo exists,
"running" when it lives and the fifo is gone, "paused" when its cgroup is frozen, "stopped"
when it is gone (or a zombie), "creating" while `create` has not recorded a pid yet.
"""

from __future__ import annotations

import os

from stockade import jsonfast
from stockade.errors import ContainerError
from stockade.kernel.process import proc_start_time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

OCI_VERSION = "1.2.0"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
EXEC_FIFO = "exec.fifo"

_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ID_FIRST | frozenset("_.+-")


def valid_id(name: str) -> bool:
    """[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}, checked without `re` (its import costs ~8 ms)."""
    return 0 < len(name) <= 128 and name[0] in _ID_FIRST and all(c in _ID_CHARS for c in name)


def check_id(container_id: str) -> str:
    """Container IDs become directory names: refuse anything that could escape the state root."""
    if not valid_id(container_id):
        raise ContainerError(
            f'invalid container ID "{container_id}": use letters, digits and _ . + - (at most 128, not starting with a symbol)'
        )
    return container_id


class State:
    """What the runtime remembers about one container between commands."""

    __slots__ = (
        "annotations",
        "bundle",
        "cgroup_paths",
        "created",
        "dir",
        "id",
        "owner",
        "pid",
        "rootfs",
        "start_time",
    )

    def __init__(self, container_id: str, directory: str, bundle: str = "", rootfs: str = "") -> None:
        self.id = container_id
        self.dir = directory
        self.pid = 0
        self.start_time = 0
        self.bundle = bundle
        self.rootfs = rootfs
        self.annotations: dict[str, str] = {}
        self.created = ""
        self.cgroup_paths: dict[str, str] = {}
        self.owner = os.geteuid()

    # -- persistence --------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.pid,
            "startTime": self.start_time,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "annotations": self.annotations,
            "created": self.created,
            "cgroupPaths": self.cgroup_paths,
            "owner": self.owner,
        }

    def save(self) -> None:
        """Write state.json atomically: a temp file in the same directory, renamed. Not synced
        (as runc's): a runtime's state describes processes, which a machine's crash ends too;
        its fsync cost every start ~0.6 ms where the state root is not a tmpfs."""
        path = os.path.join(self.dir, STATE_FILE)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, jsonfast.dumps(self.to_json()).encode())
        finally:
            os.close(fd)
        os.rename(tmp, path)

    @classmethod
    def load(cls, root: str, container_id: str) -> State:
        directory = os.path.join(root, check_id(container_id))
        try:
            with open(os.path.join(directory, STATE_FILE), "rb") as f:
                data = jsonfast.loads(f.read())
        except FileNotFoundError:
            if os.path.isdir(directory):
                # create is still writing it, or died before it could: report "creating".
                return cls(container_id, directory)
            raise ContainerError(f"container {container_id} does not exist") from None
        except ValueError as e:
            raise ContainerError(f"container {container_id}: corrupt state file: {e}") from None
        state = cls(container_id, directory, data.get("bundle", ""), data.get("rootfs", ""))
        state.pid = int(data.get("pid", 0))
        state.start_time = int(data.get("startTime", 0))
        state.annotations = data.get("annotations") or {}
        state.created = data.get("created", "")
        state.cgroup_paths = data.get("cgroupPaths") or {}
        state.owner = int(data.get("owner", 0))
        return state

    def config(self) -> Any:
        """The config.json the container was created from (kept in the state directory)."""
        with open(os.path.join(self.dir, CONFIG_FILE), "rb") as f:
            return jsonfast.loads(f.read())

    # -- derived status -----------------------------------------------------------------
    def alive(self) -> bool:
        """The init process still exists, is not a zombie, and is the one we started."""
        if not self.pid:
            return False
        return proc_start_time(self.pid) == self.start_time

    def fifo_path(self) -> str:
        return os.path.join(self.dir, EXEC_FIFO)

    def status(self) -> str:
        if not self.pid:
            return "creating"
        if not self.alive():
            return "stopped"
        if os.path.exists(self.fifo_path()):
            return "created"
        if self._frozen():
            return "paused"
        return "running"

    def _frozen(self) -> bool:
        freezer = self.cgroup_paths.get("freezer")
        try:
            if freezer:
                with open(os.path.join(freezer, "freezer.state")) as f:
                    return f.read().strip() == "FROZEN"
            unified = self.cgroup_paths.get("")
            if unified and os.path.exists(os.path.join(unified, "cgroup.freeze")):
                with open(os.path.join(unified, "cgroup.freeze")) as f:
                    return f.read().strip() == "1"
        except OSError:
            return False
        return False

    def oci_state(self) -> dict[str, Any]:
        """The state document of the runtime spec, as `state` prints and hooks receive."""
        status = self.status()
        return {
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "status": status,
            "pid": self.pid if status != "stopped" else 0,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "annotations": self.annotations,
            "owner": "",
        }


def list_ids(root: str) -> list[str]:
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if valid_id(n) and os.path.isdir(os.path.join(root, n)))
