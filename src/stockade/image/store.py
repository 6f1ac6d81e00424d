"""The image store: an OCI image layout (oci-layout, index.json, blobs/sha256) plus stockade's own
directories beside it, so skopeo and umoci read it as `oci:<root>:<name>`.

    <root>/oci-layout, index.json, blobs/sha256/<hex>   the OCI layout (content-addressed, verified)
    <root>/ingest/<hex>.partial                        downloads in progress (resumable, never read)
    <root>/layers/<diff-id hex>/diff                   each layer unpacked once, shared by all images
    <root>/holds/<holder>                              what containers use (never pruned), and
                                                       dangling-<hex>: unnamed images (commit)
    <root>/locks/                                      flock files: index, one per blob, one per layer

Rules that keep it consistent whatever is killed when: a blob becomes visible only by rename
after its digest and size were checked and its data fsynced; index.json is rewritten whole
(temp file, fsync, rename) under the index lock; a layer directory is renamed into place only
once completely unpacked and its diff_id verified. Concurrent writers of one blob or layer
serialise on its lock and the second finds the work done.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from stockade.errors import StockadeError
from stockade.fsutil import atomic_write, file_lock, fsync_dir
from stockade.spec.image import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME_ANNOTATION,
    Descriptor,
    ImageConfig,
    Manifest,
    Reference,
    check_digest,
    digest_hex,
    load_json,
    parse_config,
    parse_descriptor,
    parse_manifest,
    parse_reference,
    sha256_digest,
)

REPO_DIGEST_ANNOTATION = "io.stockade.repo-digest"
CHUNK = 1 << 20


DANGLING = "dangling-"  # holder prefix of the unnamed images kept on purpose


class ImageError(StockadeError):
    """An image operation failed; the message names the image or blob."""


class DigestMismatch(ImageError):
    pass


@dataclass(slots=True)
class Image:
    """One stored image: its manifest, config and the names pointing at it."""

    manifest_digest: str
    manifest: Manifest
    config: ImageConfig
    names: list[Reference]
    repo_digests: list[str]

    @property
    def id(self) -> str:
        """Docker's image ID: the config digest."""
        return self.manifest.config.digest

    @property
    def short_id(self) -> str:
        return digest_hex(self.id)[:12]


