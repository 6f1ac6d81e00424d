"""Base images built on this machine: the embedded busybox image and a real Debian one made
with debootstrap from Debian's package archive (for tests and demos; built once, then cached
in the store under its tag)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from stockade.image.archive import import_tarball
from stockade.image.store import Image, ImageError, Store
from stockade.spec.image import Reference

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _existing(store: Store, ref: Reference) -> Image | None:
    with contextlib.suppress(ImageError):
        return store.lookup(str(ref))
    return None


def _import_dir(store: Store, root: Path, ref: Reference, changes: list[str], message: str) -> Image:
    """Tar `root` (numeric owners, xattrs) straight into the store as a one-layer image."""
    proc = subprocess.Popen(
        [
            "tar",
            "-C",
            str(root),
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=security.capability",
            "-cf",
            "-",
            ".",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        image = import_tarball(store, proc.stdout, ref, changes, message, f"build-base {ref.familiar}")
    finally:
        proc.stdout.close()
        _out, err = proc.communicate()
    if proc.returncode != 0:
        raise ImageError(f"build-base {ref.familiar}: tar: {err.decode(errors='replace').strip()}")
    return image


def build_busybox(store: Store, ref: Reference, force: bool = False) -> Image:
    from stockade.image.busybox import build_rootfs

    if not force and (image := _existing(store, ref)):
        return image
    with tempfile.TemporaryDirectory(dir=store.ingest) as tmp:
        root = Path(tmp) / "rootfs"
        build_rootfs(str(root))
        return _import_dir(store, root, ref, [f"ENV {PATH_ENV}", 'CMD ["sh"]'], "busybox from Debian's busybox-static")


def apt_mirror() -> str:
    """The Debian mirror apt uses on this machine (deb822 or one-line sources)."""
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    for path in candidates:
        with contextlib.suppress(OSError):
            text = path.read_text()
            m = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or re.search(
                r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s", text, re.M
            )
            if m:
                return m.group(1)
    return "http://deb.debian.org/debian"


def build_debian(store: Store, suite: str, mirror: str | None, ref: Reference, force: bool = False) -> Image:
    """A minbase Debian image from debootstrap; needs root and Debian's debootstrap."""
    if not force and (image := _existing(store, ref)):
        return image
    if os.geteuid() != 0:
        raise ImageError("build-base debian: debootstrap needs root")
    if shutil.which("debootstrap") is None:
        raise ImageError("build-base debian: debootstrap not found (apt-get install debootstrap; make setup does)")
    if not re.match(r"^[a-z][a-z0-9-]*$", suite):
        raise ImageError(f"build-base debian: invalid suite {suite!r}")
    mirror = mirror or apt_mirror()
    with tempfile.TemporaryDirectory(dir=store.ingest) as tmp:
        root = Path(tmp) / "rootfs"
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", suite, str(root), mirror], capture_output=True, text=True
        )
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise ImageError(f"build-base debian {suite} from {mirror}: debootstrap failed: {' / '.join(tail)}")
        # What Debian's own images drop: the apt lists and package cache (rebuilt by apt-get update).
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        return _import_dir(
            store, root, ref, [f"ENV {PATH_ENV}", 'CMD ["bash"]'], f"debootstrap --variant=minbase {suite} {mirror}"
        )
