"""The new mount API wrappers (open_tree, move_mount, mount_setattr), exercised in a child
process with a private mount namespace, so the test's own namespace is never touched."""

from __future__ import annotations

import os

from conftest import requires_root
from stockade.kernel import mounts as km
from stockade.kernel import namespaces as kns

pytestmark = requires_root


def in_private_mount_namespace(body) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            kns.unshare(kns.CLONE_NEWNS)
            km.mount(None, "/", None, km.MS_REC | km.MS_PRIVATE)
            code = body()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_open_tree_clone_move_mount_and_read_only_attr(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()

    def body() -> int:
        km.mount("tmpfs", str(src), "tmpfs", 0, "size=1m")
        (src / "file").write_text("through a detached mount")
        tree = km.open_tree(-100, str(src), km.OPEN_TREE_CLONE | km.OPEN_TREE_CLOEXEC)
        km.mount_setattr(tree, "", km.AT_EMPTY_PATH, km.MOUNT_ATTR_RDONLY)
        km.move_mount(tree, "", -100, str(dst), km.MOVE_MOUNT_F_EMPTY_PATH)
        os.close(tree)
        if (dst / "file").read_text() != "through a detached mount":
            return 2
        try:
            (dst / "new").write_text("x")
        except OSError as e:
            return 0 if e.errno == 30 else 3  # EROFS
        return 4

    assert in_private_mount_namespace(body) == 0
    assert not (src / "file").exists(), "the mount leaked out of the child's namespace"


def test_openat2_in_root_clamps_absolute_symlinks(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "marker").write_text("inside")
    os.symlink("/etc", root / "link")
    rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = km.openat2(rootfd, "link/marker", os.O_RDONLY, km.RESOLVE_IN_ROOT)
        assert os.read(fd, 100) == b"inside"
        os.close(fd)
    finally:
        os.close(rootfd)
