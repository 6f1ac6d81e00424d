"""Pull and push: registry <-> store, layers in parallel, each verified as it streams.

Pull order (what keeps a concurrent `image prune` and a kill -9 harmless): hold the manifest
digest, store the manifest, the config, then each layer (downloaded into ingest/<hex>.partial,
resumed with Range when a killed pull left one, renamed into blobs/ only once its digest and
size match) and unpack it; name the image last and drop the hold.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.image.layers import unpack_layer
from stockade.image.registry import Client, Registry, RegistryError, insecure_registries
from stockade.image.store import CHUNK, DigestMismatch, Image, ImageError, Store, file_lock
from stockade.spec.image import (
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    Descriptor,
    Platform,
    Reference,
    digest_hex,
    host_platform,
    load_json,
    media_type_of,
    parse_config,
    parse_index,
    parse_manifest,
    pick_platform,
    store_form,
)

JOBS = 4


class Progress:
    """Per-layer progress: rich bars on a terminal, one line per finished blob otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.lock = threading.Lock()
        self.bars = None
        self.tasks: dict[str, Any] = {}
        if not quiet and sys.stderr.isatty():
            with contextlib.suppress(ImportError):
                from rich.progress import BarColumn, DownloadColumn, TextColumn
                from rich.progress import Progress as RichProgress

                self.bars = RichProgress(
                    TextColumn("{task.description}"), BarColumn(), DownloadColumn(), transient=False
                )

    def __enter__(self) -> Progress:
        if self.bars is not None:
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bars is not None:
            self.bars.stop()

    def start(self, digest: str, total: int, verb: str) -> None:
        if self.bars is not None:
            with self.lock:
                self.tasks[digest] = self.bars.add_task(f"{verb} {digest_hex(digest)[:12]}", total=total or None)

    def advance(self, digest: str, n: int) -> None:
        if self.bars is not None and digest in self.tasks:
            self.bars.advance(self.tasks[digest], n)

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.bars is not None:
            self.bars.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)


@dataclass(slots=True)
class PullResult:
    image: Image
    repo_digest: str


def registry_for(ref: Reference, insecure: bool = False) -> Registry:
    return Registry(ref.registry_host, insecure=insecure or ref.domain in insecure_registries())


def pull(
    store: Store,
    ref: Reference,
    platform_want: Platform | None = None,
    quiet: bool = False,
    insecure: bool = False,
    registry: Registry | None = None,
) -> PullResult:
    registry = registry or registry_for(ref, insecure)
    client = Client(ref, registry)
    want = platform_want or host_platform(platform.machine())
    try:
        with Progress(quiet) as progress:
            # The document's own mediaType (or its shape) decides what it is, not Content-Type.
            data, _, repo_digest = client.get_manifest(ref.reference)
            doc = load_json(data, f"{ref.familiar}: manifest")
            if media_type_of(doc) in INDEX_TYPES:
                entry = pick_platform(parse_index(doc, f"{ref.familiar}: index"), want, ref.familiar)
                data, _, _ = client.get_manifest(entry.digest)
                doc = load_json(data, f"{ref.familiar}: manifest {entry.digest}")
            if media_type_of(doc) not in MANIFEST_TYPES:
                raise ImageError(f"{ref.familiar}: unsupported manifest media type {media_type_of(doc)!r}")
            manifest = parse_manifest(doc, f"{ref.familiar}: manifest")
            stored = store_form(data, doc, manifest)
            digest = "sha256:" + hashlib.sha256(stored).hexdigest()
            holder = f"pull-{os.getpid()}-{threading.get_ident()}"
            store.hold(holder, digest)
            try:
                store.put_bytes(stored)
                config_bytes = fetch_small_blob(store, client, manifest.config, "config")
                config = parse_config(load_json(config_bytes, f"{ref.familiar}: config"), f"{ref.familiar}: config")
                if len(config.diff_ids) != len(manifest.layers):
                    raise ImageError(
                        f"{ref.familiar}: {len(manifest.layers)} layers but the config lists {len(config.diff_ids)} diff_ids"
                    )
                progress.line(f"Pulling {ref.familiar} ({len(manifest.layers)} layers)")

                def one(pair: tuple[Descriptor, str]) -> None:
                    layer, diff_id = pair
                    fetch_blob(store, client, layer, progress)
                    unpack_layer(store, layer, diff_id)

                with ThreadPoolExecutor(max_workers=JOBS) as pool:
                    for _ in pool.map(one, zip(manifest.layers, config.diff_ids, strict=True)):
                        pass
                store.set_name(ref, digest, len(stored), repo_digest if not ref.digest else ref.digest)
            finally:
                store.release(holder)
            progress.line(f"Digest: {repo_digest}")
    finally:
        registry.close()
    return PullResult(store.image(digest), repo_digest)


