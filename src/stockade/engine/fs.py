"""A container's files: diff (A/C/D), commit (its changes as a new layer), export, cp.

The writable layer (upper/) holds files owned by host IDs (the container's root is uid_start
on the host); layers and exports carry the container's own IDs, so every ID is shifted back
by the container's map on the way out and forward on the way in. Paths given by users are
resolved inside the container's root (openat2 RESOLVE_IN_ROOT): a symlink planted in the
container never makes cp read or write a host file.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from stockade.engine.containers import Container, EngineError
from stockade.kernel import mounts


def _shift_back(ctr: Container) -> Any:
    """Host IDs (as the upper layer stores them) -> the container's IDs (nobody if unmapped)."""
    from stockade.engine.idranges import record_maps

    uid_maps, gid_maps = record_maps(ctr.record)
    if not uid_maps:
        return lambda uid, gid: (uid, gid)

    def inside(value: int, maps: list[Any]) -> int:
        for m in maps:
            if m.host_id <= value < m.host_id + m.size:
                return int(m.container_id + value - m.host_id)
        return 65534

    def back(uid: int, gid: int) -> tuple[int, int]:
        return inside(uid, uid_maps), inside(gid, gid_maps)

    return back


def _mount_points(ctr: Container) -> set[str]:
    import json

    with contextlib.suppress(OSError, ValueError):
        config = json.loads((ctr.dir / "config.json").read_text())
        return {m["destination"].rstrip("/") for m in config.get("mounts", [])}
    return set()


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _walk_upper(ctr: Container) -> Iterator[tuple[str, str, os.stat_result]]:
    """(path inside the container, host path in upper/, lstat) for every change, parents first;
    empty files and directories the runtime made only as mount points are left out."""
    upper = str(ctr.dir / "upper")
    skip = _mount_points(ctr)
    for dirpath, dirs, files in os.walk(upper):
        dirs.sort()
        for name in sorted([*dirs, *files]):
            host = os.path.join(dirpath, name)
            inside = "/" + os.path.relpath(host, upper)
            st = os.lstat(host)
            empty = os.listdir(host) == [] if stat.S_ISDIR(st.st_mode) else stat.S_ISREG(st.st_mode) and st.st_size == 0
            if inside in skip and empty:
                continue
            yield inside, host, st


def diff(ctr: Container) -> list[tuple[str, str]]:
    """Docker's `diff`: (A|C|D, path), a changed directory as C."""
    from stockade.engine.create import store_of
    from stockade.image.layers import layer_dir

    store = store_of(ctr.dir.parent.parent)
    image = store.image(ctr.record["ImageManifest"])
    lowers = [layer_dir(store, d) / "diff" for d in reversed(image.config.diff_ids)]
    out = []
    for inside, _host, st in _walk_upper(ctr):
        rel = inside.lstrip("/")
        in_image = any(os.path.lexists(low / rel) for low in lowers)
        if _is_whiteout(st):
            out.append(("D", inside))
        else:
            out.append(("C" if in_image else "A", inside))
    return out


