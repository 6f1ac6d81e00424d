"""Shared test harness: a busybox bundle, a runtime runner, and a leftover check.

RUNTIME=/usr/bin/crun (or runc) runs the same integration tests against a peer runtime.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from stockade.image.busybox import build_rootfs
from stockade.spec.defaults import default_config

RUNTIME = os.environ.get("RUNTIME") or str(Path(sys.executable).parent / "stockade-runtime")
IS_ROOT = os.geteuid() == 0
USERNS_BASE = 100000
USERNS_SIZE = 65536

requires_root = pytest.mark.skipif(not IS_ROOT, reason="needs root on the real kernel")


HELPER_SOURCE = Path(__file__).resolve().parent / "helpers" / "escape.c"


@pytest.fixture(scope="session")
def escape_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/helpers/escape.c built static: attacks, floods and hogs run inside containers."""
    prebuilt = os.environ.get("STOCKADE_HELPER_BINARY")  # the cgroup v2 VM brings one
    if prebuilt:
        return Path(prebuilt)
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    out = tmp_path_factory.mktemp("helper") / "escape"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(out), str(HELPER_SOURCE)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def rootfs_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("rootfs-template")
    return Path(build_rootfs(str(base / "rootfs")))


class Bundle:
    """A bundle directory with its own rootfs copy and a config dict to edit before writing."""

    def __init__(self, path: Path, template: Path) -> None:
        self.path = path
        self.rootfs = path / "rootfs"
        shutil.copytree(template, self.rootfs, symlinks=True)
        self.config: dict[str, Any] = default_config(args=["true"], terminal=False)
        self.config["hostname"] = "testbox"

    @property
    def process(self) -> dict[str, Any]:
        return self.config["process"]

    @property
    def linux(self) -> dict[str, Any]:
        return self.config["linux"]

    def args(self, *args: str) -> Bundle:
        self.process["args"] = list(args)
        return self

    def sh(self, script: str) -> Bundle:
        return self.args("sh", "-c", script)

    def userns_maps(self, base: int = USERNS_BASE) -> Bundle:
        """Run in a new user namespace mapping 0..65535 to base.. (the rootfs as it is)."""
        self.linux["namespaces"].append({"type": "user"})
        self.linux["uidMappings"] = [{"containerID": 0, "hostID": base, "size": USERNS_SIZE}]
        self.linux["gidMappings"] = [{"containerID": 0, "hostID": base, "size": USERNS_SIZE}]
        return self

    def userns(self, base: int = USERNS_BASE) -> Bundle:
        """Run in a new user namespace mapping 0..65535 to base.., rootfs owned by its root."""
        self.userns_maps(base)
        for dirpath, dirs, files in os.walk(self.rootfs):
            for name in dirs + files:
                os.lchown(os.path.join(dirpath, name), base, base)
        os.lchown(self.rootfs, base, base)
        return self

    def rootless(self, host_id: int) -> Bundle:
        """What an unprivileged caller can run: a user namespace mapping only its own id,
        no cgroup mount, devpts without gid=5; the bundle is given to that id."""
        self.linux["namespaces"].append({"type": "user"})
        self.linux["uidMappings"] = [{"containerID": 0, "hostID": host_id, "size": 1}]
        self.linux["gidMappings"] = [{"containerID": 0, "hostID": host_id, "size": 1}]
        self.linux.pop("resources", None)
        self.config["mounts"] = [m for m in self.config["mounts"] if m["type"] != "cgroup"]
        for m in self.config["mounts"]:
            if m["type"] == "devpts":
                m["options"] = [o for o in m["options"] if not o.startswith("gid=")]
        return self

    def give_to(self, uid: int) -> None:
        """Write the config and hand the whole bundle to `uid`."""
        self.write()
        for dirpath, dirs, files in os.walk(self.path):
            for name in dirs + files:
                os.lchown(os.path.join(dirpath, name), uid, uid)

    def secure(self, base: int = USERNS_BASE) -> Bundle:
        """The defaults every engine container gets: own user namespace, Docker's capabilities,
        the default seccomp profile, no_new_privs, masked paths, a pids limit."""
        from stockade.spec.defaults import apply_secure_defaults

        self.userns(base)
        apply_secure_defaults(self.config, base)
        return self

    def writable(self) -> Bundle:
        self.config["root"]["readonly"] = False
        return self

    def write(self) -> Path:
        (self.path / "config.json").write_text(json.dumps(self.config, indent=1))
        return self.path

    def copy_config(self) -> dict[str, Any]:
        return copy.deepcopy(self.config)


