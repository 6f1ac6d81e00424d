"""A container's root filesystem from an image: overlayfs over the shared unpacked layers.

Drivers, best first:
- overlay + idmapped layers: each layer is cloned as a detached mount, idmapped into the
  container's ID map (mount_setattr MOUNT_ATTR_IDMAP), and handed to overlayfs by fd
  ("lowerdir+"), so one unpacked copy serves every ID map and no option string can overflow;
- overlay + chowned copies: where the kernel or filesystem can't idmap, a per-map copy of
  each layer with shifted owners (made once per map, shared by containers with that map);
- copy ("vfs"): no overlayfs at all; the layers are copied in order into one directory.
The upper directory holds the container's changes; `diff()` reads it as added/changed/deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stockade.errors import StockadeError
from stockade.image.layers import mapped_copy, shift_id, shift_tree, unpack_all
from stockade.image.store import Image, Store
from stockade.image.unpack import is_opaque
from stockade.kernel import mounts, namespaces
from stockade.runtime.idmap import write_id_maps
from stockade.spec.runtime import IDMapping

DRIVERS = ("auto", "overlay", "overlay-chown", "copy")


class RootfsError(StockadeError):
    pass


@dataclass(slots=True)
class Rootfs:
    """Where a container's root filesystem is and how it was made (for inspect)."""

    target: Path
    driver: str  # overlay | copy
    idmap: str  # idmapped-mount | chown-copy | none
    upper: Path | None
    lowers: list[Path]


def prepare(
    store: Store,
    image: Image,
    container_dir: Path,
    uid_maps: list[IDMapping] | None = None,
    gid_maps: list[IDMapping] | None = None,
    driver: str = "auto",
    volatile: bool = False,
    userns: int | None = None,
) -> Rootfs:
    """Mount (or copy) `image` as <container_dir>/rootfs with its changes in <container_dir>/upper.

    With ID maps, files appear owned by the host IDs the maps give the image's IDs, which is
    what a container in that user namespace sees as its own root and users. `volatile`: no
    syncs of the changes at all (overlayfs' option: for an --rm container, whose changes go
    with it; its unmount then skips a sync of the host filesystem too). `userns`: a user
    namespace with these maps (the container's own), instead of one made here for the mount.
    """
    if driver not in DRIVERS:
        raise RootfsError(f'unknown storage driver "{driver}" (want one of {", ".join(DRIVERS)})')
    lowers = list(reversed(unpack_all(store, image.manifest.layers, image.config.diff_ids)))  # top first
    target = container_dir / "rootfs"
    target.mkdir(parents=True, exist_ok=True)
    maps = (uid_maps or [], gid_maps or [])
    if _identity(maps[0]) and _identity(maps[1]):
        maps = ([], [])  # (rootless: the user namespace's IDs are the layers' own)
    if driver == "copy":
        return _copy_rootfs(lowers, target, *maps)
    upper, work = container_dir / "upper", container_dir / "work"
    for d in (upper, work):
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o755)
    if maps[0]:
        os.chown(upper, shift_id(0, maps[0]), shift_id(0, maps[1]))
    if not maps[0]:
        _mount_overlay([str(p) for p in lowers], upper, work, target, volatile)
        return Rootfs(target, "overlay", "none", upper, lowers)
    if driver in ("auto", "overlay"):
        try:
            _mount_idmapped_overlay(lowers, upper, work, target, *maps, volatile=volatile, userns=userns)
            return Rootfs(target, "overlay", "idmapped-mount", upper, lowers)
        except OSError as exc:
            if driver == "overlay":
                raise RootfsError(f"idmapped overlay on {target}: {exc.strerror}") from None
    diff_ids = list(reversed(image.config.diff_ids))
    copies = [mapped_copy(store, d, *maps) for d in diff_ids] if diff_ids else lowers
    _mount_overlay([str(p) for p in copies], upper, work, target, volatile)
    return Rootfs(target, "overlay", "chown-copy", upper, copies)


def _identity(maps: list[IDMapping]) -> bool:
    return all(m.container_id == m.host_id for m in maps)


