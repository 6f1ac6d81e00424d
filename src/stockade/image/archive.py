"""Images in and out of tar files: import of a rootfs tarball, save/load as docker-archive
(what `docker save` writes: manifest.json, config, one layer.tar per layer) and oci-archive
(a tarred OCI image layout).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from stockade.image.layers import unpack_all
from stockade.image.store import CHUNK, Image, ImageError, Store
from stockade.image.unpack import decompressed
from stockade.spec.image import (
    INDEX_TYPES,
    LAYER_COMPRESSION,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    REF_NAME_ANNOTATION,
    Descriptor,
    Manifest,
    Platform,
    Reference,
    apply_change,
    digest_hex,
    host_platform,
    load_json,
    media_type_of,
    parse_index,
    parse_manifest,
    parse_reference,
    pick_platform,
    store_form,
)

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def sniff_compression(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return ""


def media_type_for(compression: str) -> str:
    return {"": OCI_LAYER, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}[compression]


class _Peekable:
    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.head = raw.read(512)

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n < 0:
                out, self.head = self.head + self.raw.read(), b""
                return out
            out, self.head = self.head[:n], self.head[n:]
            if len(out) < n:
                out += self.raw.read(n - len(out))
            return out
        return self.raw.read(n)


def _chunks(stream: Any) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK):
        yield chunk


def store_uncompressed_layer(store: Store, source: IO[bytes], what: str) -> Descriptor:
    """Store a (possibly compressed) tar stream as an uncompressed layer blob; digest = diff_id."""
    peek = _Peekable(source)
    with decompressed(peek, sniff_compression(peek.head)) as stream:  # type: ignore[arg-type]
        digest, size = store.write_unknown_blob(_chunks(stream), what)
    return Descriptor(OCI_LAYER, digest, size)


def base_config(diff_ids: list[str], created_by: str, comment: str = "") -> dict[str, Any]:
    plat = host_platform(platform.machine())
    history: dict[str, Any] = {"created": now_rfc3339(), "created_by": created_by}
    if comment:
        history["comment"] = comment
    return {
        "created": now_rfc3339(),
        "architecture": plat.architecture,
        "os": plat.os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [history],
    }


def import_tarball(
    store: Store, source: IO[bytes], ref: Reference | None, changes: list[str], message: str = "", what: str = "import"
) -> Image:
    """`stockade import`: a rootfs tarball (plain, gzip or zstd) as a one-layer image."""
    config = base_config([], "stockade import", message)
    for change in changes:
        apply_change(config, change)  # before any write: a bad --change leaves nothing
    layer = store_uncompressed_layer(store, source, what)
    config["rootfs"]["diff_ids"] = [layer.digest]
    digest, manifest = store.add_image(None, config, [layer])
    unpack_all(store, manifest.layers, [layer.digest])  # validates the tar (safely) now
    if ref is not None:
        store.set_name(ref, digest, len(manifest.to_bytes()))
    return store.image(digest)


# save ----------------------------------------------------------------------------------------
def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tf.addfile(info, io.BytesIO(data))


def _add_dir(tf: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tf.addfile(info)


@dataclass(slots=True)
class SaveItem:
    image: Image
    tags: list[Reference]


def save_docker_archive(store: Store, items: list[SaveItem], out: IO[bytes]) -> None:
    """docker save's format: uncompressed layers named by diff_id, so docker/skopeo load it."""
    manifest_json = []
    repositories: dict[str, dict[str, str]] = {}
    written: set[str] = set()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for item in items:
            image = item.image
            config_hex = digest_hex(image.id)
            if config_hex not in written:
                _add_bytes(tf, f"{config_hex}.json", store.read_blob(image.id, "config"))
                written.add(config_hex)
            layer_names = []
            for layer, diff_id in zip(image.manifest.layers, image.config.diff_ids, strict=True):
                name = f"{digest_hex(diff_id)}/layer.tar"
                layer_names.append(name)
                if name in written:
                    continue
                written.add(name)
                _add_dir(tf, digest_hex(diff_id))
                _add_layer_uncompressed(tf, store, layer, diff_id, name)
            manifest_json.append(
                {"Config": f"{config_hex}.json", "RepoTags": [t.familiar for t in item.tags], "Layers": layer_names}
            )
            for tag in item.tags:
                if image.config.diff_ids and tag.tag:
                    repositories.setdefault(tag.familiar_repository, {})[tag.tag] = digest_hex(
                        image.config.diff_ids[-1]
                    )
        _add_bytes(tf, "manifest.json", json.dumps(manifest_json).encode())
        _add_bytes(tf, "repositories", json.dumps(repositories).encode())