@pytest.fixture
def bundle(tmp_path: Path, rootfs_template: Path) -> Bundle:
    path = tmp_path / "bundle"
    path.mkdir()
    # A container's mapped root (uid 100000 on the host) must be able to reach the rootfs:
    # make every directory above it searchable, as pytest makes its base directory 0700.
    for directory in [tmp_path, *tmp_path.parents]:
        if str(directory) in ("/", "/tmp"):
            break
        mode = os.stat(directory).st_mode
        if mode & 0o011 != 0o011:  # (the tree may be read-only where it is already searchable)
            os.chmod(directory, mode | 0o011)
    return Bundle(path, rootfs_template)


class Runtime:
    """Runs the runtime binary with its own --root; remembers the containers it made."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.binary = RUNTIME

    def cmd(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), *args]

    def __call__(
        self, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 60, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.cmd(*args),
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def state(self, container_id: str) -> dict[str, Any]:
        return json.loads(self("state", container_id).stdout)

    def detached(self, bundle: Bundle, container_id: str, *flags: str) -> dict[str, Any]:
        """`run -d`: the container keeps the stdio it is given, so it gets files, not our pipes."""
        bundle.write()
        log = bundle.path / f"{container_id}.out"
        with open(log, "w") as out:
            proc = subprocess.run(
                self.cmd("run", "-d", "--bundle", str(bundle.path), *flags, container_id),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                timeout=60,
            )
        if proc.returncode != 0:
            raise AssertionError(f"run -d {container_id} failed: {log.read_text().strip()}")
        return self.state(container_id)

    def run_output(self, bundle: Bundle, container_id: str | None = None) -> str:
        bundle.write()
        proc = self("run", "--bundle", str(bundle.path), container_id or new_id())
        return proc.stdout


def new_id() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def runtime(tmp_path: Path) -> Any:
    root = tmp_path / "state"
    rt = Runtime(root)
    yield rt
    # Whatever a test left running is removed before the leftover check looks.
    if root.exists():
        for name in [n for n in os.listdir(root) if not n.startswith(".")]:
            subprocess.run(rt.cmd("delete", "--force", name), capture_output=True, timeout=30)


def _mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if path in line]


def _stockade_parents() -> set[str]:
    """The parent cgroups containers are made under by default (one per hierarchy)."""
    base = "/sys/fs/cgroup"
    candidates = [os.path.join(base, "stockade")] + [os.path.join(base, h, "stockade") for h in os.listdir(base)]
    return {p for p in candidates if os.path.isdir(p)}


def _stockade_cgroups() -> list[str]:
    """Containers' cgroups: the directories under the parents (whose control files, and the
    parents themselves, which the runtime keeps, are not a container's)."""
    return [
        os.path.join(parent, d)
        for parent in _stockade_parents()
        for d in os.listdir(parent)
        if os.path.isdir(os.path.join(parent, d))
    ]


def _processes_rooted_under(path: str) -> list[int]:
    """Processes whose root directory is a rootfs under `path`: a container still running."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/root").startswith(path):
                    found.append(int(name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="session", autouse=True)
def removes_parent_cgroups() -> Any:
    """The runtime keeps its parent cgroup (/stockade) as Docker keeps /docker; the session
    removes those it made, to leave the machine as it found it."""
    before = _stockade_parents() if IS_ROOT else set()
    yield
    for path in sorted(_stockade_parents() - before if IS_ROOT else set()):
        with contextlib.suppress(OSError):
            os.rmdir(path)


@pytest.fixture(autouse=True)
def leaves_nothing_behind(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Every test must leave the machine as it found it: no mounts under its tmp dir, no
    stockade cgroups, no state directories, no processes from its bundle."""
    before_cgroups = set(_stockade_cgroups()) if IS_ROOT else set()
    yield
    if "unit" in str(request.node.fspath):
        return
    # (autouse fixtures are set up first, so the runtime fixture's clean-up has already run)
    leftovers = []
    mounts = _mounts_under(str(tmp_path))
    if mounts:
        leftovers.append(f"mounts: {mounts[:3]}")
    cgroups = set(_stockade_cgroups()) - before_cgroups if IS_ROOT else set()
    if cgroups:
        leftovers.append(f"cgroups: {sorted(cgroups)[:3]}")
    state = tmp_path / "state"
    left = [n for n in os.listdir(state) if not n.startswith(".")] if state.exists() else []  # (.seccomp-cache)
    if left:
        leftovers.append(f"state dirs: {left}")
    processes = _processes_rooted_under(str(tmp_path))
    if processes:
        leftovers.append(f"processes: {processes[:5]}")
    assert not leftovers, "test left behind: " + "; ".join(leftovers)
