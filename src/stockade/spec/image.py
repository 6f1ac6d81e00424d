"""OCI image-spec and distribution models: references, media types, manifests, indexes, configs.

Pure: parses the bytes and JSON it is given and validates them; errors name what was wrong
(`manifest sha256:ab..: layers[2].digest: ...`). Docker schema 2 documents are accepted and
converted to their OCI equivalents (same blobs, OCI media types), so the store holds one kind.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from stockade.errors import SpecError, StockadeError

# Media types ---------------------------------------------------------------------------------
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
# Layer media type -> compression ("" = none). Docker's gzip types map to OCI's.
LAYER_COMPRESSION = {
    OCI_LAYER: "",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_NONDIST_GZIP: "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_FOREIGN: "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "",
}
_DOCKER_TO_OCI = {
    DOCKER_MANIFEST: OCI_MANIFEST,
    DOCKER_LIST: OCI_INDEX,
    DOCKER_CONFIG: OCI_CONFIG,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_LAYER_FOREIGN: OCI_LAYER_NONDIST_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar": OCI_LAYER,
}
ACCEPT_MANIFESTS = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

# Digests -------------------------------------------------------------------------------------
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


def sha256_digest(data: bytes) -> str:
    """sha256:<hex> of a small document (a manifest, a config, a key), by the interpreter's
    own SHA-256: hashlib's loads OpenSSL's libcrypto (~3 MB resident in the monitor host, a few
    ms to load), worth it for streams (layers, blobs), which import hashlib where they hash."""
    return "sha256:" + _small_sha256(data).hexdigest()


try:
    from _sha256 import sha256 as _small_sha256  # type: ignore[import-not-found]
except ImportError:  # (an interpreter built without it)
    from hashlib import sha256 as _small_sha256


def check_digest(value: object, where: str) -> str:
    """A sha256 digest string, or SpecError naming `where` (only sha256 is supported)."""
    if not isinstance(value, str) or not _DIGEST_RE.match(value):
        raise SpecError(where, f"invalid digest {value!r} (want sha256:<64 hex>)")
    return value


def digest_hex(digest: str) -> str:
    return digest.split(":", 1)[1]


# References ----------------------------------------------------------------------------------
DEFAULT_DOMAIN = "docker.io"
DEFAULT_TAG = "latest"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_RE = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?$|^\[[0-9a-fA-F:]+\](?::[0-9]+)?$"
)
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")


class ImageReferenceError(StockadeError):
    """An image reference that does not parse."""


@dataclass(frozen=True, slots=True)
class Reference:
    """registry/repository[:tag][@digest], normalised the way Docker does it."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        out = self.repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def familiar(self) -> str:
        """The short form Docker prints: busybox:latest, not docker.io/library/busybox:latest."""
        repo = self.familiar_repository
        return repo + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    @property
    def familiar_repository(self) -> str:
        if self.domain == DEFAULT_DOMAIN:
            return self.path.removeprefix("library/")
        return self.repository

    @property
    def registry_host(self) -> str:
        """Where the registry API lives: docker.io is served from registry-1.docker.io."""
        return "registry-1.docker.io" if self.domain == DEFAULT_DOMAIN else self.domain

    @property
    def reference(self) -> str:
        """What goes in /v2/<name>/manifests/<reference>: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.domain, self.path, tag, None)


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse an image reference with Docker's defaults (docker.io, library/, :latest)."""
    original = text
    if not text or len(text) > 4096 or text.strip() != text:
        raise ImageReferenceError(f"invalid reference format: {original!r}")
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise ImageReferenceError(f"invalid reference format: {original!r}: bad digest {digest!r}")
    tag = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise ImageReferenceError(f"invalid reference format: {original!r}: bad tag {tag!r}")
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, rest
        if not _DOMAIN_RE.match(domain):
            raise ImageReferenceError(f"invalid reference format: {original!r}: bad registry {domain!r}")
    else:
        domain, path = DEFAULT_DOMAIN, text
    if domain == "index.docker.io":
        domain = DEFAULT_DOMAIN
    if path != path.lower():
        raise ImageReferenceError(f"invalid reference format: repository name must be lowercase: {original!r}")
    if not _PATH_RE.match(path) or len(path) > 255:
        raise ImageReferenceError(f"invalid reference format: {original!r}")
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


# Platforms -----------------------------------------------------------------------------------
_GOARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def host_platform(machine: str) -> Platform:
    arch = _GOARCH.get(machine, machine)
    return Platform("linux", arch, "v8" if arch == "arm64" else "")


def parse_platform(text: str) -> Platform:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise StockadeError(f'invalid platform "{text}": want os/arch[/variant]')
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