def write_layer(ctr: Container, out: IO[bytes]) -> None:
    """The container's changes as an OCI layer tar: whiteouts for deletions, opaque markers."""
    from stockade.image.unpack import is_opaque

    back = _shift_back(ctr)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for inside, host, st in _walk_upper(ctr):
            name = inside.lstrip("/")
            if _is_whiteout(st):
                parent, leaf = os.path.split(name)
                info = tarfile.TarInfo(os.path.join(parent, ".wh." + leaf))
                info.mtime = int(st.st_mtime)
                tf.addfile(info)
                continue
            info = tf.gettarinfo(host, arcname=name)
            info.uid, info.gid = back(st.st_uid, st.st_gid)
            info.uname = info.gname = ""
            if info.isreg():  # O_NOFOLLOW: a file swapped for a symlink is never read through
                with open(os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                    tf.addfile(info, f)
            else:
                tf.addfile(info)
            if stat.S_ISDIR(st.st_mode) and is_opaque(host):
                marker = tarfile.TarInfo(os.path.join(name, ".wh..wh..opq"))
                tf.addfile(marker)


def commit(root: Path, ctr: Container, ref_text: str | None, message: str, author: str, changes: list[str]) -> str:
    """A new image: the container's image plus one layer of its changes; returns its ID."""
    import copy

    from stockade.engine.create import store_of
    from stockade.image.archive import now_rfc3339, store_uncompressed_layer
    from stockade.image.layers import unpack_all
    from stockade.spec.image import apply_change, parse_reference

    ref = parse_reference(ref_text) if ref_text else None
    store = store_of(root)
    base = store.image(ctr.record["ImageManifest"])
    config = copy.deepcopy(base.config.raw)
    for change in changes:
        apply_change(config, change)  # before anything is written: a bad -c leaves nothing
    with tempfile.TemporaryFile(dir=store.root) as tmp:
        write_layer(ctr, tmp)
        tmp.seek(0)
        layer = store_uncompressed_layer(store, tmp, f"commit of {ctr.name}")
    created = now_rfc3339()
    config["created"] = created
    config.setdefault("rootfs", {"type": "layers", "diff_ids": []})["diff_ids"] = [*base.config.diff_ids, layer.digest]
    entry: dict[str, Any] = {
        "created": created,
        "created_by": " ".join([ctr.record.get("Path", ""), *ctr.record.get("Args", [])]),
    }
    if message:
        entry["comment"] = message
    if author:
        entry["author"] = config["author"] = author
    config["history"] = [*config.get("history", []), entry]
    digest, manifest = store.add_image(None, config, [*base.manifest.layers, layer])
    unpack_all(store, manifest.layers, config["rootfs"]["diff_ids"])
    if ref is not None:
        store.set_name(ref, digest, len(manifest.to_bytes()))
    else:
        store.keep_unnamed(digest)  # listed as <none>, until rmi
    return store.image(digest).id


@contextlib.contextmanager
def mounted_rootfs(root: Path, ctr: Container, merged: bool = False) -> Iterator[Path]:
    """The container's root as it sees it (volumes and bind mounts included) when running,
    else its image + changes mounted for the call."""
    from stockade.engine import lifecycle

    target = ctr.dir / "rootfs"
    if lifecycle.refresh(root, ctr).status() in ("running", "paused"):
        yield target if merged else Path(f"/proc/{ctr.state['Pid']}/root")
        return
    from stockade.engine.create import store_of
    from stockade.engine.idranges import record_maps
    from stockade.image.rootfs import prepare, release

    store = store_of(root)
    prepare(store, store.image(ctr.record["ImageManifest"]), ctr.dir, *record_maps(ctr.record))
    try:
        yield target
    finally:
        release(target)


def _open_in_root(rootfs: Path, path: str, flags: int) -> int:
    base = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return mounts.openat2(base, path.lstrip("/") or ".", flags | os.O_CLOEXEC, mounts.RESOLVE_IN_ROOT)
    except FileNotFoundError:
        raise EngineError(f"could not find the file {path} in container") from None
    finally:
        os.close(base)


def export(root: Path, ctr: Container, out: IO[bytes]) -> None:
    """The merged filesystem as a tar, with the container's own IDs."""
    back = _shift_back(ctr)
    with (
        mounted_rootfs(root, ctr, merged=True) as rootfs,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf,
    ):
        top = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _add_tree(tf, top, "", back, one_fs=True)  # like docker export: no volumes, no /proc
        finally:
            os.close(top)


def _tree(top_fd: int, one_fs: bool = False) -> Iterator[tuple[str, os.stat_result, int]]:
    """Every entry under the directory `top_fd` as (relative path, lstat, fd of its directory),
    walked by fd (os.fwalk): no path string is ever resolved again, so a symlink swapped in
    by the container while we walk leads nowhere."""
    top_dev = os.fstat(top_fd).st_dev
    for dirpath, dirs, files, dirfd in os.fwalk(".", dir_fd=top_fd):
        if one_fs:
            dirs[:] = [d for d in dirs if os.stat(d, dir_fd=dirfd, follow_symlinks=False).st_dev == top_dev]
        for name in sorted([*dirs, *files]):
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield os.path.normpath(os.path.join(dirpath, name)), st, dirfd


def _tarinfo(name: str, st: os.stat_result, dirfd: int, leaf: str, back: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
    info.uid, info.gid = back(st.st_uid, st.st_gid)
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(leaf, dir_fd=dirfd)
    elif stat.S_ISREG(st.st_mode):
        info.size = st.st_size
    elif stat.S_ISFIFO(st.st_mode):
        info.type = tarfile.FIFOTYPE
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    return info


def _add_entry(tf: tarfile.TarFile, name: str, st: os.stat_result, dirfd: int, leaf: str, back: Any) -> None:
    info = _tarinfo(name, st, dirfd, leaf, back)
    if info.isreg():
        fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        with open(fd, "rb") as f:
            tf.addfile(info, f)
    else:
        tf.addfile(info)


def _add_tree(tf: tarfile.TarFile, top_fd: int, prefix: str, back: Any, one_fs: bool = False) -> None:
    for rel, st, dirfd in _tree(top_fd, one_fs):
        _add_entry(tf, os.path.join(prefix, rel) if prefix else rel, st, dirfd, os.path.basename(rel), back)


def copy_out(root: Path, ctr: Container, path: str, dest: str) -> None:
    """docker cp CTR:PATH DEST: a tar of PATH (resolved inside the container) unpacked at DEST
    by the safe extractor, owned by the caller; DEST "-" writes the tar to stdout."""
    import sys

    from stockade.image.unpack import unpack_tar

    contents = path.endswith("/.")
    leaf = os.path.basename(path.rstrip("/").removesuffix("/.")) or "root"
    with mounted_rootfs(root, ctr) as rootfs:
        fd = _open_in_root(rootfs, path, os.O_PATH)
        try:
            if dest == "-":
                _tar_source(sys.stdout.buffer, fd, leaf, _shift_back(ctr))
                return
            to_dir = os.path.isdir(dest)
            if not to_dir and not os.path.isdir(os.path.dirname(os.path.abspath(dest))):
                raise EngineError(f"cp: the parent directory of {dest} does not exist")
            name = leaf if to_dir and not contents else os.path.basename(os.path.abspath(dest))
            base = dest if to_dir else os.path.dirname(os.path.abspath(dest))
            with tempfile.TemporaryFile() as tmp:
                _tar_source(tmp, fd, "." if contents else name, lambda u, g: (os.getuid(), os.getgid()))
                tmp.seek(0)
                unpack_tar(tmp, base if not contents else dest, privileged=True, what=f"cp from {ctr.name}")
        finally:
            os.close(fd)


def _tar_source(out: IO[bytes], fd: int, name: str, back: Any) -> None:
    st = os.stat(fd)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        if stat.S_ISDIR(st.st_mode):
            top = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                if name != ".":
                    tf.addfile(_tarinfo(name, st, top, ".", back))
                _add_tree(tf, top, "" if name == "." else name, back)
            finally:
                os.close(top)
        else:
            info = _tarinfo(name, st, -1, "", back)  # not a symlink: the open followed it, in the root
            if info.isreg():
                with open(os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC), "rb") as f:
                    tf.addfile(info, f)
            else:
                tf.addfile(info)


def copy_in(root: Path, ctr: Container, source: str, path: str) -> None:
    """docker cp SRC CTR:PATH: a tar of SRC extracted under PATH with the safe layer extractor
    (no write follows a symlink), owned by the container's root."""
    from stockade.image.unpack import unpack_tar

    idmap = ctr.record.get("IDMap") or {}
    uid, gid = idmap.get("UidStart", 0), idmap.get("GidStart", 0)
    if not os.path.lexists(source):
        raise EngineError(f"could not find the file {source} on the host")
    buf = io.BytesIO()
    leaf = os.path.basename(source.rstrip("/")) or "."
    with mounted_rootfs(root, ctr) as rootfs:
        try:
            dirfd = _open_in_root(rootfs, path, os.O_PATH | os.O_DIRECTORY)
            arcname = leaf
        except (EngineError, NotADirectoryError):
            dirfd = _open_in_root(rootfs, os.path.dirname(path.rstrip("/")) or "/", os.O_PATH | os.O_DIRECTORY)
            arcname = os.path.basename(path.rstrip("/"))

        def own(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""  # the container's root
            return info

        with tarfile.open(fileobj=buf, mode="w") as tf:
            tf.add(source, arcname=arcname, filter=own)
        buf.seek(0)
        try:
            unpack_tar(buf, f"/proc/self/fd/{dirfd}", privileged=True, what=f"cp into {ctr.name}")
        finally:
            os.close(dirfd)
