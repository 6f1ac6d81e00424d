"""Benchmark: pulling and unpacking a multi-layer Debian image from a local registry.

    make bench            (or: .venv/bin/python bench/image_bench.py [--runs N])

Set-up (cached in .cache/bench-images): `stockade image build-base debian` (debootstrap from
Debian's archive), split into three gzip layers (usr/, var/, the rest) pushed with skopeo to
Debian's docker-registry on 127.0.0.1. Then, each into a fresh store, median of N runs:
- stockade pull (download + verify + unpack every layer)
- skopeo copy docker:// -> oci: followed by umoci unpack (what a umoci-based tool does)
- podman pull (containers/storage, overlay driver, its own temporary root)
and the unpack alone: stockade's unpacker on the three local gzip blobs against GNU `tar -xzf`
of the same blobs (the physical limit). Prints medians and ratios; nothing is asserted.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from imagekit import RegistryServer  # noqa: E402
from stockade.image.unpack import decompressed, unpack_tar  # noqa: E402

STOCKADE = str(Path(sys.executable).parent / "stockade")
CACHE = ROOT / ".cache" / "bench-images"


def sh(*cmd: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(cmd), check=True, capture_output=True, **kw)  # type: ignore[call-overload]


def prepare_layers() -> list[Path]:
    """Three gzip layer tars of the Debian rootfs (cached)."""
    layers = [CACHE / f"layer{i}.tar.gz" for i in range(3)]
    if all(p.exists() for p in layers):
        return layers
    CACHE.mkdir(parents=True, exist_ok=True)
    store = CACHE / "store"
    sh(STOCKADE, "--root", str(store), "image", "build-base", "debian")
    inspect = json.loads(sh(STOCKADE, "--root", str(store), "image", "inspect", "localhost/debian:bookworm").stdout)[0]
    rootfs = store / "images" / "layers" / inspect["RootFS"]["Layers"][0].split(":")[1] / "diff"
    groups = [["./usr"], ["./var"], [f"./{p.name}" for p in rootfs.iterdir() if p.name not in ("usr", "var")]]
    for path, members in zip(layers, groups, strict=True):
        tar = sh("tar", "-C", str(rootfs), "--numeric-owner", "--xattrs", "-cf", "-", *members).stdout
        path.write_bytes(gzip.compress(tar, compresslevel=6, mtime=0))
    return layers


def write_layout(layout: Path, layers: list[Path]) -> None:
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    descs, diff_ids = [], []
    for layer in layers:
        data = layer.read_bytes()
        diff_ids.append("sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest())
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(data)})
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["bash"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(json.dumps(config).encode())},
        "layers": descs,
    }
    mdesc = put(json.dumps(manifest).encode())
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": manifest["mediaType"], **mdesc, "annotations": {"org.opencontainers.image.ref.name": "bench"}}
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))


def median_time(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            start = time.perf_counter()
            fn(Path(tmp))
            samples.append(time.perf_counter() - start)
            sh("sync")
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    layers = prepare_layers()
    total = sum(p.stat().st_size for p in layers)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        base = Path(tmp)
        registry = RegistryServer(base / "registry")
        try:
            write_layout(base / "layout", layers)
            sh(
                "skopeo",
                "copy",
                "--dest-tls-verify=false",
                f"oci:{base / 'layout'}:bench",
                f"docker://{registry.host}/bench/debian:1",
            )
            name = f"{registry.host}/bench/debian:1"
            results = {
                "stockade pull": median_time(lambda d: sh(STOCKADE, "--root", str(d), "pull", "-q", name), args.runs),
                "skopeo copy + umoci unpack": median_time(
                    lambda d: (
                        sh("skopeo", "copy", "--src-tls-verify=false", f"docker://{name}", f"oci:{d / 'oci'}:x"),
                        sh("umoci", "unpack", "--image", f"{d / 'oci'}:x", str(d / "bundle")),
                    ),
                    args.runs,
                ),
            }
            if shutil.which("podman"):

                def podman(d: Path, *args: str) -> None:
                    store = ["--root", str(d / "root"), "--runroot", str(d / "run"), "--storage-driver", "overlay"]
                    sh("podman", *store, *args)

                results["podman pull"] = median_time(
                    lambda d: (podman(d, "pull", "-q", "--tls-verify=false", name), podman(d, "rmi", "-a", "-f")),
                    args.runs,
                )
        finally:
            registry.stop()

    def our_unpack(d: Path) -> None:
        for i, layer in enumerate(layers):
            dest = d / f"l{i}"
            dest.mkdir()
            with open(layer, "rb") as raw, decompressed(raw, "gzip") as stream:
                unpack_tar(stream, str(dest))

    def tar_unpack(d: Path) -> None:
        for i, layer in enumerate(layers):
            dest = d / f"l{i}"
            dest.mkdir()
            sh("tar", "-C", str(dest), "--numeric-owner", "--xattrs", "-xzf", str(layer))

    unpack_ours = median_time(our_unpack, args.runs)
    unpack_tar_s = median_time(tar_unpack, args.runs)
    print(f"\nimage: Debian bookworm minbase, 3 gzip layers, {total / 1e6:.1f} MB compressed; medians of {args.runs}")
    print(f"{'scenario':34} {'seconds':>8}  {'ratio to stockade':>18}")
    ours = results["stockade pull"]
    for label, seconds in results.items():
        print(f"{label:34} {seconds:8.2f}  {seconds / ours:17.2f}x")
    print(f"{'unpack: stockade':34} {unpack_ours:8.2f}")
    print(f"{'unpack: tar -xzf (the limit)':34} {unpack_tar_s:8.2f}  stockade/tar = {unpack_ours / unpack_tar_s:.2f}x")
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