# Documents -----------------------------------------------------------------------------------
@dataclass(slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            plat = {"architecture": self.platform.architecture, "os": self.platform.os}
            if self.platform.variant:
                plat["variant"] = self.platform.variant
            out["platform"] = plat
        return out


def _obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(where, "must be an object")
    return value


def parse_descriptor(value: object, where: str) -> Descriptor:
    obj = _obj(value, where)
    media_type = obj.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise SpecError(f"{where}.mediaType", "missing")
    size = obj.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise SpecError(f"{where}.size", f"invalid size {size!r}")
    annotations = obj.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise SpecError(f"{where}.annotations", "must map strings to strings")
    platform = None
    if "platform" in obj:
        plat = _obj(obj["platform"], f"{where}.platform")
        platform = Platform(str(plat.get("os", "")), str(plat.get("architecture", "")), str(plat.get("variant", "")))
    urls = obj.get("urls") or []
    return Descriptor(media_type, check_digest(obj.get("digest"), f"{where}.digest"), size, annotations, platform, urls)


def load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(what, f"not valid JSON: {exc}") from None
    return _obj(doc, what)


def media_type_of(doc: dict[str, Any]) -> str:
    """A manifest's media type: its mediaType field, or inferred from its shape (OCI allows omitting it)."""
    media_type = doc.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    if doc.get("schemaVersion") == 1:
        return "application/vnd.docker.distribution.manifest.v1+json"
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


@dataclass(slots=True)
class Manifest:
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.annotations:
            out["annotations"] = self.annotations
        return out

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), indent=2).encode()


def parse_manifest(doc: dict[str, Any], what: str) -> Manifest:
    """An image manifest (OCI or Docker schema 2), converted to OCI media types."""
    media_type = media_type_of(doc)
    if media_type not in MANIFEST_TYPES:
        raise SpecError(what, f"unsupported manifest media type {media_type!r}")
    if doc.get("schemaVersion") != 2:
        raise SpecError(f"{what}.schemaVersion", f"unsupported schema version {doc.get('schemaVersion')!r}")
    config = parse_descriptor(doc.get("config"), f"{what}.config")
    config.media_type = _DOCKER_TO_OCI.get(config.media_type, config.media_type)
    layers_json = doc.get("layers")
    if not isinstance(layers_json, list):
        raise SpecError(f"{what}.layers", "must be an array")
    layers = []
    for i, item in enumerate(layers_json):
        layer = parse_descriptor(item, f"{what}.layers[{i}]")
        layer.media_type = _DOCKER_TO_OCI.get(layer.media_type, layer.media_type)
        if layer.media_type not in LAYER_COMPRESSION:
            raise SpecError(f"{what}.layers[{i}].mediaType", f"unsupported layer media type {layer.media_type!r}")
        layers.append(layer)
    return Manifest(config, layers, dict(doc.get("annotations") or {}))


def store_form(data: bytes, doc: dict[str, Any], manifest: Manifest) -> bytes:
    """The bytes the store keeps for a manifest: an OCI one byte for byte (so pushing it gives
    the same digest back), a Docker schema 2 one rewritten with OCI media types (same blobs)."""
    return data if media_type_of(doc) == OCI_MANIFEST else manifest.to_bytes()


def parse_index(doc: dict[str, Any], what: str) -> list[Descriptor]:
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise SpecError(f"{what}.manifests", "must be an array")
    return [parse_descriptor(item, f"{what}.manifests[{i}]") for i, item in enumerate(entries)]


def pick_platform(entries: list[Descriptor], want: Platform, what: str) -> Descriptor:
    """The index entry for `want`; a missing variant matches any (Docker's rule for amd64)."""
    candidates = [e for e in entries if e.media_type in MANIFEST_TYPES and e.platform]
    for entry in candidates:
        plat = entry.platform
        assert plat is not None
        if (
            plat.os == want.os
            and plat.architecture == want.architecture
            and (not want.variant or not plat.variant or plat.variant == want.variant)
        ):
            return entry
    have = ", ".join(str(e.platform) for e in candidates) or "none"
    raise StockadeError(f"{what}: no image for platform {want} (the index has: {have})")


# Image config --------------------------------------------------------------------------------
@dataclass(slots=True)
class ImageConfig:
    """The parts of an image config stockade reads; `raw` keeps the whole document."""

    raw: dict[str, Any]
    diff_ids: list[str]
    env: list[str]
    cmd: list[str] | None
    entrypoint: list[str] | None
    working_dir: str
    user: str
    exposed_ports: list[str]
    volumes: list[str]
    labels: dict[str, str]
    created: str
    history: list[dict[str, Any]]
    os: str
    architecture: str