def _add_layer_uncompressed(tf: tarfile.TarFile, store: Store, layer: Descriptor, diff_id: str, name: str) -> None:
    compression = LAYER_COMPRESSION.get(layer.media_type, "")
    if compression == "":
        info = tarfile.TarInfo(name)
        info.size = layer.size
        info.mode = 0o644
        with store.open_blob(layer.digest, "layer") as f:
            tf.addfile(info, f)
        return
    # The uncompressed size is only known after decompressing: spool to a temp file.
    tmp = store.ingest / f"save-{os.getpid()}-{digest_hex(diff_id)[:12]}"
    try:
        import hashlib  # (here, not at the top: see spec.image.sha256_digest)

        hasher = hashlib.sha256()
        with open(tmp, "w+b") as spool:
            with store.open_blob(layer.digest, "layer") as raw, decompressed(raw, compression) as stream:
                for chunk in _chunks(stream):
                    hasher.update(chunk)
                    spool.write(chunk)
            if "sha256:" + hasher.hexdigest() != diff_id:
                raise ImageError(f"layer {layer.digest}: uncompressed content does not match diff_id {diff_id}")
            info = tarfile.TarInfo(name)
            info.size = spool.tell()
            info.mode = 0o644
            spool.seek(0)
            tf.addfile(info, spool)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def save_oci_archive(store: Store, items: list[SaveItem], out: IO[bytes]) -> None:
    """A tarred OCI image layout; each name is a ref.name annotation."""
    index = []
    written: set[str] = set()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        _add_bytes(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        for d in ("blobs", "blobs/sha256"):
            _add_dir(tf, d)
        for item in items:
            image = item.image
            manifest_bytes = store.read_blob(image.manifest_digest, "manifest")
            blobs = [(image.manifest_digest, len(manifest_bytes)), (image.id, image.manifest.config.size)]
            blobs += [(layer.digest, layer.size) for layer in image.manifest.layers]
            for digest, size in blobs:
                if digest in written:
                    continue
                written.add(digest)
                info = tarfile.TarInfo(f"blobs/sha256/{digest_hex(digest)}")
                info.size = size
                info.mode = 0o644
                with store.open_blob(digest) as f:
                    tf.addfile(info, f)
            names: list[Reference | None] = list(item.tags) or [None]
            for tag in names:
                desc = Descriptor(
                    "application/vnd.oci.image.manifest.v1+json",
                    image.manifest_digest,
                    len(manifest_bytes),
                    {REF_NAME_ANNOTATION: str(tag)} if tag else {},
                )
                index.append(desc.to_json())
        _add_bytes(
            tf, "index.json", json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index}).encode()
        )


# load ----------------------------------------------------------------------------------------
def load_archive(store: Store, path: Path, want: Platform | None = None) -> list[tuple[Image, list[Reference]]]:
    """`stockade load`: a docker-archive or oci-archive (plain or compressed) into the store."""
    with open(path, "rb") as raw:
        head = raw.read(4)
    if sniff_compression(head):
        raise ImageError(f"{path}: compressed archives: decompress first (gunzip/unzstd)")
    try:
        tf = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as exc:
        raise ImageError(f"{path}: not a tar archive: {exc}") from None
    with tf:
        names = {n.removeprefix("./") for n in tf.getnames()}
        if "manifest.json" in names:
            return _load_docker(store, tf, path)
        if "index.json" in names and "oci-layout" in names:
            return _load_oci(store, tf, path, want or host_platform(platform.machine()))
        raise ImageError(
            f"{path}: neither a docker-archive (manifest.json) nor an oci-archive (oci-layout, index.json)"
        )