def release(rootfs_target: Path) -> None:
    """Unmount a prepared rootfs (a no-op for the copy driver or if already unmounted)."""
    with contextlib.suppress(OSError):
        mounts.umount2(str(rootfs_target), mounts.MNT_DETACH)


def _overlay_context(upper: Path, work: Path, volatile: bool) -> int:
    # A volatile mount leaves a mark in its work dir that makes overlayfs refuse the next
    # mount (after a machine crash its upper dir may be incomplete). Only --rm containers
    # mount volatile, and their changes were never meant to last: the mark goes.
    shutil.rmtree(work / "work" / "incompat", ignore_errors=True)
    fs_fd = mounts.fsopen("overlay")
    try:
        mounts.fsconfig_string(fs_fd, "upperdir", str(upper))
        mounts.fsconfig_string(fs_fd, "workdir", str(work))
        # No inode index: layers are shared read-only by many overlays at once.
        mounts.fsconfig_string(fs_fd, "index", "off")
        if not namespaces.host_root():  # rootless: trusted.* xattrs are out of reach
            mounts.fsconfig_flag(fs_fd, "userxattr")
        if volatile:
            mounts.fsconfig_flag(fs_fd, "volatile")
    except OSError:
        os.close(fs_fd)
        raise
    return fs_fd