def _strings(value: object, where: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(where, "must be an array of strings")
    return value


def parse_config(doc: dict[str, Any], what: str) -> ImageConfig:
    rootfs = _obj(doc.get("rootfs"), f"{what}.rootfs")
    if rootfs.get("type") != "layers":
        raise SpecError(f"{what}.rootfs.type", f'must be "layers", not {rootfs.get("type")!r}')
    diff_ids = _strings(rootfs.get("diff_ids"), f"{what}.rootfs.diff_ids") or []
    for i, d in enumerate(diff_ids):
        check_digest(d, f"{what}.rootfs.diff_ids[{i}]")
    cfg = doc.get("config") or {}
    cfg = _obj(cfg, f"{what}.config")
    labels = cfg.get("Labels") or {}
    if not isinstance(labels, dict):
        raise SpecError(f"{what}.config.Labels", "must be an object")
    history = doc.get("history") or []
    if not isinstance(history, list):
        raise SpecError(f"{what}.history", "must be an array")
    return ImageConfig(
        raw=doc,
        diff_ids=diff_ids,
        env=_strings(cfg.get("Env"), f"{what}.config.Env") or [],
        cmd=_strings(cfg.get("Cmd"), f"{what}.config.Cmd"),
        entrypoint=_strings(cfg.get("Entrypoint"), f"{what}.config.Entrypoint"),
        working_dir=str(cfg.get("WorkingDir") or ""),
        user=str(cfg.get("User") or ""),
        exposed_ports=sorted((cfg.get("ExposedPorts") or {}).keys()),
        volumes=sorted((cfg.get("Volumes") or {}).keys()),
        labels={str(k): str(v) for k, v in labels.items()},
        created=str(doc.get("created") or ""),
        history=[h for h in history if isinstance(h, dict)],
        os=str(doc.get("os") or ""),
        architecture=str(doc.get("architecture") or ""),
    )


# Dockerfile-style --change instructions for import -------------------------------------------
_CHANGE_KEYS = ("CMD", "ENTRYPOINT", "ENV", "WORKDIR", "USER", "EXPOSE", "LABEL", "VOLUME")


def _json_or_shell(arg: str) -> list[str]:
    stripped = arg.strip()
    if stripped.startswith("["):
        try:
            value = json.loads(stripped)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return ["/bin/sh", "-c", stripped]


def apply_change(config: dict[str, Any], change: str) -> None:
    """Apply one Dockerfile instruction (`CMD ["sh"]`, `ENV A=b`...) to an image config's `config`."""
    keyword, _, arg = change.strip().partition(" ")
    keyword = keyword.upper()
    arg = arg.strip()
    if keyword not in _CHANGE_KEYS:
        raise StockadeError(
            f'--change "{change}": unsupported instruction {keyword!r} (want one of {", ".join(_CHANGE_KEYS)})'
        )
    if not arg:
        raise StockadeError(f'--change "{change}": {keyword} needs an argument')
    cfg = config.setdefault("config", {})
    if keyword in ("CMD", "ENTRYPOINT"):
        cfg["Cmd" if keyword == "CMD" else "Entrypoint"] = _json_or_shell(arg)
    elif keyword == "ENV":
        pairs = _key_values(arg, change)
        env = [e for e in cfg.get("Env") or [] if e.split("=", 1)[0] not in dict(pairs)]
        cfg["Env"] = env + [f"{k}={v}" for k, v in pairs]
    elif keyword == "LABEL":
        cfg.setdefault("Labels", {}).update(dict(_key_values(arg, change)))
    elif keyword == "WORKDIR":
        cfg["WorkingDir"] = arg
    elif keyword == "USER":
        cfg["User"] = arg
    elif keyword == "EXPOSE":
        for port in arg.split():
            if not re.match(r"^\d{1,5}(/(tcp|udp|sctp))?$", port):
                raise StockadeError(f'--change "{change}": invalid port {port!r}')
            cfg.setdefault("ExposedPorts", {})[port if "/" in port else f"{port}/tcp"] = {}
    elif keyword == "VOLUME":
        for vol in _json_or_shell(arg) if arg.startswith("[") else arg.split():
            cfg.setdefault("Volumes", {})[vol] = {}


def _key_values(arg: str, change: str) -> list[tuple[str, str]]:
    if "=" not in arg.split(" ", 1)[0]:
        key, _, value = arg.partition(" ")
        if not value.strip():
            raise StockadeError(f'--change "{change}": want KEY=VALUE or KEY VALUE')
        return [(key, value.strip())]
    out = []
    for item in _split_words(arg):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise StockadeError(f'--change "{change}": want KEY=VALUE, got {item!r}')
        out.append((key, value))
    return out


def _split_words(text: str) -> list[str]:
    import shlex

    return shlex.split(text)