def _member(tf: tarfile.TarFile, name: str, archive: Path) -> IO[bytes]:
    """An archive member by name, whether the tar spelled it "name" or "./name"."""
    name = name.removeprefix("./")
    member = None
    for candidate in (name, f"./{name}"):
        try:
            member = tf.getmember(candidate)
            break
        except KeyError:
            continue
    if member is None:
        raise ImageError(f"{archive}: {name} is listed but not in the archive")
    f = tf.extractfile(member)
    if f is None:
        raise ImageError(f"{archive}: {name} is not a regular file")
    return f


def _load_docker(store: Store, tf: tarfile.TarFile, archive: Path) -> list[tuple[Image, list[Reference]]]:
    manifest = json.loads(_member(tf, "manifest.json", archive).read())
    if not isinstance(manifest, list):
        raise ImageError(f"{archive}: manifest.json: must be an array")
    loaded = []
    for i, entry in enumerate(manifest):
        where = f"{archive}: manifest.json[{i}]"
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("Config"), str)
            or not isinstance(entry.get("Layers"), list)
        ):
            raise ImageError(f"{where}: want Config and Layers")
        config_bytes = _member(tf, entry["Config"], archive).read()
        config = load_json(config_bytes, f"{where}.Config")
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        if len(diff_ids) != len(entry["Layers"]):
            raise ImageError(f"{where}: {len(entry['Layers'])} layers but the config lists {len(diff_ids)} diff_ids")
        layers = []
        for j, layer_name in enumerate(entry["Layers"]):
            layer = _store_layer_member(store, _member(tf, layer_name, archive), f"{where}.Layers[{j}]")
            layers.append(layer)
        tags = [parse_reference(t) for t in entry.get("RepoTags") or []]
        config_desc = Descriptor(OCI_CONFIG, store.put_bytes(config_bytes), len(config_bytes))
        loaded.append(_land(store, Manifest(config_desc, layers).to_bytes(), tags))
    return loaded


def _land(store: Store, manifest_bytes: bytes, tags: list[Reference]) -> tuple[Image, list[Reference]]:
    """Store a loaded image's manifest (its blobs are in already), unpack it, then name it."""
    digest = store.put_bytes(manifest_bytes)
    image = store.image(digest)
    unpack_all(store, image.manifest.layers, image.config.diff_ids)
    for tag in tags:
        store.set_name(tag, digest, len(manifest_bytes))
    return store.image(digest), tags


def _store_layer_member(store: Store, f: IO[bytes], what: str) -> Descriptor:
    """A layer file from an archive stored as-is (compressed or not), verified by hashing."""
    peek = _Peekable(f)
    media_type = media_type_for(sniff_compression(peek.head))
    digest, size = store.write_unknown_blob(_chunks(peek), what)
    return Descriptor(media_type, digest, size)


def _load_oci(store: Store, tf: tarfile.TarFile, archive: Path, want: Platform) -> list[tuple[Image, list[Reference]]]:
    def blob(digest: str, size: int | None, what: str) -> None:
        if store.has_blob(digest):
            return
        f = _member(tf, f"blobs/sha256/{digest_hex(digest)}", archive)
        store.write_blob(digest, size, _chunks(f), what)

    def blob_bytes(desc: Descriptor, what: str) -> bytes:
        blob(desc.digest, desc.size, what)
        return store.read_blob(desc.digest, what)

    index = load_json(_member(tf, "index.json", archive).read(), f"{archive}: index.json")
    loaded = []
    for i, entry in enumerate(parse_index(index, f"{archive}: index.json")):
        where = f"{archive}: index.json manifests[{i}]"
        # A bare tag ("latest") names no repository: only full references become names.
        name = entry.annotations.get(REF_NAME_ANNOTATION, "")
        tags = [parse_reference(name)] if "/" in name else []
        data = blob_bytes(entry, where)
        doc = load_json(data, where)
        if media_type_of(doc) in INDEX_TYPES:
            entry = pick_platform(parse_index(doc, where), want, where)
            data = blob_bytes(entry, where)
            doc = load_json(data, where)
        manifest = parse_manifest(doc, where)
        blob(manifest.config.digest, manifest.config.size, f"{where} config")
        for j, layer in enumerate(manifest.layers):
            blob(layer.digest, layer.size, f"{where} layer[{j}]")
        loaded.append(_land(store, store_form(data, doc, manifest), tags))
    return loaded
