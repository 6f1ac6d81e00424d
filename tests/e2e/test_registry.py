"""Pull and push against a real registry (Debian's docker-registry on 127.0.0.1), with skopeo
as the other client: anonymous and htpasswd auth, byte-identical round trips, registry errors,
interrupted downloads, corrupt blobs and concurrent pulls."""

from __future__ import annotations

import http.server
import json
import os
import random
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import requires_root
from imagekit import RegistryServer, oci_layout, skopeo, tar_bytes

pytestmark = requires_root
STOCKADE = str(Path(sys.executable).parent / "stockade")


def run(
    root: Path, *args: str, check: bool = True, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [STOCKADE, "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        input=input,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"stockade {' '.join(args)} ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    server = RegistryServer(tmp_path / "registry")
    yield server
    server.stop()


def big_layers() -> list[bytes]:
    """Three layers, one of ~6 MB of incompressible data (long enough to interrupt)."""
    rnd = random.Random(1).randbytes(6 * 1024 * 1024)
    return [
        tar_bytes(
            [{"name": "bin/tool", "data": "#!/bin/sh\necho tool\n", "mode": 0o755}, {"name": "etc/motd", "data": "hi"}]
        ),
        tar_bytes([{"name": "data/blob", "data": rnd}, {"name": "etc/.wh.motd", "data": ""}]),
        tar_bytes([{"name": "usr/share/doc/x", "data": "doc", "uid": 1000, "gid": 1000}]),
    ]


def seed(registry: RegistryServer, tmp_path: Path, repo: str = "test/app:1", docker_format: bool = False) -> str:
    layout = tmp_path / f"seed-{repo.replace('/', '_').replace(':', '_')}"
    oci_layout(layout, big_layers(), tag="seed")
    args = ["copy", "--dest-tls-verify=false"]
    if docker_format:
        args += ["--format", "v2s2"]
    skopeo(*args, f"oci:{layout}:seed", f"docker://{registry.host}/{repo}")
    return f"{registry.host}/{repo}"


def test_pull_then_push_round_trip(registry: RegistryServer, tmp_path: Path) -> None:
    root = tmp_path / "data"
    name = seed(registry, tmp_path)
    out = run(root, "pull", name)
    assert f"Downloaded newer image for {name}" in out.stdout
    listing = run(root, "images", "--digests").stdout.splitlines()
    assert listing[0].split()[:3] == ["REPOSITORY", "TAG", "DIGEST"]
    remote = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{name}").stdout)
    assert remote["Digest"] in listing[1]
    # The rootfs is complete: layers unpacked, whiteouts in place.
    store_root = root / "images"
    inspect = json.loads(run(root, "image", "inspect", name).stdout)[0]
    layers = [store_root / "layers" / d.split(":")[1] / "diff" for d in inspect["RootFS"]["Layers"]]
    assert (layers[0] / "bin/tool").exists() and (layers[1] / "data/blob").stat().st_size == 6 * 1024 * 1024
    assert os.lstat(layers[1] / "etc/motd").st_rdev == 0
    # Push under another name: blobs are mounted across repositories, the manifest is the same bytes.
    out = run(root, "push", name, f"{registry.host}/other/app:2")
    assert "mounted from test/app" in out.stderr
    copy1, copy2 = tmp_path / "back1", tmp_path / "back2"
    skopeo("copy", "--src-tls-verify=false", f"docker://{name}", f"oci:{copy1}:x")
    skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/other/app:2", f"oci:{copy2}:x")
    blobs1 = {p.name: p.read_bytes() for p in (copy1 / "blobs/sha256").iterdir()}
    blobs2 = {p.name: p.read_bytes() for p in (copy2 / "blobs/sha256").iterdir()}
    assert blobs1 == blobs2
    assert run(root, "image", "verify").returncode == 0


def test_docker_schema2_is_stored_as_oci_and_pushes(registry: RegistryServer, tmp_path: Path) -> None:
    root = tmp_path / "data"
    name = seed(registry, tmp_path, "test/docker:1", docker_format=True)
    run(root, "pull", "-q", name)
    # Chunked upload this time.
    run(root, "push", "--chunk-size", str(1024 * 1024), name, f"{registry.host}/test/chunked:1")
    remote = json.loads(
        skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/test/chunked:1").stdout
    )
    assert remote["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    copy = tmp_path / "back"
    skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/test/chunked:1", f"oci:{copy}:x")


def test_registry_errors_are_clear(registry: RegistryServer, tmp_path: Path) -> None:
    root = tmp_path / "data"
    missing = run(root, "pull", f"{registry.host}/no/such:1", check=False)
    assert missing.returncode == 1
    assert (
        f"{registry.host}/no/such:1: manifest 1: MANIFEST_UNKNOWN" in missing.stderr or "NAME_UNKNOWN" in missing.stderr
    )
    assert len([line for line in missing.stderr.splitlines() if line.startswith("stockade:")]) == 1
    unreachable = run(root, "pull", "127.0.0.1:1/x:1", check=False)
    assert unreachable.returncode == 1 and "127.0.0.1:1" in unreachable.stderr


def test_corrupt_blob_never_lands(registry: RegistryServer, tmp_path: Path) -> None:
    root = tmp_path / "data"
    name = seed(registry, tmp_path)
    manifest = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{name}").stdout)
    victim = manifest["layers"][2]["digest"]
    path = registry.blob_path(victim)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    out = run(root, "pull", name, check=False)
    assert out.returncode == 1 and "digest mismatch" in out.stderr and victim in out.stderr
    store = root / "images"
    assert not (store / "blobs/sha256" / victim.split(":")[1]).exists()
    assert run(root, "image", "verify").returncode == 0
    assert "REPOSITORY" in run(root, "images").stdout and name not in run(root, "images").stdout


class TruncatingProxy:
    """Forwards to the registry but cuts the first big blob download short, like a dying link."""

    def __init__(self, upstream: str, cut_after: int) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.cut_done = False
        self.ranges: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range", "authorization")}
                if "Range" in headers:
                    proxy.ranges.append(headers["Range"])
                req = urllib.request.Request(
                    f"http://{proxy.upstream}{self.path}", headers=headers, method=self.command
                )
                try:
                    resp = urllib.request.urlopen(req, timeout=10)
                except urllib.error.HTTPError as err:
                    resp = err
                body = resp.read() if self.command == "GET" else b""
                self.send_response(resp.status)
                for k, v in resp.headers.items():
                    if k.lower() not in ("transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if "/blobs/" in self.path and len(body) > proxy.cut_after and not proxy.cut_done:
                    proxy.cut_done = True
                    self.wfile.write(body[: proxy.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_interrupted_pull_leaves_a_consistent_store_and_resumes(registry: RegistryServer, tmp_path: Path) -> None:
    seed(registry, tmp_path)
    proxy = TruncatingProxy(registry.host, cut_after=2 * 1024 * 1024)
    try:
        root = tmp_path / "data"
        name = f"{proxy.host}/test/app:1"
        first = run(root, "pull", name, check=False)
        assert first.returncode == 1, first.stderr
        errors = [line for line in first.stderr.splitlines() if line.startswith("stockade:")]
        assert len(errors) == 1 and "download ended after" in errors[0], first.stderr
        store = root / "images"
        assert run(root, "image", "verify").returncode == 0
        assert name not in run(root, "images").stdout
        partials = list((store / "ingest").glob("*.partial"))
        assert partials and partials[0].stat().st_size > 0
        run(root, "pull", name)
        assert proxy.ranges and proxy.ranges[0].startswith("bytes=")  # resumed, not restarted
        assert not list((store / "ingest").glob("*.partial"))
        assert run(root, "image", "verify").returncode == 0
    finally:
        proxy.stop()


def test_concurrent_pulls_share_work(registry: RegistryServer, tmp_path: Path) -> None:
    name = seed(registry, tmp_path)
    root = tmp_path / "data"
    procs = [
        subprocess.Popen(
            [STOCKADE, "--root", str(root), "pull", "-q", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    assert all(code == 0 for _out, _err, code in results), results
    assert len({out.strip() for out, _err, _code in results}) == 1
    assert run(root, "image", "verify").returncode == 0
    store = root / "images"
    assert not list((store / "ingest").iterdir())
    assert not [p for p in (store / "layers").iterdir() if p.name.startswith(".")]
    assert len(json.loads((store / "index.json").read_text())["manifests"]) == 1


def test_basic_auth_login_logout(tmp_path: Path) -> None:
    server = RegistryServer(tmp_path / "auth-registry", users={"alice": "s3cret"})
    try:
        root = tmp_path / "data"
        env = {"DOCKER_CONFIG": str(tmp_path / "docker-config")}
        layout = tmp_path / "layout"
        oci_layout(layout, [tar_bytes([{"name": "f", "data": "x"}])], tag="seed")
        skopeo(
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "alice:s3cret",
            f"oci:{layout}:seed",
            f"docker://{server.host}/priv/img:1",
        )
        name = f"{server.host}/priv/img:1"
        denied = run(root, "pull", name, check=False, env=env)
        assert denied.returncode == 1 and "authentication required" in denied.stderr and "login" in denied.stderr
        bad = run(root, "login", "-u", "alice", "--password-stdin", server.host, check=False, env=env, input="wrong\n")
        assert bad.returncode == 1 and "incorrect username or password" in bad.stderr
        assert not (tmp_path / "docker-config/config.json").exists()
        assert (
            "Login Succeeded"
            in run(root, "login", "-u", "alice", "--password-stdin", server.host, env=env, input="s3cret\n").stdout
        )
        config = tmp_path / "docker-config/config.json"
        assert config.stat().st_mode & 0o777 == 0o600
        assert server.host in json.loads(config.read_text())["auths"]
        run(root, "pull", name, env=env)
        run(root, "push", name, f"{server.host}/priv/copy:1", env=env)
        assert "Removing login credentials" in run(root, "logout", server.host, env=env).stdout
        assert server.host not in json.loads(config.read_text())["auths"]
        assert run(root, "pull", f"{server.host}/priv/copy:1", check=False, env=env).returncode == 1
    finally:
        server.stop()


def test_kill_9_at_any_moment_leaves_a_consistent_store(registry: RegistryServer, tmp_path: Path) -> None:
    name = seed(registry, tmp_path)
    root = tmp_path / "data"
    for delay in (0.05, 0.2, 0.4, 0.8):
        proc = subprocess.Popen(
            [STOCKADE, "--root", str(root), "pull", "-q", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(delay)
        proc.kill()
        proc.wait()
        check = run(root, "image", "verify", check=False)
        assert check.returncode == 0, f"after kill at {delay}s: {check.stdout}"
    run(root, "pull", name)
    assert run(root, "image", "verify").returncode == 0
    run(root, "rmi", name)
    run(root, "image", "prune")
    store = root / "images"
    assert not list((store / "blobs/sha256").iterdir()) and not list((store / "layers").iterdir())


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[tuple[RegistryServer, Path]]:
    """docker-registry serving HTTPS only, with a self-signed certificate for 127.0.0.1."""
    certs = tmp_path / "certs"
    certs.mkdir()
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(certs / "key.pem"),
            "-out",
            str(certs / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    server = RegistryServer(tmp_path / "tls-registry", tls=(certs / "cert.pem", certs / "key.pem"))
    yield server, certs / "cert.pem"
    server.stop()


def test_https_registry(tls_registry: tuple[RegistryServer, Path], tmp_path: Path) -> None:
    server, cert = tls_registry
    layout = tmp_path / "layout"
    oci_layout(layout, [tar_bytes([{"name": "tls", "data": "yes"}])], tag="seed")
    skopeo(
        "copy",
        "--dest-cert-dir",
        str(cert.parent),
        "--dest-tls-verify=false",
        f"oci:{layout}:seed",
        f"docker://{server.host}/tls/img:1",
    )
    root = tmp_path / "data"
    env = {"SSL_CERT_FILE": str(cert)}
    run(root, "pull", f"{server.host}/tls/img:1", env=env)
    run(root, "push", f"{server.host}/tls/img:1", f"{server.host}/tls/copy:1", env=env)
    skopeo("inspect", "--tls-verify=false", f"docker://{server.host}/tls/copy:1")
