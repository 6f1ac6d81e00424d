"""Registry credentials in Docker's ~/.docker/config.json ("auths": {host: {"auth": base64(user:pass)}}).

$DOCKER_CONFIG names another directory, as with docker. The file is written atomically with
mode 0600; other keys in it (credHelpers, proxies...) are kept as they were.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from stockade.errors import StockadeError
from stockade.image.store import atomic_write

DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


def config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (ValueError, OSError) as exc:
        raise StockadeError(f"{path}: {exc}") from None
    if not isinstance(doc, dict):
        raise StockadeError(f"{path}: must be a JSON object")
    return doc


def _keys(registry: str) -> tuple[str, ...]:
    if registry in DOCKER_HUB_KEYS:
        return DOCKER_HUB_KEYS
    return (registry, f"https://{registry}", f"http://{registry}")


def lookup(registry: str) -> tuple[str, str] | None:
    """(username, password) stored for `registry`, or None."""
    path = config_path()
    auths = _read(path).get("auths") or {}
    for key in _keys(registry):
        entry = auths.get(key)
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise StockadeError(f"{path}: auths.{key}.auth: not base64 of user:password") from None
            return user, password
    return None


def store(registry: str, username: str, password: str) -> Path:
    path = config_path()
    doc = _read(path)
    auths = doc.setdefault("auths", {})
    key = DOCKER_HUB_KEYS[0] if registry in DOCKER_HUB_KEYS else registry
    auths[key] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, json.dumps(doc, indent="\t").encode(), mode=0o600)
    os.chmod(path, 0o600)
    return path


def remove(registry: str) -> bool:
    path = config_path()
    doc = _read(path)
    auths = doc.get("auths") or {}
    found = [k for k in _keys(registry) if k in auths]
    for key in found:
        del auths[key]
    if found:
        atomic_write(path, json.dumps(doc, indent="\t").encode(), mode=0o600)
    return bool(found)