def fetch_small_blob(store: Store, client: Client, desc: Descriptor, what: str) -> bytes:
    if not store.has_blob(desc.digest):
        chunks, _ = client.fetch_blob(desc.digest)
        store.write_blob(desc.digest, desc.size, chunks, f"{client.ref.familiar}: {what}")
    return store.read_blob(desc.digest, what)


def fetch_blob(store: Store, client: Client, desc: Descriptor, progress: Progress) -> None:
    """Download one blob into the store, resuming a partial download a killed pull left."""
    if store.has_blob(desc.digest):
        progress.line(f"Copying blob {digest_hex(desc.digest)[:12]} skipped: already exists")
        return
    hexid = digest_hex(desc.digest)
    with file_lock(store.lock_path("blob", hexid)):
        if store.has_blob(desc.digest):  # another pull finished it while we waited
            return
        partial = store.ingest / f"{hexid}.partial"
        hasher = hashlib.sha256()
        offset = _rehash_partial(partial, hasher, desc.size)
        chunks, resumed = client.fetch_blob(desc.digest, offset)
        if not resumed and offset:
            hasher, offset = hashlib.sha256(), 0
        progress.start(desc.digest, desc.size, "Copying blob")
        progress.advance(desc.digest, offset)
        what = f"{client.ref.familiar}: layer"
        with open(partial, "ab" if offset else "wb") as out:
            written = offset
            for chunk in chunks:
                written += len(chunk)
                if written > desc.size:
                    out.close()
                    partial.unlink()
                    raise DigestMismatch(
                        f"{what} {desc.digest}: registry sent more than the {desc.size} bytes promised"
                    )
                hasher.update(chunk)
                out.write(chunk)
                progress.advance(desc.digest, len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if written < desc.size:
            raise RegistryError(
                f"{what} {desc.digest}: download ended after {written} of {desc.size} bytes (pull again to resume)"
            )
        try:
            store.commit_partial(partial, desc.digest, desc.size, hasher, written, what)
        except DigestMismatch:
            partial.unlink()
            raise
        progress.line(f"Copying blob {hexid[:12]} done")


def _rehash_partial(partial: Path, hasher: object, size: int) -> int:
    """Hash what an earlier pull already downloaded; 0 if there is nothing usable."""
    try:
        have = partial.stat().st_size
    except FileNotFoundError:
        return 0
    if have >= size:
        partial.unlink()
        return 0
    with open(partial, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)  # type: ignore[attr-defined]
    return have


# Push ----------------------------------------------------------------------------------------
def push(
    store: Store,
    image: Image,
    dest: Reference,
    quiet: bool = False,
    insecure: bool = False,
    chunk_size: int = 0,
    registry: Registry | None = None,
) -> str:
    """Push `image` as `dest`; returns the manifest digest the registry stored."""
    registry = registry or registry_for(dest, insecure)
    client = Client(dest, registry)
    sources = [n.path for n in image.names if n.domain == dest.domain and n.path != dest.path]
    try:
        with Progress(quiet) as progress:
            blobs = [*image.manifest.layers, image.manifest.config]

            def one(desc: Descriptor) -> None:
                short = digest_hex(desc.digest)[:12]
                if client.blob_exists(desc.digest):
                    progress.line(f"Copying blob {short} skipped: already exists")
                    return
                for source in sources:
                    if client.mount_blob(desc.digest, source):
                        progress.line(f"Copying blob {short} mounted from {source}")
                        return
                progress.start(desc.digest, desc.size, "Copying blob")
                client.upload_blob(desc.digest, desc.size, _opener(store, desc, progress), chunk_size)
                progress.line(f"Copying blob {short} done")

            with ThreadPoolExecutor(max_workers=JOBS) as pool:
                for _ in pool.map(one, blobs):
                    pass
            data = store.read_blob(image.manifest_digest, "manifest")
            media_type = media_type_of(load_json(data, "manifest"))
            digest = client.put_manifest(
                dest.reference, data, media_type if media_type in MANIFEST_TYPES else DOCKER_MANIFEST
            )
            progress.line("Writing manifest to image destination")
    finally:
        registry.close()
    return digest


class _CountingReader:
    def __init__(self, path: Path, digest: str, progress: Progress) -> None:
        self.f = open(path, "rb")  # noqa: SIM115 - closed by __exit__/close
        self.digest = digest
        self.progress = progress

    def read(self, n: int = -1, /) -> bytes:
        data = self.f.read(n if n > 0 else CHUNK)
        self.progress.advance(self.digest, len(data))
        return data

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _opener(store: Store, desc: Descriptor, progress: Progress) -> Callable[[], _CountingReader]:
    return lambda: _CountingReader(store.blob_path(desc.digest), desc.digest, progress)
