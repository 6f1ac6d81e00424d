"""A registry client for the OCI distribution spec: pull and push, anonymous/basic/bearer auth.

HTTPS always, except for registries on loopback or named insecure by the user, which may fall
back to plain HTTP. Every blob is verified while it streams; nothing unverified reaches the store.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import ipaddress
import json
import os
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from stockade.image import credentials
from stockade.image.store import CHUNK, DigestMismatch, ImageError
from stockade.spec.image import ACCEPT_MANIFESTS, Reference

USER_AGENT = "stockade/0.1"
MAX_RETRIES = 3
MAX_RETRY_AFTER = 30.0


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...
    def close(self) -> None: ...


class RegistryError(ImageError):
    """The registry refused or failed a request; the message names the image."""


@dataclass(slots=True)
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: http.client.HTTPResponse
    url: str

    def header(self, name: str) -> str:
        return self.headers.get(name, "") or ""

    def read(self) -> bytes:
        return self.body.read()


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1 : host.index("]")]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_www_authenticate(header: str) -> tuple[str, dict[str, str]]:
    """('bearer', {'realm':..., 'service':..., 'scope':...}) from a WWW-Authenticate header."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


@dataclass
class Registry:
    """One registry host: connections (one per thread), auth state, scheme."""

    host: str
    insecure: bool = False
    credentials: tuple[str, str] | None = None
    timeout: float = 60.0
    scheme: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    basic: bool = False
    local: threading.local = field(default_factory=threading.local)

    def __post_init__(self) -> None:
        if self.credentials is None:
            self.credentials = credentials.lookup(self.host)
        self.insecure = self.insecure or is_loopback(self.host)

    # Transport -------------------------------------------------------------------------------
    def _connection(self, scheme: str, host: str) -> http.client.HTTPConnection:
        conns = self.local.__dict__.setdefault("conns", {})
        key = (scheme, host)
        conn = conns.get(key)
        if conn is None:
            if scheme == "https":
                conn = http.client.HTTPSConnection(host, timeout=self.timeout, context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(host, timeout=self.timeout)
            conns[key] = conn
        return conn

    def _drop_connection(self, scheme: str, host: str) -> None:
        conns = self.local.__dict__.setdefault("conns", {})
        conn = conns.pop((scheme, host), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for conn in self.local.__dict__.get("conns", {}).values():
            conn.close()
        self.local.__dict__["conns"] = {}

    def _pick_scheme(self) -> str:
        if self.scheme:
            return self.scheme
        try:
            self._send("https", self.host, "GET", "/v2/", {}, None).read()
            self.scheme = "https"
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            self._drop_connection("https", self.host)
            if not self.insecure:
                raise RegistryError(f"{self.host}: cannot reach the registry over HTTPS: {exc}") from None
            self.scheme = "http"
        return self.scheme

    def _send(
        self, scheme: str, host: str, method: str, path: str, headers: dict[str, str], body: bytes | Readable | None
    ) -> Response:
        conn = self._connection(scheme, host)
        headers = {"User-Agent": USER_AGENT, **headers}
        for attempt in (1, 2):
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                return Response(resp.status, resp.headers, resp, f"{scheme}://{host}{path}")
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server closed: retry once on a fresh one.
                self._drop_connection(scheme, host)
                conn = self._connection(scheme, host)
                if attempt == 2 or (body is not None and not isinstance(body, bytes)):
                    raise
        raise AssertionError("unreachable")

    # Requests with auth, redirects and 429 handling ------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        scope: str,
        headers: dict[str, str] | None = None,
        body: bytes | Callable[[], Readable] | None = None,
        what: str = "",
    ) -> Response:
        """A request to this registry; `scope` is the token scope (repository:NAME:pull,push)."""
        scheme = self._pick_scheme()
        headers = dict(headers or {})
        refreshed = False
        for attempt in range(MAX_RETRIES + 1):
            req_headers = dict(headers)
            auth = self._auth_header(scope)
            if auth:
                req_headers["Authorization"] = auth
            payload = body() if callable(body) else body
            try:
                resp = self._send(scheme, self.host, method, path, req_headers, payload)
            except (OSError, http.client.HTTPException) as exc:
                raise RegistryError(f"{what or path}: {self.host}: {exc}") from None
            finally:
                if payload is not None and not isinstance(payload, bytes):
                    payload.close()
            if resp.status == 401 and attempt < MAX_RETRIES:
                challenge = resp.header("WWW-Authenticate")
                resp.read()
                # Only what this request carried tells whether it was refused: another thread
                # may have authenticated meanwhile.
                tried = auth.startswith("Basic") or (auth.startswith("Bearer") and refreshed)
                if auth.startswith("Bearer"):
                    # A token may expire during a long pull: fetch a new one once per request.
                    if self.tokens.get(scope) == auth[7:]:
                        self.tokens.pop(scope, None)
                    refreshed = True
                if tried or not self._authenticate(challenge, scope, what):
                    if self.credentials and tried:
                        raise RegistryError(
                            f"{what}: {self.host}: unauthorized: incorrect username or password, or no access"
                        )
                    raise RegistryError(
                        f"{what}: authentication required by {self.host} (try: stockade login {self.host})"
                    )
                continue
            if resp.status == 429 and attempt < MAX_RETRIES:
                resp.read()
                time.sleep(_retry_after(resp.header("Retry-After"), attempt))
                continue
            if resp.status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD"):
                location = resp.header("Location")
                resp.read()
                return self._follow(method, urllib.parse.urljoin(resp.url, location), headers, what, scope)
            return resp
        raise RegistryError(f"{what}: {self.host} kept answering {resp.status}")

    def _follow(self, method: str, url: str, headers: dict[str, str], what: str, scope: str, hops: int = 5) -> Response:
        """Follow a redirect (blob storage elsewhere); credentials go only to the registry itself."""
        parsed = urllib.parse.urlsplit(url)
        same = parsed.netloc == self.host
        if parsed.scheme not in ("https", "http") or (parsed.scheme == "http" and not (same and self.insecure)):
            raise RegistryError(f"{what}: refusing redirect to {url}")
        path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        headers = dict(headers)
        auth = self._auth_header(scope) if same else ""
        if auth:
            headers["Authorization"] = auth
        try:
            resp = self._send(parsed.scheme, parsed.netloc, method, path, headers, None)
        except (OSError, http.client.HTTPException) as exc:
            raise RegistryError(f"{what}: {parsed.netloc}: {exc}") from None
        if resp.status in (301, 302, 303, 307, 308) and hops:
            location = resp.header("Location")
            resp.read()
            return self._follow(method, urllib.parse.urljoin(url, location), headers, what, scope, hops - 1)
        return resp

    def _auth_header(self, scope: str) -> str:
        token = self.tokens.get(scope)
        if token:
            return f"Bearer {token}"
        if self.basic and self.credentials:
            return "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        return ""

    def _authenticate(self, challenge: str, scope: str, what: str) -> bool:
        scheme, params = parse_www_authenticate(challenge)
        if scheme == "basic":
            if not self.credentials:
                return False
            self.basic = True
            return True
        if scheme != "bearer" or "realm" not in params:
            return False
        query = {"service": params.get("service", "")}
        if scope:
            query["scope"] = scope
        realm = urllib.parse.urlsplit(params["realm"])
        if realm.scheme != "https" and not (realm.scheme == "http" and self.insecure):
            raise RegistryError(f"{what}: refusing token realm {params['realm']} over plain HTTP")
        path = (realm.path or "/") + "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})
        headers = {}
        if self.credentials:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        try:
            resp = self._send(realm.scheme, realm.netloc, "GET", path, headers, None)
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise RegistryError(f"{what}: token service {realm.netloc}: {exc}") from None
        if resp.status != 200:
            return False
        doc = json.loads(data or b"{}")
        token = doc.get("token") or doc.get("access_token")
        if not token:
            return False
        self.tokens[scope] = token
        return True


def _retry_after(value: str, attempt: int) -> float:
    try:
        return min(float(value), MAX_RETRY_AFTER)
    except ValueError:
        return min(2.0**attempt, MAX_RETRY_AFTER)


def scope_for(ref: Reference, push: bool = False) -> str:
    return f"repository:{ref.path}:{'pull,push' if push else 'pull'}"


def error_text(resp: Response, ref: Reference, what: str) -> str:
    """The registry's own error message (OCI error JSON) or the HTTP status, naming the image."""
    body = b""
    with contextlib.suppress(OSError, http.client.HTTPException):
        body = resp.read()
    detail = ""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        errors = json.loads(body).get("errors") or []
        detail = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    if not detail:
        detail = f"HTTP {resp.status} {resp.body.reason}"
    if resp.status == 401:
        detail += f" (authentication required: stockade login {ref.domain})"
    return f"{ref.familiar}: {what}: {detail}"


class Client:
    """Distribution-spec operations on one repository."""

    def __init__(self, ref: Reference, registry: Registry) -> None:
        self.ref = ref
        self.registry = registry
        self.base = f"/v2/{ref.path}"

    def get_manifest(self, reference: str, push: bool = False) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of a manifest or index; verified when asked for by digest."""
        resp = self.registry.request(
            "GET",
            f"{self.base}/manifests/{reference}",
            scope_for(self.ref, push),
            {"Accept": ACCEPT_MANIFESTS},
            what=str(self.ref),
        )
        if resp.status != 200:
            raise RegistryError(error_text(resp, self.ref, f"manifest {reference}"))
        data = resp.read()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatch(f"{self.ref.familiar}: manifest digest mismatch: asked for {reference}, got {digest}")
        media_type = resp.header("Content-Type").split(";")[0].strip()
        return data, media_type, digest

    def blob_exists(self, digest: str) -> bool:
        resp = self.registry.request(
            "HEAD", f"{self.base}/blobs/{digest}", scope_for(self.ref, True), what=str(self.ref)
        )
        resp.read()
        if resp.status in (200, 404):
            return resp.status == 200
        raise RegistryError(error_text(resp, self.ref, f"blob {digest}"))

    def fetch_blob(self, digest: str, offset: int = 0) -> tuple[Iterator[bytes], bool]:
        """(chunks, resumed?) of a blob from `offset` (Range, if the registry allows)."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = self.registry.request(
            "GET", f"{self.base}/blobs/{digest}", scope_for(self.ref), headers, what=str(self.ref)
        )
        if resp.status == 416 and offset:
            resp.read()
            return self.fetch_blob(digest, 0)
        if resp.status not in (200, 206):
            raise RegistryError(error_text(resp, self.ref, f"blob {digest}"))
        resumed = resp.status == 206

        def chunks() -> Iterator[bytes]:
            while True:
                try:
                    data = resp.body.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise RegistryError(f"{self.ref.familiar}: blob {digest}: download interrupted: {exc}") from None
                if not data:
                    return
                yield data

        return chunks(), resumed

    # Push ------------------------------------------------------------------------------------
    def mount_blob(self, digest: str, source_repo: str) -> bool:
        """Cross-repository blob mount; False if the registry wants an upload instead."""
        query = urllib.parse.urlencode({"mount": digest, "from": source_repo})
        scope = scope_for(self.ref, True) + f" repository:{source_repo}:pull"
        resp = self.registry.request(
            "POST", f"{self.base}/blobs/uploads/?{query}", scope, {"Content-Length": "0"}, b"", what=str(self.ref)
        )
        resp.read()
        if resp.status == 201:
            return True
        if resp.status == 202:
            self._cancel(resp.header("Location"))
            return False
        return False

    def _cancel(self, location: str) -> None:
        if location:
            with contextlib.suppress(RegistryError):
                self.registry.request(
                    "DELETE", self._path(location), scope_for(self.ref, True), what=str(self.ref)
                ).read()

    def _path(self, location: str) -> str:
        parsed = urllib.parse.urlsplit(location)
        if parsed.netloc and parsed.netloc != self.registry.host:
            raise RegistryError(f"{self.ref.familiar}: upload location on another host: {location}")
        return parsed.path + (f"?{parsed.query}" if parsed.query else "")

    def upload_blob(self, digest: str, size: int, opener: Callable[[], Readable], chunk_size: int = 0) -> None:
        """Upload a blob: monolithic (POST then PUT with the body), or in PATCH chunks if chunk_size."""
        scope = scope_for(self.ref, True)
        resp = self.registry.request(
            "POST", f"{self.base}/blobs/uploads/", scope, {"Content-Length": "0"}, b"", what=str(self.ref)
        )
        resp.read()
        if resp.status != 202:
            raise RegistryError(error_text(resp, self.ref, f"start upload of {digest}"))
        location = self._path(resp.header("Location"))
        if chunk_size and size > chunk_size:
            location = self._upload_chunks(location, digest, size, opener, chunk_size)
            body: bytes | Callable[[], Readable] = b""
            length = 0
        else:
            body, length = opener, size
        sep = "&" if "?" in location else "?"
        resp = self.registry.request(
            "PUT",
            f"{location}{sep}digest={urllib.parse.quote(digest)}",
            scope,
            {"Content-Type": "application/octet-stream", "Content-Length": str(length)},
            body,
            what=str(self.ref),
        )
        resp.read()
        if resp.status != 201:
            raise RegistryError(error_text(resp, self.ref, f"upload of {digest}"))

    def _upload_chunks(
        self, location: str, digest: str, size: int, opener: Callable[[], Readable], chunk_size: int
    ) -> str:
        f = opener()
        try:
            offset = 0
            while offset < size:
                data = f.read(chunk_size)
                end = offset + len(data) - 1
                resp = self.registry.request(
                    "PATCH",
                    location,
                    scope_for(self.ref, True),
                    {
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{end}",
                        "Content-Length": str(len(data)),
                    },
                    data,
                    what=str(self.ref),
                )
                resp.read()
                if resp.status != 202:
                    raise RegistryError(error_text(resp, self.ref, f"upload chunk {offset}-{end} of {digest}"))
                location = self._path(resp.header("Location"))
                offset = end + 1
        finally:
            f.close()
        return location

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> str:
        resp = self.registry.request(
            "PUT",
            f"{self.base}/manifests/{reference}",
            scope_for(self.ref, True),
            {"Content-Type": media_type, "Content-Length": str(len(data))},
            data,
            what=str(self.ref),
        )
        resp.read()
        if resp.status not in (200, 201):
            raise RegistryError(error_text(resp, self.ref, f"manifest {reference}"))
        return resp.header("Docker-Content-Digest") or "sha256:" + hashlib.sha256(data).hexdigest()


def check_login(registry: Registry) -> None:
    """GET /v2/ with the credentials, going through the token flow if the registry asks for it."""
    resp = registry.request("GET", "/v2/", "", what=registry.host)
    resp.read()
    if resp.status == 401:
        raise RegistryError(f"login to {registry.host}: unauthorized: incorrect username or password")
    if resp.status != 200:
        raise RegistryError(f"login to {registry.host}: HTTP {resp.status}")


def insecure_registries() -> set[str]:
    return {h.strip() for h in os.environ.get("STOCKADE_INSECURE_REGISTRIES", "").split(",") if h.strip()}