class Store:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.ingest = self.root / "ingest"
        self.layers = self.root / "layers"
        self.holds = self.root / "holds"
        self.locks = self.root / "locks"
        self.index_path = self.root / "index.json"

    # Layout ----------------------------------------------------------------------------------
    def init(self) -> Store:
        if self.index_path.exists():  # (made last: a store made before, ~10 syscalls spared)
            return self
        for d in (self.blobs, self.ingest, self.layers, self.holds, self.locks):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        layout = self.root / "oci-layout"
        if not layout.exists():
            atomic_write(layout, b'{"imageLayoutVersion":"1.0.0"}')
        if not self.index_path.exists():
            with self.index_lock():
                if not self.index_path.exists():
                    self._write_index([])
        return self

    def lock_path(self, kind: str, name: str) -> Path:
        return self.locks / f"{kind}-{name}.lock"

    def index_lock(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.locks / "index.lock")

    # Blobs -----------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest_hex(check_digest(digest, "digest"))

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def read_blob(self, digest: str, what: str = "blob") -> bytes:
        """A small blob's bytes, re-verified (manifests and configs are read this way)."""
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{what} {digest}: not in the store") from None
        if sha256_digest(data) != digest:
            raise DigestMismatch(f"{what} {digest}: stored content does not match its digest (run image verify)")
        return data

    def put_bytes(self, data: bytes) -> str:
        digest = sha256_digest(data)
        if not self.has_blob(digest):
            self.write_blob(digest, len(data), [data])
        return digest

    def write_blob(self, digest: str, size: int | None, chunks: Iterable[bytes], what: str = "blob") -> None:
        """Stream `chunks` into the store as blob `digest`; visible only if digest (and size) match."""
        with file_lock(self.lock_path("blob", digest_hex(digest))):
            if self.has_blob(digest):
                return
            partial = self.ingest / f"{digest_hex(digest)}.writing-{os.getpid()}"
            try:
                hasher, written = _spool(partial, chunks)
                self.commit_partial(partial, digest, size, hasher, written, what)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()

    def commit_partial(
        self, partial: Path, digest: str, size: int | None, hasher: Any, written: int, what: str
    ) -> None:
        """Move a fully written, fsynced file into blobs/ if it is what was promised."""
        got = "sha256:" + hasher.hexdigest()
        if size is not None and written != size:
            raise DigestMismatch(f"{what} {digest}: size mismatch: expected {size} bytes, got {written}")
        if got != digest:
            raise DigestMismatch(f"{what}: digest mismatch: expected {digest}, got {got}")
        os.chmod(partial, 0o644)
        os.rename(partial, self.blob_path(digest))
        fsync_dir(self.blobs)

    def write_unknown_blob(self, chunks: Iterable[bytes], what: str) -> tuple[str, int]:
        """Store a stream whose digest is learnt while writing it (imports, archive layers)."""
        tmp = self.ingest / f"unknown-{os.getpid()}-{time.monotonic_ns()}"
        try:
            hasher, size = _spool(tmp, chunks)
            digest = "sha256:" + hasher.hexdigest()
            with file_lock(self.lock_path("blob", digest_hex(digest))):
                if not self.has_blob(digest):
                    self.commit_partial(tmp, digest, size, hasher, size, what)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return digest, size

    def open_blob(self, digest: str, what: str = "blob") -> IO[bytes]:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise ImageError(f"{what} {digest}: not in the store") from None

    # Index -----------------------------------------------------------------------------------
    def _read_index(self) -> list[Descriptor]:
        try:
            doc = load_json(self.index_path.read_bytes(), "index.json")
        except FileNotFoundError:
            return []
        entries = doc.get("manifests") or []
        return [parse_descriptor(item, f"index.json: manifests[{i}]") for i, item in enumerate(entries)]

    def _write_index(self, entries: list[Descriptor]) -> None:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [e.to_json() for e in entries]}
        atomic_write(self.index_path, json.dumps(doc, indent=2).encode())

    def set_name(self, ref: Reference, manifest_digest: str, size: int, repo_digest: str | None = None) -> None:
        """Point `ref` at a stored manifest (replacing what it pointed at)."""
        name = str(ref)
        with self.index_lock():
            entries = [e for e in self._read_index() if e.annotations.get(REF_NAME_ANNOTATION) != name]
            annotations = {REF_NAME_ANNOTATION: name}
            if repo_digest:
                annotations[REPO_DIGEST_ANNOTATION] = f"{ref.repository}@{repo_digest}"
            entries.append(Descriptor(OCI_MANIFEST, manifest_digest, size, annotations))
            self._write_index(entries)

    def remove_name(self, ref: Reference) -> bool:
        name = str(ref)
        with self.index_lock():
            entries = self._read_index()
            kept = [e for e in entries if e.annotations.get(REF_NAME_ANNOTATION) != name]
            if len(kept) == len(entries):
                return False
            self._write_index(kept)
            return True

    def entries(self) -> list[Descriptor]:
        return self._read_index()

    # Images ----------------------------------------------------------------------------------
    def load_manifest(self, digest: str) -> Manifest:
        return parse_manifest(load_json(self.read_blob(digest, "manifest"), f"manifest {digest}"), f"manifest {digest}")

    def load_config(self, manifest: Manifest) -> ImageConfig:
        digest = manifest.config.digest
        return parse_config(load_json(self.read_blob(digest, "config"), f"config {digest}"), f"config {digest}")

    def _names(self) -> dict[str, tuple[list[Reference], list[str]]]:
        """manifest digest -> (names, repo digests), from index.json alone."""
        by_digest: dict[str, tuple[list[Reference], list[str]]] = {}
        for entry in self.entries():
            names, repo_digests = by_digest.setdefault(entry.digest, ([], []))
            ref_name = entry.annotations.get(REF_NAME_ANNOTATION)
            if ref_name:
                with contextlib.suppress(StockadeError):
                    names.append(parse_reference(ref_name, default_tag=False))
            repo_digest = entry.annotations.get(REPO_DIGEST_ANNOTATION)
            if repo_digest and repo_digest not in repo_digests:
                repo_digests.append(repo_digest)
        return by_digest

    def _build(self, digest: str, names: list[Reference], repo_digests: list[str]) -> Image:
        manifest = self.load_manifest(digest)
        return Image(digest, manifest, self.load_config(manifest), names, repo_digests)

    def images(self) -> list[Image]:
        """Named images, and the unnamed ones kept by a dangling hold (`commit` without a name,
        listed as <none>:<none>, as Docker's)."""
        return [self._build(digest, *names) for digest, names in self._listed().items()]

    def _listed(self) -> dict[str, tuple[list[Reference], list[str]]]:
        named = self._names()
        for holder, digest in self.holders().items():
            if holder.startswith(DANGLING) and digest not in named:
                named[digest] = ([], [])
        return named

    def keep_unnamed(self, manifest_digest: str) -> None:
        self.hold(DANGLING + manifest_digest.split(":")[1][:32], manifest_digest)

    def forget_unnamed(self, manifest_digest: str) -> None:
        self.release(DANGLING + manifest_digest.split(":")[1][:32])

    def image(self, manifest_digest: str, named: bool = True) -> Image:
        """One stored image by manifest digest (named or not), without loading the others;
        without its names unless `named` (they come from index.json, every name parsed)."""
        names = self._names().get(manifest_digest, ([], [])) if named else ([], [])
        return self._build(manifest_digest, *names)

    def lookup(self, text: str) -> Image:
        """An image by name (busybox, busybox:1, docker.io/library/busybox@sha256:..), ID or ID prefix."""
        candidate = text.removeprefix("sha256:")
        by_id = len(candidate) >= 4 and all(c in "0123456789abcdef" for c in candidate)
        if not by_id:
            ref = parse_reference(text)
            if not ref.digest:  # by name: from index.json, only the image found is read
                for digest, (names, repo_digests) in self._listed().items():
                    if ref in names:
                        return self._build(digest, names, repo_digests)
                raise ImageError(f"{text}: image not known (pull it first)")
        images = self.images()
        if by_id:
            hits = [
                i
                for i in images
                if digest_hex(i.id).startswith(candidate) or digest_hex(i.manifest_digest).startswith(candidate)
            ]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1 and len({i.id for i in hits}) > 1:
                raise ImageError(f"{text}: ambiguous image ID prefix")
            if hits:
                return hits[0]
        ref = parse_reference(text)
        for image in images:
            if ref in image.names:
                return image
            if ref.digest and _digest_matches(image, ref):
                return image
        raise ImageError(f"{text}: image not known (pull it first)")

    def add_image(
        self, ref: Reference | None, config: dict[str, Any], layers: list[Descriptor], repo_digest: str | None = None
    ) -> tuple[str, Manifest]:
        """Store a config + already stored layers as a new OCI manifest; name it `ref` if given."""
        config_data = json.dumps(config, indent=2).encode()
        config_desc = Descriptor(OCI_CONFIG, self.put_bytes(config_data), len(config_data))
        manifest = Manifest(config_desc, layers)
        data = manifest.to_bytes()
        digest = self.put_bytes(data)
        if ref is not None:
            self.set_name(ref, digest, len(data), repo_digest)
        return digest, manifest

    # Holds: what containers use -------------------------------------------------------------
    def hold(self, holder: str, manifest_digest: str, durable: bool = True) -> None:
        """`durable`: fsync'd (not for an --rm container's hold, gone with it)."""
        _check_holder(holder)
        with self.index_lock():  # so a collection in progress either sees it or is over
            atomic_write(self.holds / holder, json.dumps({"manifest": manifest_digest}).encode(), durable=durable)

    def release(self, holder: str) -> None:
        _check_holder(holder)
        with contextlib.suppress(FileNotFoundError):
            (self.holds / holder).unlink()

    def holders(self) -> dict[str, str]:
        out = {}
        for path in self.holds.iterdir() if self.holds.exists() else []:
            if path.name.startswith("."):
                continue
            if _stale_pull_hold(path.name):  # a pull killed before it could release its hold
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            with contextlib.suppress(ValueError, OSError):
                out[path.name] = json.loads(path.read_bytes())["manifest"]
        return out

    # Garbage collection ----------------------------------------------------------------------
    def referenced(self) -> tuple[set[str], set[str]]:
        """(blob digests, layer diff_id hexes) reachable from the index and from holds."""
        blobs: set[str] = set()
        layers: set[str] = set()
        roots = {e.digest for e in self.entries()} | set(self.holders().values())
        for digest in roots:
            blobs.add(digest)  # a pull holds its manifest's digest before the blob exists
            try:
                manifest = self.load_manifest(digest)
            except StockadeError:
                continue
            blobs.add(manifest.config.digest)
            blobs.update(layer.digest for layer in manifest.layers)
            with contextlib.suppress(StockadeError):
                layers.update(digest_hex(d) for d in self.load_config(manifest).diff_ids)
        return blobs, layers

    def collect_garbage(self, grace_seconds: float = 3600.0) -> tuple[list[str], int]:
        """Remove blobs and unpacked layers nothing references; returns (removed digests, bytes freed).

        Runs under the index lock so no name can be added to a blob while it is deleted;
        ingest leftovers older than `grace_seconds` (a killed download) are removed too.
        """
        removed: list[str] = []
        freed = 0
        with self.index_lock():
            blobs, layers = self.referenced()
            for path in list(self.blobs.iterdir()):
                digest = f"sha256:{path.name}"
                if digest in blobs:
                    continue
                with file_lock(self.lock_path("blob", path.name)):
                    freed += path.stat().st_size
                    path.unlink()
                    removed.append(digest)
            for path in list(self.layers.iterdir()):
                if path.name in layers:
                    continue
                # ".tmp-<hex>-<pid>" is an unpack in progress (or killed): its lock says which.
                hexid = path.name.split("-")[1] if path.name.startswith(".tmp-") else path.name
                with file_lock(self.lock_path("layer", hexid)):
                    if path.exists():
                        freed += _tree_size(path)
                        shutil.rmtree(path)
                        removed.append(f"layer sha256:{path.name}")
            now = time.time()
            for path in list(self.ingest.iterdir()):
                with contextlib.suppress(FileNotFoundError):
                    if now - path.stat().st_mtime > grace_seconds:
                        freed += path.stat().st_size
                        path.unlink()
        return removed, freed

    # Verification ----------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Re-hash every blob and check every named image is complete; returns the problems."""
        import hashlib

        problems = []
        for path in sorted(self.blobs.iterdir()):
            hasher = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    hasher.update(chunk)
            if hasher.hexdigest() != path.name:
                problems.append(f"blob sha256:{path.name}: content hashes to sha256:{hasher.hexdigest()}")
        for entry in self.entries():
            name = entry.annotations.get(REF_NAME_ANNOTATION, entry.digest)
            try:
                manifest = self.load_manifest(entry.digest)
                config = self.load_config(manifest)
            except StockadeError as exc:
                problems.append(f"{name}: {exc}")
                continue
            for layer in manifest.layers:
                if not self.has_blob(layer.digest):
                    problems.append(f"{name}: layer {layer.digest} missing")
            if len(config.diff_ids) != len(manifest.layers):
                problems.append(f"{name}: {len(manifest.layers)} layers but {len(config.diff_ids)} diff_ids")
        for path in sorted(self.layers.iterdir()):
            # ".tmp-*" is an unpack in progress or one a kill interrupted: never used, and
            # cleared by the next unpack of that layer or by prune.
            if not path.name.startswith(".") and not (path / "meta.json").exists():
                problems.append(f"layer {path.name}: incomplete unpacked layer")
        return problems


def _stale_pull_hold(name: str) -> bool:
    """Whether `name` is a pull's hold ("pull-PID-THREAD") whose process is gone."""
    parts = name.split("-")
    if len(parts) != 3 or parts[0] != "pull" or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _spool(path: Path, chunks: Iterable[bytes]) -> tuple[Any, int]:
    """Write chunks to a new file, hashing them; fsynced before returning (hasher, size)."""
    import hashlib  # (here, not at the top: see spec.image.sha256_digest)

    hasher = hashlib.sha256()
    size = 0
    with open(path, "wb") as out:
        for chunk in chunks:
            hasher.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return hasher, size


def _digest_matches(image: Image, ref: Reference) -> bool:
    """repo@digest names an image pulled from that repository with that manifest digest."""
    digests = {image.manifest_digest} | {r.rpartition("@")[2] for r in image.repo_digests}
    repos = {n.repository for n in image.names} | {r.rpartition("@")[0] for r in image.repo_digests}
    return ref.digest in digests and ref.repository in repos


def _check_holder(holder: str) -> None:
    if not holder or "/" in holder or holder.startswith("."):
        raise ImageError(f"invalid holder name {holder!r}")


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
