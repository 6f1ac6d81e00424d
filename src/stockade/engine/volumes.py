"""Named and anonymous volumes: <root>/volumes/<name>/{_data/, meta.json}.

A volume's files are stored with the IDs the container sees (root inside owns them as uid 0 on
disk) and every container gets the volume through an idmapped mount made with its own ID map,
so two containers with disjoint host ranges share a volume and both see their own root owning
it. A new volume is seeded from the image's content at the mount point on first use, as
Docker does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.engine.containers import EngineError, now_rfc3339, read_json, write_json
from stockade.engine.options import VOLUME_NAME
from stockade.fsutil import file_lock


@dataclass(slots=True)
class Volume:
    name: str
    dir: Path
    meta: dict[str, Any]

    @property
    def data(self) -> Path:
        return self.dir / "_data"

    def inspect(self) -> dict[str, Any]:
        return {
            "CreatedAt": self.meta.get("CreatedAt", ""),
            "Driver": "local",
            "Labels": self.meta.get("Labels") or {},
            "Mountpoint": str(self.data),
            "Name": self.name,
            "Options": {},
            "Scope": "local",
            "Anonymous": bool(self.meta.get("Anonymous")),
            "UsedBy": list(self.meta.get("Users") or []),
        }


class Volumes:
    def __init__(self, root: Path) -> None:
        self.dir = root / "volumes"

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o711)
        with file_lock(self.dir / ".lock"):
            yield

    def get(self, name: str) -> Volume:
        d = self.dir / name
        try:
            return Volume(name, d, read_json(d / "meta.json"))
        except (FileNotFoundError, NotADirectoryError):
            raise EngineError(f"no such volume: {name}") from None
        except ValueError as exc:
            raise EngineError(f"volume {name}: corrupt meta.json: {exc}") from None

    def all(self) -> list[Volume]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(self.dir)):
                if not name.startswith("."):
                    with contextlib.suppress(EngineError):
                        out.append(self.get(name))
        return out

    def create(
        self, name: str | None, anonymous: bool = False, exist_ok: bool = False,
        labels: dict[str, str] | None = None, container: str = "",
    ) -> Volume:  # fmt: skip
        if name is not None and not VOLUME_NAME.match(name):
            raise EngineError(f'invalid volume name "{name}": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed')
        with self._lock():
            name = name or os.urandom(32).hex()
            d = self.dir / name
            if d.exists():
                if exist_ok:
                    return self.get(name)
                raise EngineError(f'volume "{name}" already exists')
            tmp = self.dir / f".tmp-{name}"
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "_data").mkdir(parents=True)
            os.chmod(tmp, 0o711)
            os.chmod(tmp / "_data", 0o755)
            meta = {
                "CreatedAt": now_rfc3339(),
                "Labels": labels or {},
                "Anonymous": anonymous,
                "Users": [],
                "Seeded": False,
            }
            write_json(tmp / "meta.json", meta)
            os.rename(tmp, d)
            return Volume(name, d, meta)

    def _update(self, name: str, change: Any) -> None:
        with self._lock():
            vol = self.get(name)
            change(vol.meta)
            write_json(vol.dir / "meta.json", vol.meta)

    def add_user(self, name: str, cid: str) -> None:
        self._update(name, lambda m: m.__setitem__("Users", sorted({*m.get("Users", []), cid})))

    def drop_user(self, cid: str) -> list[str]:
        """Forget container `cid` everywhere; the anonymous volumes it was the last user of."""
        orphans = []
        for vol in self.all():
            if cid in vol.meta.get("Users", []):
                self._update(vol.name, lambda m: m.__setitem__("Users", [u for u in m["Users"] if u != cid]))
                if vol.meta.get("Anonymous") and len(vol.meta["Users"]) <= 1:
                    orphans.append(vol.name)
        return orphans

    def remove(self, name: str, force: bool = False) -> None:
        with self._lock():
            vol = self.get(name)
            users = vol.meta.get("Users") or []
            if users and not force:
                raise EngineError(f"volume {name} is in use by container {users[0][:12]}")
            tmp = self.dir / f".rm-{name}"
            os.rename(vol.dir, tmp)
            shutil.rmtree(tmp, ignore_errors=True)

    def seed(self, name: str, source: Path, uid_start: int, gid_start: int) -> None:
        """Copy the image's files at the mount point into a new, empty volume, once, shifting
        their owners back to the container's own IDs (the rootfs shows them shifted)."""
        vol = self.get(name)
        if vol.meta.get("Seeded"):
            return
        if source.is_dir() and not source.is_symlink() and not any(vol.data.iterdir()):
            import subprocess  # (here, not at the top: see host.MONITOR_MODULES)

            subprocess.run(["cp", "-a", "--", f"{source}/.", str(vol.data)], check=True, capture_output=True)
            if uid_start or gid_start:
                _unshift(vol.data, uid_start, gid_start)
        self._update(name, lambda m: m.__setitem__("Seeded", True))


def _unshift(root: Path, uid_start: int, gid_start: int) -> None:
    for dirpath, dirs, files in os.walk(root):
        for entry in [dirpath, *(os.path.join(dirpath, n) for n in [*dirs, *files])]:
            st = os.lstat(entry)
            uid = st.st_uid - uid_start if uid_start <= st.st_uid < uid_start + 65536 else st.st_uid
            gid = st.st_gid - gid_start if gid_start <= st.st_gid < gid_start + 65536 else st.st_gid
            os.chown(entry, uid, gid, follow_symlinks=False)
            if not os.path.islink(entry) and st.st_mode & 0o6000:
                os.chmod(entry, st.st_mode & 0o7777)
