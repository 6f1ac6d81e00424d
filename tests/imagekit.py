"""Test helpers for images: crafted tar layers, hand-made OCI layouts, a real registry process."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import socket
import ssl
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest


def tar_bytes(entries: list[dict[str, Any]]) -> bytes:
    """A tar from entry dicts: name, type (file|dir|symlink|hardlink|chr|blk|fifo), data,
    linkname, mode, uid, gid, mtime, xattrs, devmajor/devminor."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = tarfile.TarInfo(e["name"])
            kind = e.get("type", "file")
            info.type = {
                "file": tarfile.REGTYPE,
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
                "blk": tarfile.BLKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            info.mode = e.get("mode", 0o755 if kind == "dir" else 0o644)
            info.uid, info.gid = e.get("uid", 0), e.get("gid", 0)
            info.mtime = e.get("mtime", 1_600_000_000)
            info.linkname = e.get("linkname", "")
            info.devmajor, info.devminor = e.get("devmajor", 0), e.get("devminor", 0)
            for key, value in (e.get("xattrs") or {}).items():
                raw = value if isinstance(value, bytes) else value.encode()
                info.pax_headers[f"SCHILY.xattr.{key}"] = raw.decode("utf-8", "surrogateescape")
            data = e.get("data", b"")
            if isinstance(data, str):
                data = data.encode()
            if kind == "file":
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_layout(
    path: Path, layers: list[bytes], tag: str = "latest", config: dict[str, Any] | None = None, compress: bool = True
) -> str:
    """Write an OCI image layout with these uncompressed layer tars; returns the manifest digest."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        digest = sha(data)
        (blobs / digest.split(":")[1]).write_bytes(data)
        return digest

    layer_descs = []
    for raw in layers:
        if compress == "zstd":
            blob = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout
            media = "application/vnd.oci.image.layer.v1.tar+zstd"
        else:
            blob = gzip.compress(raw, mtime=0) if compress else raw
            media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")
        layer_descs.append({"mediaType": media, "digest": put(blob), "size": len(blob)})
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(raw) for raw in layers]},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(len(layers))],
    }
    cfg.update(config or {})
    cfg_bytes = json.dumps(cfg).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": put(cfg_bytes),
            "size": len(cfg_bytes),
        },
        "layers": layer_descs,
    }
    man_bytes = json.dumps(manifest).encode()
    digest = put(man_bytes)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": len(man_bytes),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (path / "index.json").write_text(json.dumps(index))
    return digest


def _no_verify() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RegistryServer:
    """Debian's docker-registry on 127.0.0.1 with its own storage (and htpasswd if given)."""

    def __init__(self, base: Path, users: dict[str, str] | None = None, tls: tuple[Path, Path] | None = None) -> None:
        if shutil.which("docker-registry") is None:
            pytest.skip("needs Debian's docker-registry")
        self.base = base
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        base.mkdir(parents=True, exist_ok=True)
        auth = ""
        if users:
            lines = []
            for user, password in users.items():
                out = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True)
                lines.append(out.stdout.strip())
            (base / "htpasswd").write_text("\n".join(lines) + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: stockade-test\n    path: {base / 'htpasswd'}\n"
        http = f"http:\n  addr: 127.0.0.1:{self.port}\n"
        if tls:
            http += f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n"
        self.scheme = "https" if tls else "http"
        (base / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {base / 'data'}\n  delete:\n    enabled: true\n{http}{auth}"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = open(self.base / "registry.log", "ab")  # noqa: SIM115 - the process keeps it
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(self.base / "config.yml")], stdout=log, stderr=log
        )
        log.close()
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.scheme}://{self.host}/v2/", timeout=1, context=_no_verify())
                return
            except urllib.error.HTTPError:
                return  # 401 with auth: it is up
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not start: {(self.base / 'registry.log').read_text()[-500:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def blob_path(self, digest: str) -> Path:
        hexid = digest.split(":")[1]
        return self.base / "data" / "docker/registry/v2/blobs/sha256" / hexid[:2] / hexid / "data"


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo")
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)}: {proc.stderr.strip()}")
    return proc
