"""Unpacked layers: each layer blob unpacked once into <store>/layers/<diff-id hex>/diff.

A layer is unpacked into a temporary directory under the layer's lock, its diff_id checked
against the image config, its filesystem synced, and only then renamed into place; so a
complete directory (with meta.json) is the only kind a reader ever finds. Per-ID-map copies
for kernels without idmapped mounts live beside it in mapped-<map hash>.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from pathlib import Path

from stockade.image.store import DigestMismatch, Store, atomic_write, file_lock
from stockade.image.unpack import decompressed, unpack_tar
from stockade.kernel import mounts
from stockade.spec.image import LAYER_COMPRESSION, Descriptor, digest_hex, sha256_digest
from stockade.spec.runtime import IDMapping


def layer_dir(store: Store, diff_id: str) -> Path:
    return store.layers / digest_hex(diff_id)


def unpack_layer(store: Store, layer: Descriptor, diff_id: str) -> Path:
    """The layer's unpacked directory, unpacking the blob first if nobody has yet."""
    final = layer_dir(store, diff_id)
    if (final / "meta.json").exists():
        return final / "diff"
    hexid = digest_hex(diff_id)
    with file_lock(store.lock_path("layer", hexid)):
        if (final / "meta.json").exists():
            return final / "diff"
        tmp = store.layers / f".tmp-{hexid}-{os.getpid()}"
        for stale in (tmp, final):  # a killed unpack leaves only these; never a meta.json
            if stale.exists():
                shutil.rmtree(stale)
        try:
            (tmp / "diff").mkdir(parents=True)
            what = f"layer {layer.digest}"
            with (
                store.open_blob(layer.digest, "layer") as raw,
                decompressed(raw, LAYER_COMPRESSION[layer.media_type]) as stream,
            ):
                result = unpack_tar(stream, str(tmp / "diff"), what=what)
            if result.diff_id != diff_id:
                raise DigestMismatch(
                    f"{what}: uncompressed content is {result.diff_id}, the image config says {diff_id}"
                )
            meta = {"diff_id": diff_id, "digest": layer.digest, "size": result.size, "entries": result.entries}
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                mounts.syncfs(fd, str(tmp))
            finally:
                os.close(fd)
            atomic_write(tmp / "meta.json", json.dumps(meta).encode())
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final / "diff"


def unpack_all(store: Store, layers: list[Descriptor], diff_ids: list[str], jobs: int = 2) -> list[Path]:
    """Unpack every layer of an image (in parallel: decompression and hashing release the GIL)."""
    if len(layers) != len(diff_ids):
        raise DigestMismatch(f"image has {len(layers)} layers but its config lists {len(diff_ids)} diff_ids")
    done = [layer_dir(store, d) / "diff" for d in diff_ids]
    if all(os.path.exists(d.parent / "meta.json") for d in done):
        return done  # the common case, at every container start: no threads (nor their import)
    if len(layers) <= 1 or jobs <= 1:
        return [unpack_layer(store, layer, d) for layer, d in zip(layers, diff_ids, strict=True)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda pair: unpack_layer(store, *pair), zip(layers, diff_ids, strict=True)))


def layer_size(store: Store, diff_id: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, KeyError):
        return int(json.loads((layer_dir(store, diff_id) / "meta.json").read_bytes())["size"])
    return None


# Chowned copies for kernels (or filesystems) without idmapped mounts --------------------------
def map_hash(uid_maps: list[IDMapping], gid_maps: list[IDMapping]) -> str:
    text = "u" + "".join(m.line() for m in uid_maps) + "g" + "".join(m.line() for m in gid_maps)
    return sha256_digest(text.encode())[7:23]


def shift_id(value: int, maps: list[IDMapping]) -> int:
    """The host ID a file owned by container ID `value` gets; unmapped IDs become nobody."""
    for m in maps:
        if m.container_id <= value < m.container_id + m.size:
            return m.host_id + value - m.container_id
    return 65534


def shift_tree(root: Path, uid_maps: list[IDMapping], gid_maps: list[IDMapping]) -> None:
    """Shift the owner of `root` and everything below it into the ID maps, keeping set-id bits."""
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            _shift(os.path.join(dirpath, name), uid_maps, gid_maps)
    _shift(str(root), uid_maps, gid_maps)


def _shift(path: str, uid_maps: list[IDMapping], gid_maps: list[IDMapping]) -> None:
    st = os.lstat(path)
    os.chown(path, shift_id(st.st_uid, uid_maps), shift_id(st.st_gid, gid_maps), follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o6000:
        os.chmod(path, st.st_mode & 0o7777)  # chown cleared the set-id bits


def mapped_copy(store: Store, diff_id: str, uid_maps: list[IDMapping], gid_maps: list[IDMapping]) -> Path:
    """A copy of the unpacked layer with every owner shifted into the ID map (made once per map)."""
    base = layer_dir(store, diff_id)
    final = base / f"mapped-{map_hash(uid_maps, gid_maps)}"
    if final.exists():
        return final
    with file_lock(store.lock_path("layer", digest_hex(diff_id))):
        if final.exists():
            return final
        tmp = base / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            import subprocess  # (here, not at the top: see host.MONITOR_MODULES)

            subprocess.run(
                ["cp", "-a", "--reflink=auto", str(base / "diff"), str(tmp)], check=True, capture_output=True
            )
            shift_tree(tmp, uid_maps, gid_maps)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
