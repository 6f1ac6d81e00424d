"""The registry client's bearer-token flow, 429 Retry-After and redirects, against a tiny
in-process registry on loopback (docker-registry itself only speaks token auth with an
external token service)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import socketserver
import threading
from collections.abc import Iterator

import pytest

from stockade.image.registry import Client, Registry, RegistryError, parse_www_authenticate
from stockade.image.store import DigestMismatch
from stockade.spec.image import OCI_MANIFEST, parse_reference

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
WRONG = "sha256:" + "0" * 64


class FakeRegistry:
    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.throttle = 0
        self.tokens_issued = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization", "")
                fake.log.append((self.path, auth))
                if self.path.startswith("/token"):
                    expected = "Basic " + base64.b64encode(b"bob:pw").decode()
                    if auth != expected:
                        return self.reply(401)
                    fake.tokens_issued += 1
                    return self.reply(200, json.dumps({"token": "tok-pull"}).encode())
                if auth != "Bearer tok-pull":
                    challenge = f'Bearer realm="http://{fake.host}/token",service="fake",scope="repository:a/b:pull"'
                    return self.reply(
                        401, b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}', {"WWW-Authenticate": challenge}
                    )
                if fake.throttle:
                    fake.throttle -= 1
                    return self.reply(429, b"", {"Retry-After": "0"})
                if self.path == "/v2/a/b/manifests/moved":
                    return self.reply(307, b"", {"Location": "/v2/a/b/manifests/1"})
                if self.path in ("/v2/a/b/manifests/1", f"/v2/a/b/manifests/{DIGEST}"):
                    return self.reply(200, MANIFEST, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": DIGEST})
                if self.path == f"/v2/a/b/manifests/{WRONG}":
                    return self.reply(200, MANIFEST, {"Content-Type": OCI_MANIFEST})
                return self.reply(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    server = FakeRegistry()
    yield server
    server.stop()


def client(fake: FakeRegistry, creds: tuple[str, str] | None = ("bob", "pw")) -> Client:
    ref = parse_reference(f"{fake.host}/a/b:1")
    return Client(ref, Registry(fake.host, credentials=creds))


def test_bearer_token_flow(fake: FakeRegistry) -> None:
    c = client(fake)
    data, media_type, digest = c.get_manifest("1")
    assert (data, media_type, digest) == (MANIFEST, OCI_MANIFEST, DIGEST)
    c.get_manifest(DIGEST)
    assert fake.tokens_issued == 1  # the token is reused
    token_requests = [path for path, _auth in fake.log if path.startswith("/token")]
    assert token_requests == ["/token?service=fake&scope=repository%3Aa%2Fb%3Apull"]


def test_wrong_credentials_and_anonymous(fake: FakeRegistry) -> None:
    with pytest.raises(RegistryError, match="authentication required"):
        client(fake, creds=("bob", "nope")).get_manifest("1")
    with pytest.raises(RegistryError, match="authentication required"):
        Client(parse_reference(f"{fake.host}/a/b:1"), Registry(fake.host, credentials=None)).get_manifest("1")


def test_429_retry_after_and_redirects(fake: FakeRegistry) -> None:
    fake.throttle = 2
    c = client(fake)
    assert c.get_manifest("1")[2] == DIGEST
    assert c.get_manifest("moved")[2] == DIGEST


def test_registry_errors_name_the_image(fake: FakeRegistry) -> None:
    with pytest.raises(RegistryError, match=r"a/b:1: manifest nope: MANIFEST_UNKNOWN: manifest unknown"):
        client(fake).get_manifest("nope")
    with pytest.raises(DigestMismatch, match="manifest digest mismatch"):
        client(fake).get_manifest(WRONG)


def test_www_authenticate_parsing() -> None:
    scheme, params = parse_www_authenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/busybox:pull",
    }
    assert parse_www_authenticate('Basic realm="x"') == ("basic", {"realm": "x"})