def _finish_overlay(fs_fd: int, target: Path) -> None:
    try:
        mounts.fsconfig_create(fs_fd, "overlay")
    except OSError as exc:
        log = mounts.fs_error_log(fs_fd)
        raise OSError(exc.errno, f"overlay: {exc.strerror}" + (f" ({log})" if log else "")) from None
    mnt_fd = mounts.fsmount(fs_fd)
    try:
        mounts.move_mount(mnt_fd, "", -100, str(target), mounts.MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(mnt_fd)


def _mount_overlay(lowers: list[str], upper: Path, work: Path, target: Path, volatile: bool = False) -> None:
    fs_fd = _overlay_context(upper, work, volatile)
    try:
        for lower in lowers or [str(_empty_lower(upper))]:
            mounts.fsconfig_string(fs_fd, "lowerdir+", lower)
        _finish_overlay(fs_fd, target)
    finally:
        os.close(fs_fd)


def _empty_lower(upper: Path) -> Path:
    empty = upper.parent / "empty"
    empty.mkdir(exist_ok=True)
    return empty


def _mount_idmapped_overlay(
    lowers: list[Path],
    upper: Path,
    work: Path,
    target: Path,
    uid_maps: list[IDMapping],
    gid_maps: list[IDMapping],
    volatile: bool = False,
    userns: int | None = None,
) -> None:
    trees: list[int] = []
    with _namespace_of(uid_maps, gid_maps, userns) as ns:
        fs_fd = _overlay_context(upper, work, volatile)
        try:
            for lower in lowers or [_empty_lower(upper)]:
                tree = mounts.open_tree(-100, str(lower), mounts.OPEN_TREE_CLONE | mounts.OPEN_TREE_CLOEXEC)
                trees.append(tree)
                mounts.mount_setattr(tree, "", mounts.AT_EMPTY_PATH, mounts.MOUNT_ATTR_IDMAP, userns_fd=ns)
                mounts.fsconfig_fd(fs_fd, "lowerdir+", tree)
            _finish_overlay(fs_fd, target)
        finally:
            os.close(fs_fd)
            for tree in trees:
                os.close(tree)


@contextlib.contextmanager
def _namespace_of(uid_maps: list[IDMapping], gid_maps: list[IDMapping], userns: int | None) -> Iterator[int]:
    """`userns` if given (it has these maps), else a user namespace of these maps made for
    the mount and closed after it."""
    if userns is not None:
        yield userns
        return
    made = namespaces.user_namespace_fd(lambda pid: write_id_maps(pid, uid_maps, gid_maps))
    try:
        yield made
    finally:
        os.close(made)


def attach_idmapped(
    source: Path, target: Path, uid_maps: list[IDMapping], gid_maps: list[IDMapping], userns: int | None = None
) -> None:
    """Bind `source` on `target`, its files seen through the ID maps (a plain bind without maps):
    a volume stored with container IDs then shows them as this container's host IDs. `userns`:
    as for prepare()."""
    tree = mounts.open_tree(-100, str(source), mounts.OPEN_TREE_CLONE | mounts.OPEN_TREE_CLOEXEC)
    try:
        if uid_maps:
            with _namespace_of(uid_maps, gid_maps, userns) as ns:
                mounts.mount_setattr(tree, "", mounts.AT_EMPTY_PATH, mounts.MOUNT_ATTR_IDMAP, userns_fd=ns)
        mounts.move_mount(tree, "", -100, str(target), mounts.MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(tree)


# The copy driver ----------------------------------------------------------------------------
def _copy_rootfs(lowers: list[Path], target: Path, uid_maps: list[IDMapping], gid_maps: list[IDMapping]) -> Rootfs:
    for layer in reversed(lowers):  # bottom first
        _apply_layer_copy(layer, target)
    if uid_maps:
        shift_tree(target, uid_maps, gid_maps)
    return Rootfs(target, "copy", "chown-copy" if uid_maps else "none", None, lowers)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _apply_layer_copy(layer: Path, dest: Path) -> None:
    """Copy one unpacked layer over `dest`, honouring its whiteouts and opaque directories."""
    for dirpath, dirs, files in os.walk(layer):
        rel = os.path.relpath(dirpath, layer)
        out_dir = dest if rel == "." else dest / rel
        if rel != "." and is_opaque(dirpath) and out_dir.exists():
            for child in os.listdir(out_dir):
                _remove(os.path.join(out_dir, child))
        for name in list(dirs):
            src, dst = os.path.join(dirpath, name), os.path.join(out_dir, name)
            if os.path.islink(src):  # os.walk lists symlinks to dirs as dirs
                dirs.remove(name)
                files.append(name)
                continue
            if os.path.lexists(dst) and not (os.path.isdir(dst) and not os.path.islink(dst)):
                os.unlink(dst)
            if not os.path.lexists(dst):
                os.mkdir(dst)
            shutil.copystat(src, dst, follow_symlinks=False)
            st = os.lstat(src)
            os.chown(dst, st.st_uid, st.st_gid)
        for name in files:
            src, dst = os.path.join(dirpath, name), os.path.join(out_dir, name)
            st = os.lstat(src)
            _remove(dst)
            if _is_whiteout(st):
                continue
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)
            elif stat.S_ISREG(st.st_mode):
                shutil.copy2(src, dst, follow_symlinks=False)
            else:
                os.mknod(dst, st.st_mode, st.st_rdev)
            os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(dst, st.st_mode & 0o7777)


# Diff ----------------------------------------------------------------------------------------
def _in_lowers(rel: str, lowers: list[Path]) -> bool:
    """Whether `rel` exists in the image (the lower layers' merged view, top first)."""
    for layer in lowers:
        path = layer / rel
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            # An opaque ancestor or a whiteout in this layer hides everything below.
            parts = rel.split("/")
            for i in range(len(parts)):
                prefix = layer / "/".join(parts[: i + 1])
                try:
                    pst = os.lstat(prefix)
                except FileNotFoundError:
                    break
                if _is_whiteout(pst):
                    return False
            for i in range(len(parts) - 1, 0, -1):
                if is_opaque(str(layer / "/".join(parts[:i]))):
                    return False
            continue
        return not _is_whiteout(st)
    return False


def diff(upper: Path, lowers: list[Path]) -> list[tuple[str, str]]:
    """The container's changes as Docker prints them: ("A"|"C"|"D", "/path"), sorted by path."""
    changes: list[tuple[str, str]] = []
    for dirpath, dirs, files in os.walk(upper):
        rel_dir = os.path.relpath(dirpath, upper)
        for name in sorted([*dirs, *files]):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = os.lstat(os.path.join(dirpath, name))
            if _is_whiteout(st):
                changes.append(("D", "/" + rel))
            elif _in_lowers(rel, lowers):
                changes.append(("C", "/" + rel))
            else:
                changes.append(("A", "/" + rel))
    return sorted(changes, key=lambda c: c[1])
